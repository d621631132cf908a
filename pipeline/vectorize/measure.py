"""Measurements of polygon arrays that the regularizer and the evaluation share (metric CRS).

* :func:`polygon_iou`: element-wise intersection over union;
* :func:`orientation`: a polygon's dominant orientation, the first side of its minimum
  rotated rectangle (the regularizer squares around it; the evaluation's rotation error
  compares it between matched pairs);
* :func:`as_geoms` and :func:`shift`: the flat object arrays every function here takes,
  and moving polygons next to the origin, where GEOS keeps its digits.

They live in the vectorize stage because the regularizer needs them;
:mod:`pipeline.evaluation.polygon_metrics` imports them from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray

Geoms = NDArray[np.object_]
F64 = NDArray[np.float64]


def as_geoms(geoms: Geoms | Sequence[Any]) -> Geoms:
    """A flat object array of geometries."""
    return np.asarray(geoms, dtype=object).reshape(-1)


def shift(geoms: Geoms, origin: F64) -> Geoms:
    """``geoms[i]`` moved by ``-origin[i]``."""
    xy, idx = shapely.get_coordinates(geoms, return_index=True)
    return np.asarray(shapely.set_coordinates(geoms.copy(), xy - origin[idx]), dtype=object)


def polygon_iou(pred: Geoms | Sequence[Any], truth: Geoms | Sequence[Any]) -> F64:
    """Element-wise IoU (0 where the union is empty)."""
    a, b = as_geoms(pred), as_geoms(truth)
    inter = shapely.area(shapely.intersection(a, b))
    union = shapely.area(a) + shapely.area(b) - inter
    return np.asarray(np.divide(inter, union, out=np.zeros_like(inter), where=union > 0), dtype=np.float64)


def orientation(geoms: Geoms | Sequence[Any]) -> F64:
    """Dominant orientation in [0, 90) degrees: the first side of the minimum rotated rectangle.

    ``shapely.oriented_envelope`` (the minimum-area rectangle with GEOS >= 3.12); NaN where
    the rectangle degenerates to a line or a point. A pixel-exact outline has only
    axis-parallel edges, so edge-angle averages would give every pixel outline the grid's
    orientation; its minimum rotated rectangle follows the building's walls.
    """
    geoms = as_geoms(geoms)
    rect = shapely.oriented_envelope(shift(geoms, np.nan_to_num(shapely.bounds(geoms)[:, :2])))
    out = np.full(rect.shape[0], np.nan)
    is_poly = shapely.get_type_id(rect) == 3
    xy, idx = shapely.get_coordinates(shapely.get_exterior_ring(rect[is_poly]), return_index=True)
    first = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]]) if idx.size else np.zeros(0, np.int64)
    d = xy[first + 1] - xy[first]
    out[np.flatnonzero(is_poly)] = np.mod(np.degrees(np.arctan2(d[:, 1], d[:, 0])), 90.0)
    out[out >= 90.0] = 0.0
    return out
