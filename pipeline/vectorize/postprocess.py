"""Post-processing of building polygons in a metric CRS: holes, orthogonal walls, no overlaps.

Pixel polygons are staircases. :func:`postprocess` turns them into building-like outlines,
everything in metres: it takes and returns polygons in the metric CRS that
:func:`pipeline.vectorize.buildings.buildings_from_regions` converts to once (see
:class:`pipeline.core.geo.MetricFrame`):

0. :func:`pipeline.vectorize.rings.canonical_rings` first: every step below depends on where a ring
   starts and which way it runs, so the same pixels give the same outline for any block size.
1. :func:`fill_holes` drops interior rings under ``max_hole_m2`` (mask speckle).
2. :func:`pipeline.vectorize.regularize.regularize` squares each exterior ring (with the
   building-shaped priors of :mod:`pipeline.vectorize.priors`), or plain Douglas-Peucker
   simplification when regularization is off.
3. :func:`pipeline.vectorize.overlaps.remove_overlaps` makes the output pairwise non-overlapping: where
   two results overlap, the building with the larger original area keeps the overlap (the
   other one snaps onto it first, so shared walls stay straight).

The Douglas-Peucker tolerance of the regularizer is at least 1.5 pixels (pixel size given
or estimated, :func:`estimate_pixel_m`) and 0.5 m: finer, the pixel steps survive as
edges.
"""

from __future__ import annotations

import numpy as np
import shapely
from numpy.typing import NDArray

from pipeline.vectorize.measure import as_geoms
from pipeline.vectorize.overlaps import MULTIPOLYGON, POLYGON, polygonal_part, remove_overlaps
from pipeline.vectorize.priors import Priors
from pipeline.vectorize.regularize import NO_PRIORS
from pipeline.vectorize.regularize import regularize as square_outlines
from pipeline.vectorize.rings import canonical_rings

Geoms = NDArray[np.object_]

REGULARIZE_MIN_SIMPLIFY_M = 0.5  # DP tolerance floor of postprocess, in metres ...
DP_PIXELS = 1.5  # ... and in pixels: a staircase deviates from its wall by up to about a pixel
MAX_ESTIMATED_PIXEL_M = 1.0


def fill_holes(geoms: Geoms, *, max_hole_m2: float) -> Geoms:
    """Remove interior rings with area < ``max_hole_m2`` (metric CRS).

    Polygons and multi-polygons are rebuilt only where a hole goes; anything else passes.
    """
    geoms = as_geoms(geoms)
    polygonal = np.isin(shapely.get_type_id(geoms), (POLYGON, MULTIPOLYGON))
    if max_hole_m2 <= 0 or not polygonal.any():
        return geoms
    out = geoms.copy()
    out[polygonal] = _fill_polygonal(geoms[polygonal], max_hole_m2)
    return out


def _fill_polygonal(geoms: Geoms, max_hole_m2: float) -> Geoms:
    parts, owner = shapely.get_parts(geoms, return_index=True)
    rings, ridx = shapely.get_rings(parts, return_index=True)
    is_hole = np.r_[False, ridx[1:] == ridx[:-1]]
    small = is_hole & (shapely.area(shapely.polygons(rings)) < max_hole_m2)
    changed = np.unique(ridx[small])
    if changed.size == 0:
        return geoms
    keep = ~small & np.isin(ridx, changed)
    rebuilt = shapely.polygons(rings[keep], indices=np.searchsorted(changed, ridx[keep]))
    parts = parts.copy()
    parts[changed] = rebuilt
    out = geoms.copy()
    touched = np.unique(owner[changed])
    single = shapely.get_type_id(geoms[touched]) == POLYGON
    out[touched[single]] = parts[np.searchsorted(owner, touched[single])]
    multi = touched[~single]
    if multi.size:
        sel = np.isin(owner, multi)
        out[multi] = shapely.multipolygons(parts[sel], indices=np.searchsorted(multi, owner[sel]))
    return out


def estimate_pixel_m(geoms: Geoms) -> float:
    """Pixel size of pixel polygons (metric CRS): the median over polygons of their shortest edge.

    Every polygon that is not an axis-aligned rectangle has one-pixel steps, so the median
    is the pixel side. Capped at ``MAX_ESTIMATED_PIXEL_M``; 0 when there are no edges.
    """
    geoms = as_geoms(geoms)
    xy, idx = shapely.get_coordinates(shapely.get_exterior_ring(geoms), return_index=True)
    same = idx[1:] == idx[:-1]
    if not same.any():
        return 0.0
    d = np.diff(xy, axis=0)[same]
    shortest = np.full(geoms.shape[0], np.inf)
    np.minimum.at(shortest, idx[1:][same], np.hypot(d[:, 0], d[:, 1]))
    return float(min(np.median(shortest[np.isfinite(shortest)]), MAX_ESTIMATED_PIXEL_M))


