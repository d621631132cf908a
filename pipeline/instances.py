"""Separate touching buildings into instances (SpaceNet-winner style seeded watershed).

The model predicts two channels: the building probability and the probability of the
building *boundary* class (the inner border of each building, about 1 m wide). Where
two buildings touch, the building channel is one blob but the boundary channel draws
a line between them. Seeds are the building cores, ``building >= seed_threshold``
away from the boundary, and a marker watershed grows them back over the whole mask.

The flooding runs on ``boundary - building`` (both scaled to 0-1), so a seed claims
the confident interior first and two seeds meet along the predicted boundary; where
the relief is flat (one boundary ring touching another) the flood order is the
geodesic distance from each seed, so each ring pixel goes to the seed it borders.
Mask components without any seed keep a label of their own: the split only ever
subdivides the mask, it never drops a building. Labels are renumbered in raster scan
order of their first pixel, so ids do not depend on the watershed's internals.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.segmentation import watershed

from pipeline.errors import ConfigError

#: 4-connectivity, the connectivity :func:`pipeline.vectorize.label_components` uses.
FOUR = ndimage.generate_binary_structure(2, 1)


def as_unit(prob: NDArray[np.generic]) -> NDArray[np.float32]:
    """Probabilities as float32 in 0-1: uint8 is divided by 255, floats are taken as is."""
    if prob.dtype == np.uint8:
        return prob.astype(np.float32) / np.float32(255.0)
    return np.asarray(prob, dtype=np.float32)


def renumber_scan_order(labels: NDArray[np.integer]) -> NDArray[np.int32]:
    """Relabel 1..n in raster scan order of each label's first pixel (0 stays 0)."""
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    keep = values != 0
    values, first = values[keep], first[keep]
    if values.size == 0:
        return np.zeros(labels.shape, dtype=np.int32)
    lut = np.zeros(int(values.max()) + 1, dtype=np.int32)
    lut[values[np.argsort(first, kind="stable")]] = np.arange(1, values.size + 1, dtype=np.int32)
    out: NDArray[np.int32] = lut[labels]
    return out


def seed_labels(
    *,
    building: NDArray[np.float32],
    boundary: NDArray[np.float32],
    mask: NDArray[np.bool_],
    seed_threshold: float,
    boundary_threshold: float,
    min_seed_px: int,
) -> NDArray[np.int32]:
    """4-connected building cores with at least ``min_seed_px`` pixels, labelled 1..k."""
    core = (building >= seed_threshold) & (boundary < boundary_threshold) & mask
    labels, n = ndimage.label(core, structure=FOUR)
    if n == 0:
        return np.zeros(core.shape, dtype=np.int32)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    big = sizes >= min_seed_px
    big[0] = False
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[big] = np.arange(1, int(big.sum()) + 1, dtype=np.int32)
    out: NDArray[np.int32] = lut[labels]
    return out


def _check(
    *,
    building: NDArray[np.generic],
    boundary: NDArray[np.generic],
    mask: NDArray[np.bool_],
    seed_threshold: float,
    boundary_threshold: float,
    min_seed_px: int,
) -> None:
    if building.ndim != 2 or building.shape != boundary.shape or building.shape != mask.shape:
        raise ValueError(
            f"split_instances: building {building.shape}, boundary {boundary.shape} and mask "
            f"{mask.shape} must be 2-D arrays of one shape; pass the channels of one tile or scene"
        )
    for name, value in (("seed_threshold", seed_threshold), ("boundary_threshold", boundary_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"instances: {name}={value} is outside 0-1; give a probability between 0 and 1")
    if min_seed_px < 1:
        raise ConfigError(f"instances: min_seed_px={min_seed_px} must be at least 1; use e.g. 4")


def split_instances(
    *,
    building: NDArray[np.generic],
    boundary: NDArray[np.generic],
    mask: NDArray[np.bool_],
    seed_threshold: float = 0.5,
    boundary_threshold: float = 0.4,
    min_seed_px: int = 4,
) -> NDArray[np.int32]:
    """Label image of building instances: 0 = background, 1..n in raster scan order.

    ``building`` and ``boundary`` are probabilities (uint8 0-255 or float 0-1) and
    ``mask`` the binary building mask to split. Every mask pixel gets a label and no
    pixel outside the mask does; 4-connected mask components without a seed stay one
    instance each.
    """
    _check(
        building=building,
        boundary=boundary,
        mask=mask,
        seed_threshold=seed_threshold,
        boundary_threshold=boundary_threshold,
        min_seed_px=min_seed_px,
    )
    mask = np.asarray(mask, dtype=bool)
    b, e = as_unit(building), as_unit(boundary)
    seeds = seed_labels(
        building=b,
        boundary=e,
        mask=mask,
        seed_threshold=seed_threshold,
        boundary_threshold=boundary_threshold,
        min_seed_px=min_seed_px,
    )
    n_seeds = int(seeds.max(initial=0))
    grown = np.zeros(mask.shape, dtype=np.int32)
    if n_seeds:
        relief = np.clip(e, 0.0, 1.0) - np.clip(b, 0.0, 1.0)
        flooded = watershed(relief, markers=seeds, mask=mask, connectivity=1)  # type: ignore[no-untyped-call]
        grown = np.asarray(flooded, dtype=np.int32)
    orphans, n_orphans = ndimage.label(mask & (grown == 0), structure=FOUR)
    if n_orphans:
        grown = np.where(orphans > 0, orphans.astype(np.int32) + n_seeds, grown)
    return renumber_scan_order(grown)
