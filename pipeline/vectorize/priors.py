"""Building-shaped priors for the regularizer (metric CRS): shared directions and rectangles.

* **Neighbours share directions** (:func:`shared_orientations`). Buildings within
  ``group_m`` of each other whose orientations (mod 90°) differ by at most
  ``group_tolerance_deg`` are linked; each connected group of links gets one orientation,
  the circular mean (angles x4) of its members' orientations weighted by their wall
  length, and every member within the tolerance of it takes it. Walls of a row of houses
  then come out exactly parallel, and a wall two neighbours share has one direction on
  both sides (the overlap removal then makes it one line). Components, not per-building
  neighbourhood means, so that two neighbours always get the *same* value.
* **A blob becomes a rectangle where one fits** (:func:`moment_rectangles`). The rectangle
  at the building's orientation with the outline's area centroid and second moments (a
  w x h rectangle has variances w²/12 and h²/12 along its sides) is unbiased on pixel
  staircases, unlike the minimum rotated rectangle, which hugs the outermost pixel
  corners. The regularizer takes it where its IoU with the outline reaches
  ``rectangle_iou``; an L-shape or a courtyard never fits that well.

Both are whole-array operations (an STRtree query, scipy's connected components, vertex
sums with ``np.bincount``) and depend only on the canonical input array, so they keep the
delivered polygons independent of the block size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.vectorize.rings import box_centres, next_in_ring, open_rings, turn

Geoms = NDArray[np.object_]
F64 = NDArray[np.float64]
Mask = NDArray[np.bool_]
QUARTER = np.pi / 2.0


@dataclass(frozen=True)
class Priors:
    """Which priors the regularizer applies (0 turns each off), and how it orients a building:
    ``"envelope"`` (its minimum rotated rectangle) or ``"walls"`` (fitted to its wall pixels)."""

    orientation: str = "envelope"
    group_m: float = 0.0  # buildings closer than this (m) share an orientation
    group_tolerance_deg: float = 5.0  # ... when their orientations differ by at most this
    rectangle_iou: float = 0.0  # a building becomes its fitted rectangle at this IoU or more
    corner_area_ratio: float = 0.0  # a diagonal goes when its corner triangle is less than this share


def folded_difference(a: F64, b: F64) -> F64:
    """Difference of orientations (radians) mod 90°, folded into [0, 45°]."""
    d = np.mod(np.abs(a - b), QUARTER)
    return np.asarray(np.minimum(d, QUARTER - d), dtype=np.float64)


def circular_mean(theta: F64, weight: F64, group: NDArray[np.int64], n: int) -> F64:
    """Weighted mean orientation (radians, mod 90°) per group 0..n-1: angles x4 on the unit circle."""
    c = np.bincount(group, weight * np.cos(4.0 * theta), minlength=n)
    s = np.bincount(group, weight * np.sin(4.0 * theta), minlength=n)
    mean = np.mod(np.arctan2(s, c) / 4.0, QUARTER)
    mean[mean >= QUARTER] = 0.0
    return np.asarray(mean, dtype=np.float64)


def shared_orientations(
    geoms: Geoms, theta: F64, *, weight: F64, ok: Mask, distance_m: float, tolerance_deg: float
) -> F64:
    """Orientations (radians, [0, 90°)) with neighbours' snapped to their group's mean.

    Only polygons with ``ok`` take part. Two take part in one group when they lie within
    ``distance_m`` of each other and their orientations differ by at most ``tolerance_deg``
    (mod 90°); groups are the connected components of those links. A member keeps its own
    orientation when the group's mean lies further than the tolerance from it.
    """
    out = np.asarray(theta, dtype=np.float64).copy()
    idx = np.flatnonzero(ok)
    if idx.size < 2 or distance_m <= 0:
        return out
    t = out[idx]
    a, b = shapely.STRtree(geoms[idx]).query(geoms[idx], predicate="dwithin", distance=distance_m)
    tol = np.radians(tolerance_deg)
    link = (a < b) & (folded_difference(t[a], t[b]) <= tol)
    a, b = a[link], b[link]
    graph = coo_matrix((np.ones(a.size), (a, b)), shape=(idx.size, idx.size))
    n, group = connected_components(graph, directed=False)
    mean = circular_mean(t, np.asarray(weight, dtype=np.float64)[idx], group, n)
    size = np.bincount(group, minlength=n)
    snap = (size[group] > 1) & (folded_difference(t, mean[group]) <= tol)
    out[idx[snap]] = mean[group[snap]]
    return out


def moment_rectangles(geoms: Geoms, theta: F64) -> Geoms:
    """Per polygon, the rectangle at orientation ``theta`` (radians) with its exterior's area
    centroid and second moments along the rotated axes."""
    xy, idx, starts, counts = open_rings(shapely.get_exterior_ring(geoms))
    n = geoms.shape[0]
    origin = box_centres(geoms)
    p = turn(xy - origin[idx], idx, theta)
    q = p[next_in_ring(idx, starts, counts)]
    cross = p[:, 0] * q[:, 1] - q[:, 0] * p[:, 1]
    area = np.bincount(idx, cross, minlength=n) / 2.0
    safe = np.where(area != 0, area, 1.0)
    cx = np.bincount(idx, (p[:, 0] + q[:, 0]) * cross, minlength=n) / (6.0 * safe)
    cy = np.bincount(idx, (p[:, 1] + q[:, 1]) * cross, minlength=n) / (6.0 * safe)
    sxx = np.bincount(idx, (p[:, 0] ** 2 + p[:, 0] * q[:, 0] + q[:, 0] ** 2) * cross, minlength=n) / 12.0
    syy = np.bincount(idx, (p[:, 1] ** 2 + p[:, 1] * q[:, 1] + q[:, 1] ** 2) * cross, minlength=n) / 12.0
    half_w = np.sqrt(np.maximum(12.0 * (sxx / safe - cx**2), 0.0)) / 2.0
    half_h = np.sqrt(np.maximum(12.0 * (syy / safe - cy**2), 0.0)) / 2.0
    sx, sy = np.array([-1.0, 1.0, 1.0, -1.0]), np.array([-1.0, -1.0, 1.0, 1.0])  # counter-clockwise
    corners = np.stack([cx[:, None] + sx * half_w[:, None], cy[:, None] + sy * half_h[:, None]], axis=2)
    owner = np.repeat(np.arange(n), 4)
    world = turn(corners.reshape(-1, 2), owner, theta, back=True) + origin[owner]
    rects = np.asarray(shapely.polygons(shapely.linearrings(world, indices=owner)), dtype=object)
    rects[(area == 0) | (half_w == 0) | (half_h == 0)] = shapely.Polygon()
    return rects