def separable(*, regularize: bool, pixel_m: float | None, priors: Priors = NO_PRIORS) -> bool:
    """Whether :func:`outline_each` may treat the polygons in any groups: each outline then
    depends on its own polygon alone (no orientation shared with neighbours, a known pixel size)."""
    return not regularize or (priors.group_m <= 0 and pixel_m is not None)


def outline_each(
    metric: Geoms,
    *,
    fill_holes_m2: float,
    simplify_m: float,
    regularize: bool,
    angle_tolerance_deg: float,
    min_edge_m: float,
    pixel_m: float | None = None,
    priors: Priors = NO_PRIORS,
) -> tuple[Geoms, NDArray[np.float64]]:
    """Steps 0-2 of :func:`postprocess`: each polygon's outline, overlaps not yet removed, and
    its area, which decides an overlap (:func:`settle`).

    Where :func:`separable` holds, the polygons may come in any groups and the outlines are the
    same: :func:`pipeline.vectorize.buildings.buildings_from_regions` outlines a scene's
    candidates a chunk at a time, so their pixel staircases are never all in memory at once.
    """
    geoms = canonical_rings(as_geoms(metric))  # block-independent input: see pipeline.vectorize.rings
    area = np.asarray(shapely.area(geoms), dtype=np.float64)
    if geoms.size == 0:
        return geoms, area
    filled = fill_holes(geoms, max_hole_m2=fill_holes_m2)
    if regularize:
        px = estimate_pixel_m(geoms) if pixel_m is None else pixel_m
        out = square_outlines(
            filled,
            angle_tolerance_deg=angle_tolerance_deg,
            min_edge_m=min_edge_m,
            simplify_m=max(simplify_m, REGULARIZE_MIN_SIMPLIFY_M, DP_PIXELS * px),
            priors=priors,
        )
    else:
        out = shapely.simplify(filled, simplify_m, preserve_topology=True) if simplify_m > 0 else filled
    return polygonal_part(out), area


def settle(outlines: Geoms, area: NDArray[np.float64], *, touching: Geoms | None = None) -> Geoms:
    """Step 3 of :func:`postprocess`: the outlines made pairwise non-overlapping, the larger
    ``area`` keeping an overlap (``touching``: the polygons whose shared walls stay one line)."""
    if outlines.size == 0:
        return outlines
    return remove_overlaps(outlines, priority=area, touching=touching)


def postprocess(
    metric: Geoms,
    *,
    fill_holes_m2: float,
    simplify_m: float,
    regularize: bool,
    angle_tolerance_deg: float,
    min_edge_m: float,
    pixel_m: float | None = None,
    priors: Priors = NO_PRIORS,
) -> Geoms:
    """Holes, squaring (or simplification) and overlap removal of polygons in a metric CRS:
    :func:`outline_each`, then :func:`settle`.

    One polygon per input, aligned; valid and pairwise non-overlapping, in the input's CRS.
    An output is an empty polygon only when nothing of its input survives (a degenerate
    input, or a building fully covered by a larger neighbour): drop those with
    ``shapely.is_empty``.

    Regularization simplifies with ``max(simplify_m, REGULARIZE_MIN_SIMPLIFY_M,
    DP_PIXELS * pixel_m)``: Douglas-Peucker must be coarser than the pixel staircase or
    its steps survive as short diagonal edges. ``pixel_m`` (the raster's pixel size in
    metres) is estimated from the polygons when not given (:func:`estimate_pixel_m`).
    """
    geoms = as_geoms(metric)
    if geoms.size == 0:
        return geoms
    out, area = outline_each(
        geoms, fill_holes_m2=fill_holes_m2, simplify_m=simplify_m, regularize=regularize,
        angle_tolerance_deg=angle_tolerance_deg, min_edge_m=min_edge_m, pixel_m=pixel_m, priors=priors,
    )  # fmt: skip
    grouped = regularize and priors.group_m > 0
    return settle(
        out, area, touching=canonical_rings(geoms) if grouped else None
    )  # shared walls stay one line
