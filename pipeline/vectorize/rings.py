"""Canonical polygon rings: one vertex sequence per shape, whatever produced the polygon.

The same region reaches post-processing from GDAL (one block) or from a union of block
pieces (several blocks) with the same vertices but a different ring start, and possibly
with repeated or collinear vertices left on a seam and its holes in another order.
Douglas-Peucker, squaring and even areas (summed in vertex order) depend on that
representation, so post-processing first makes it canonical (:func:`canonical_rings`):

1. :func:`drop_redundant_vertices`: repeated vertices and vertices lying on the segment
   between their two neighbours (``cross == 0`` and ``dot > 0``: straight through, not a
   spike) are removed from every ring, in passes until none is left. Each vertex is
   judged by its neighbours alone and all flagged in a pass go at once, so the result does not
   depend on where a ring starts or which way it runs.
2. ``shapely.normalize``: every ring starts at its lexicographically smallest (x, y)
   vertex (a corner, never a collinear vertex) and the holes are sorted.
3. ``shapely.reverse``: normalize leaves exteriors clockwise and holes counter-clockwise;
   reversed, exteriors are counter-clockwise and holes clockwise (OGC / RFC 7946), and
   every ring still starts at its smallest vertex.

Two polygons with the same set of ring corners therefore come out coordinate for
coordinate identical. All steps are whole-array numpy / shapely 2 operations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import shapely
from numpy.typing import NDArray

Geoms = NDArray[np.object_]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
Mask = NDArray[np.bool_]

#: Polygons per vectorized pass of the per-building steps (:func:`in_chunks`): their vertex
#: tables are a few hundred bytes per vertex, so a scene's worth at once grows with its area.
CHUNK = 2048


def in_chunks(step: Callable[[Geoms], Geoms], geoms: Geoms, size: int = CHUNK) -> Geoms:
    """``step`` over ``geoms`` ``size`` polygons at a time, concatenated: the same result for a
    ``step`` that treats each polygon on its own, in bounded memory."""
    if geoms.shape[0] <= size:
        return step(geoms)
    return np.concatenate([step(geoms[i : i + size]) for i in range(0, geoms.shape[0], size)])


def _neighbours(ring: I64) -> tuple[I64, I64]:
    """Previous and next vertex (global indexes, cyclic) of each vertex of open rings."""
    counts: I64 = np.bincount(ring).astype(np.int64)
    starts: I64 = np.cumsum(counts) - counts
    first, n = starts[ring], counts[ring]
    pos: I64 = np.arange(ring.shape[0], dtype=np.int64) - first
    prev: I64 = first + np.mod(pos - 1, n)
    nxt: I64 = first + np.mod(pos + 1, n)
    return prev, nxt


def _redundant(xy: F64, ring: I64) -> Mask:
    """Vertices equal to their predecessor, or straight between distinct neighbours (one pass)."""
    prev, nxt = _neighbours(ring)
    d_in, d_out = xy - xy[prev], xy[nxt] - xy
    repeated = np.all(d_in == 0.0, axis=1)
    cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
    dot = d_in[:, 0] * d_out[:, 0] + d_in[:, 1] * d_out[:, 1]
    return np.asarray(repeated | ((cross == 0.0) & (dot > 0.0)), dtype=np.bool_)


def open_rings(rings: Geoms) -> tuple[F64, I64, I64, I64]:
    """Ring coordinates without the closing one: xy, ring index, start and count per ring."""
    xy, idx = shapely.get_coordinates(rings, return_index=True)
    counts = np.bincount(idx, minlength=rings.shape[0]).astype(np.int64)
    keep = np.ones(idx.shape[0], dtype=bool)
    keep[(np.cumsum(counts) - 1)[counts > 0]] = False
    counts = np.maximum(counts - 1, 0)
    starts = (np.cumsum(counts) - counts).astype(np.int64)
    return xy[keep], idx[keep].astype(np.int64), starts, counts


def next_in_ring(idx: I64, starts: I64, counts: I64) -> I64:
    """Global index of the next vertex of the same ring (the last wraps to the first)."""
    nxt = np.arange(1, idx.shape[0] + 1, dtype=np.int64)
    last = (starts + counts - 1)[counts > 0]
    nxt[last] = starts[counts > 0]
    return nxt


def turn(xy: F64, idx: I64, theta: F64, *, back: bool = False) -> F64:
    """Rotate origin-relative points by -theta of their polygon (by +theta when ``back``)."""
    c, s = np.cos(theta)[idx], np.sin(theta)[idx]
    if back:
        s = -s
    x, y = xy[:, 0], xy[:, 1]
    return np.column_stack([c * x + s * y, -s * x + c * y])


def box_centres(geoms: Geoms) -> F64:
    """The centre of each geometry's bounding box, (n, 2): the origin :func:`turn` rotates about."""
    b = shapely.bounds(geoms)
    return np.column_stack([(b[:, 0] + b[:, 2]) / 2.0, (b[:, 1] + b[:, 3]) / 2.0])


def drop_redundant_vertices(geoms: Geoms | Sequence[object]) -> Geoms:
    """Polygons without repeated or collinear ring vertices; other geometries pass unchanged.

    A polygon is only rebuilt where a vertex goes, and left as it is where a ring would
    keep fewer than three vertices (a degenerate input, for the validity repair to judge).
    """
    geoms = np.asarray(geoms, dtype=object).reshape(-1)
    out = geoms.copy()
    poly = np.flatnonzero(shapely.get_type_id(geoms) == shapely.GeometryType.POLYGON)
    rings, owner = shapely.get_rings(geoms[poly], return_index=True)
    if rings.size == 0:
        return out
    xy, ring, _, _ = open_rings(rings)
    n_rings, n_poly = rings.shape[0], poly.shape[0]
    before = np.bincount(ring, minlength=n_rings)
    drop = _redundant(xy, ring)
    while drop.any():  # again: a vertex next to a repeated one is judged on distinct neighbours
        xy, ring = xy[~drop], ring[~drop]
        drop = _redundant(xy, ring)
    left = np.bincount(ring, minlength=n_rings)
    removed = np.bincount(owner, before - left, minlength=n_poly) > 0
    too_few = np.bincount(owner, left < 3, minlength=n_poly) > 0
    changed = removed & ~too_few
    if not changed.any():
        return out
    return _rebuild(out, poly, changed, owner, xy, ring)


def _rebuild(out: Geoms, poly: I64, changed: Mask, owner: I64, xy: F64, ring: I64) -> Geoms:
    """Replace the ``changed`` polygons (indexes into ``poly``) by their kept vertices."""
    ring_sel = changed[owner]
    vert_sel = ring_sel[ring]
    ring_ids = np.flatnonzero(ring_sel)
    new_rings = shapely.linearrings(xy[vert_sel], indices=np.searchsorted(ring_ids, ring[vert_sel]))
    which = np.flatnonzero(changed)
    out[poly[which]] = shapely.polygons(new_rings, indices=np.searchsorted(which, owner[ring_ids]))
    return out


def canonical_rings(geoms: Geoms | Sequence[object]) -> Geoms:
    """Polygons in canonical form: no redundant vertices, exterior CCW and holes CW, each ring
    starting at its smallest (x, y) vertex, holes sorted (see the module docstring)."""
    cleaned = in_chunks(drop_redundant_vertices, np.asarray(geoms, dtype=object).reshape(-1), CHUNK)
    return np.asarray(shapely.reverse(shapely.normalize(cleaned)), dtype=object)
