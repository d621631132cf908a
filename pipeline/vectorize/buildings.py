"""Vectorize: regions raster -> building polygons with metric post-processing.

Polygonization is block-wise and seam-exact (:mod:`pipeline.vectorize.polygonize`); this module
turns its :class:`~pipeline.vectorize.polygonize.Regions` into :class:`Buildings`: areas in m²
(measured in a metric CRS, also for geographic scenes, see :mod:`pipeline.core.geo`), the
``min_area_m2`` filter applied *after* seams are merged (a building cut by a block edge is
never dropped piecewise), simplification with a tolerance in metres, and stable ids from
the scene id and each building's first pixel. Rings are made canonical first
(:mod:`pipeline.vectorize.rings`), so the delivered polygons do not depend on the block size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
from numpy.typing import NDArray
from rasterio.crs import CRS

from pipeline.core.errors import MissingCRSError
from pipeline.core.geo import MetricFrame, pixel_size_m
from pipeline.vectorize.overlaps import polygonal_part
from pipeline.vectorize.polygonize import Regions, polygonize_blocks
from pipeline.vectorize.postprocess import postprocess
from pipeline.vectorize.priors import Priors
from pipeline.vectorize.rings import canonical_rings
from pipeline.vectorize.scoring import ScoreContext, candidate_features

Outlines = Callable[..., NDArray[np.object_]]


@dataclass(frozen=True)
class Buildings:
    """Building polygons in the scene CRS with their per-feature properties.

    ``keep`` indexes the source :class:`Regions` each building came from.
    """

    geometry: NDArray[np.object_]
    id: NDArray[np.str_]
    area_m2: NDArray[np.float64]
    confidence: NDArray[np.float64]
    crs: CRS
    keep: NDArray[np.int64]
    features: NDArray[np.float64] | None = None  # pipeline.vectorize.scoring.FEATURES, when scored

    def __len__(self) -> int:
        return int(self.geometry.shape[0])


@dataclass(frozen=True)
class OutlineOptions:
    """How polygons become delivered outlines; every length and area is metric."""

    min_area_m2: float = 8.0
    min_confidence: float = 0.0
    simplify_m: float = 0.3
    fill_holes_m2: float = 0.0
    regularize: bool = False
    angle_tolerance_deg: float = 15.0
    min_edge_m: float = 0.5
    orientation: str = "envelope"
    group_m: float = 0.0
    group_tolerance_deg: float = 5.0
    rectangle_iou: float = 0.0

    @property
    def priors(self) -> Priors:
        """The building-shaped priors of the regularizer (:mod:`pipeline.vectorize.priors`)."""
        return Priors(
            orientation=self.orientation,
            group_m=self.group_m,
            group_tolerance_deg=self.group_tolerance_deg,
            rectangle_iou=self.rectangle_iou,
        )


def make_ids(scene: str, rows: NDArray[np.int64], cols: NDArray[np.int64]) -> NDArray[np.str_]:
    """Stable ids ``{scene}-{row}-{col}`` from each building's first pixel."""
    pos = np.char.add(rows.astype(str), np.char.add("-", cols.astype(str)))
    return np.char.add(f"{scene}-", pos)


def buildings_from_regions(
    regions: Regions,
    *,
    scene: str,
    bounds: tuple[float, float, float, float],
    options: OutlineOptions,
    pixel_m: float | None = None,
    stats_scale: float = 255.0,
    scoring: ScoreContext | None = None,
    outlines: Outlines = postprocess,
) -> Buildings:
    """Filter by area (m², after merging) and confidence, then fill holes and square or simplify.

    ``min_confidence`` applies where the regions carry probability statistics (their mean
    probability, the delivered ``confidence``). ``area_m2`` is the area of the delivered
    polygon. Buildings that post-processing empties (degenerate slivers, or ones covered by a
    larger neighbour) are dropped. With ``scoring`` each candidate's features are computed
    on its raw outline (:mod:`pipeline.vectorize.scoring`), and its scorer, if any, drops those under
    its threshold. ``outlines`` is the post-processing (``postprocess``'s signature;
    ``scripts/compare_regularizers.py`` passes others to compare them).
    """
    if regions.crs is None:
        raise MissingCRSError(f"{scene}: regions have no CRS, so areas in m² are unknown; assign one")
    frame = MetricFrame.for_scene(regions.crs, bounds)
    raw = canonical_rings(
        regions.geometry
    )  # same rings whatever the block size: see pipeline.vectorize.rings
    area = shapely.area(frame.to_metric(raw)) if len(regions) else np.empty(0)
    keep = np.flatnonzero(area >= options.min_area_m2)
    if options.min_confidence > 0 and regions.mean is not None:
        keep = keep[regions.mean[keep] / stats_scale >= options.min_confidence]
    table = None
    if scoring is not None:
        table = _score(regions, keep, raw, frame, scoring, stats_scale)
        if scoring.scorer is not None:
            passed = scoring.scorer.keep(table)
            keep, table = keep[passed], table[passed]
    geoms = outlines(
        raw[keep], frame=frame, fill_holes_m2=options.fill_holes_m2,
        simplify_m=options.simplify_m, regularize=options.regularize,
        angle_tolerance_deg=options.angle_tolerance_deg, min_edge_m=options.min_edge_m, pixel_m=pixel_m,
        priors=options.priors,
    )  # fmt: skip
    # squaring may push a wall a few centimetres past the raster's edge: stay inside the scene
    geoms = polygonal_part(shapely.intersection(geoms, shapely.box(*bounds))) if geoms.size else geoms
    alive = ~shapely.is_empty(geoms) if geoms.size else np.zeros(0, bool)
    keep, geoms = keep[alive], geoms[alive]
    mean = regions.mean[keep] / stats_scale if regions.mean is not None else np.full(keep.size, np.nan)
    out_area = shapely.area(frame.to_metric(geoms)) if geoms.size else np.empty(0)
    return Buildings(
        geometry=geoms,
        id=make_ids(scene, regions.first_row[keep], regions.first_col[keep]),
        area_m2=np.asarray(out_area, dtype=np.float64),
        confidence=mean.astype(np.float64),
        crs=regions.crs,
        keep=keep.astype(np.int64),
        features=None if table is None else table[alive],
    )


def _score(
    regions: Regions,
    keep: NDArray[np.intp],
    raw: NDArray[np.object_],
    frame: MetricFrame,
    scoring: ScoreContext,
    stats_scale: float,
) -> NDArray[np.float64]:
    """The feature table of the candidates ``keep`` (confidence NaN-free: 0 without stats)."""
    conf = regions.mean[keep] / stats_scale if regions.mean is not None else np.zeros(keep.size)
    return candidate_features(
        raw[keep], confidence=conf.astype(np.float64), frame=frame, probability_path=scoring.probability_path
    )


@dataclass(frozen=True)
class SceneRegions:
    """The polygonized regions of a raster, with what :func:`buildings_from_regions` needs."""

    regions: Regions
    bounds: tuple[float, float, float, float]
    pixel_m: float | None


def scene_regions(*, values_path: str, probability_path: str | None, block_size: int = 1024) -> SceneRegions:
    """Polygonize a mask or region raster block by block; ``confidence`` statistics from
    ``probability_path`` (uint8 0-255)."""
    with rasterio.open(values_path) as ds:
        b = ds.bounds
        bounds = (float(b.left), float(b.bottom), float(b.right), float(b.top))
        pixel_m = pixel_size_m(ds.crs, tuple(ds.transform), bounds) if ds.crs is not None else None
    regions = polygonize_blocks(values_path, block_size=block_size, stats_path=probability_path)
    return SceneRegions(regions=regions, bounds=bounds, pixel_m=pixel_m)


def vectorize_scene(
    *,
    values_path: str,
    probability_path: str | None,
    scene: str,
    options: OutlineOptions,
    block_size: int = 1024,
    scoring: ScoreContext | None = None,
) -> Buildings:
    """Polygonize a mask or region raster block by block into :class:`Buildings`.

    ``confidence`` is the mean of ``probability_path`` (uint8 0-255) inside each building;
    ``scoring`` as in :func:`buildings_from_regions`.
    """
    sr = scene_regions(values_path=values_path, probability_path=probability_path, block_size=block_size)
    return buildings_from_regions(
        sr.regions, scene=scene, bounds=sr.bounds, options=options, pixel_m=sr.pixel_m, scoring=scoring
    )
