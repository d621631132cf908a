"""Post-processing of building polygons in a metric CRS: holes, orthogonal walls, no overlaps.

Pixel polygons are staircases. :func:`postprocess` turns them into building-like outlines,
everything in metres (see :class:`pipeline.geo.MetricFrame`):

0. :func:`pipeline.rings.canonical_rings` first: every step below depends on where a ring
   starts and which way it runs, so the same pixels give the same outline for any block size.
1. :func:`fill_holes` drops interior rings under ``max_hole_m2`` (mask speckle).
2. :func:`regularize` squares each exterior ring around its :func:`dominant_orientation`
   (or plain Douglas-Peucker simplification when regularization is off).
3. :func:`remove_overlaps` makes the output pairwise non-overlapping: where two results
   overlap, the building with the larger original area keeps the overlap (the other one
   snaps onto it first, so shared walls stay straight).

The Douglas-Peucker tolerance of the regularizer is at least 1.5 pixels (pixel size given
or estimated, :func:`estimate_pixel_m`) and 0.5 m: finer, the pixel steps survive as
edges.

Regularization of one exterior ring (rotated by -theta about its bounding-box centre, so
its walls run along the axes):

* Douglas-Peucker (``simplify_m``) gives the main edges; each edge is *supported* by the
  raw pixel edges between its two end vertices (DP keeps a subset of the raw vertices).
* theta is :func:`dominant_orientation`'s length-weighted circular mean (angles x4), but
  of the directions fitted to each edge's support (principal axis of its pixel edges),
  which are within a fraction of a degree where DP chords between staircase corners are
  1-2 degrees off.
* An edge within ``angle_tolerance_deg`` of the x axis is H, of the y axis V, else D
  (diagonal walls exist and are kept). Consecutive H (or V) edges merge.
* Every edge becomes a line: an H line at the length-weighted mean y of its support (the
  centroid of the raw staircase, which lies on the true wall on average), a V line at
  the mean x, a D line through its support centroid along its DP chord. Vertices are the
  intersections of consecutive lines, so H/V corners are exact right angles and a
  diagonal keeps its direction; where that intersection lies more than
  ``2 * simplify_m`` from the DP vertex, the DP vertex projected onto the H/V line is
  used instead (no spikes from shallow diagonals).
* The shortest edge, if shorter than ``min_edge_m`` (diagonals: ``2 * min_edge_m``) or
  reversed, goes: a short diagonal between two parallel walls becomes a jog (an edge
  across them), anything else is dropped so that its neighbours merge or meet. Lines
  are snapped again until every edge is long enough.

The result (simplified holes kept) is repaired with ``make_valid`` and its largest
polygon kept; it falls back to the simplified input when it is empty, changed the area
by more than ``max_area_change`` or has IoU < 0.5 with the simplified input.

Orientation, rotation, edge support (``np.bincount`` over all rings at once), assembly
and the validity checks work on whole arrays. Only the snapping of one ring's few DP
edges is a Python loop per polygon: each ring has its own small, ragged edge list whose
merges depend on the previous ones, which does not vectorize.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
from numpy.typing import NDArray

from pipeline.geo import MetricFrame
from pipeline.rings import canonical_rings

Geoms = NDArray[np.object_]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
Point = tuple[float, float]
# One edge group: (class, support length, sum of length*x, sum of length*y, chord dx, chord dy,
# first vertex x, y, last vertex x, y), in the rotated frame.
Group = tuple[int, float, float, float, float, float, float, float, float, float]

H, V, D = 0, 1, 2
MIN_IOU = 0.5
MIN_DIAGONAL_SIN = math.sin(math.radians(10.0))  # D/D lines closer than 10° meet at the DP vertex
DIAGONAL_EDGE_FACTOR = 2.0  # diagonal edges must be this many times min_edge_m long
MAX_SHIFT_FACTOR = 2.0  # a corner with a diagonal moves at most this many DP tolerances
COLLINEAR_M = 1e-6  # vertices this close to the line of their neighbours are dropped
OVERLAP_M2 = 1e-9  # intersections smaller than this are touching, not overlapping
SNAP_M = 0.25  # a polygon cut by a neighbour first snaps its vertices onto it within this
SNAP_KEEP = 0.9  # ... unless snapping loses more than 10 % of what the plain cut keeps
REGULARIZE_MIN_SIMPLIFY_M = 0.5  # DP tolerance floor of postprocess, in metres ...
DP_PIXELS = 1.5  # ... and in pixels: a staircase deviates from its wall by up to about a pixel
MAX_ESTIMATED_PIXEL_M = 1.0
POLYGON, MULTIPOLYGON = 3, 6


# --------------------------------------------------------------------------- helpers


def _as_geoms(geoms: Geoms | Sequence[object]) -> Geoms:
    return np.asarray(geoms, dtype=object).reshape(-1)


def polygonal_part(geoms: Geoms) -> Geoms:
    """The largest polygon of each repaired geometry (an empty polygon when there is none)."""
    geoms = _as_geoms(geoms)
    out = np.full(geoms.shape[0], shapely.Polygon(), dtype=object)
    present = ~shapely.is_missing(geoms)
    fixed = shapely.make_valid(geoms[present], method="structure", keep_collapsed=False)
    parts, idx = shapely.get_parts(fixed, return_index=True)
    poly = shapely.get_type_id(parts) == POLYGON
    parts, idx = parts[poly], idx[poly]
    if parts.size:
        order = np.lexsort((-shapely.area(parts), idx))
        first = order[np.r_[True, idx[order][1:] != idx[order][:-1]]]
        sub = out[present]
        sub[idx[first]] = parts[first]
        out[present] = sub
    return out


def polygon_iou(a: Geoms, b: Geoms) -> F64:
    """Element-wise IoU of two aligned geometry arrays (0 where the union is empty)."""
    inter = shapely.area(shapely.intersection(a, b))
    union = shapely.area(a) + shapely.area(b) - inter
    return np.asarray(np.divide(inter, union, out=np.zeros_like(inter), where=union > 0), dtype=np.float64)


def _open_rings(rings: Geoms) -> tuple[F64, I64, I64, I64]:
    """Ring coordinates without the closing one: xy, ring index, start and count per ring."""
    xy, idx = shapely.get_coordinates(rings, return_index=True)
    counts = np.bincount(idx, minlength=rings.shape[0]).astype(np.int64)
    keep = np.ones(idx.shape[0], dtype=bool)
    keep[(np.cumsum(counts) - 1)[counts > 0]] = False
    counts = np.maximum(counts - 1, 0)
    starts = (np.cumsum(counts) - counts).astype(np.int64)
    return xy[keep], idx[keep].astype(np.int64), starts, counts


def _next_in_ring(idx: I64, starts: I64, counts: I64) -> I64:
    """Global index of the next vertex of the same ring (the last wraps to the first)."""
    nxt = np.arange(1, idx.shape[0] + 1, dtype=np.int64)
    last = (starts + counts - 1)[counts > 0]
    nxt[last] = starts[counts > 0]
    return nxt


def _turn(xy: F64, idx: I64, theta: F64, *, back: bool = False) -> F64:
    """Rotate origin-relative points by -theta of their polygon (by +theta when ``back``)."""
    c, s = np.cos(theta)[idx], np.sin(theta)[idx]
    if back:
        s = -s
    x, y = xy[:, 0], xy[:, 1]
    return np.column_stack([c * x + s * y, -s * x + c * y])


# --------------------------------------------------------------------------- holes, orientation


def fill_holes(geoms: Geoms, *, max_hole_m2: float) -> Geoms:
    """Remove interior rings with area < ``max_hole_m2`` (metric CRS).

    Polygons and multi-polygons are rebuilt only where a hole goes; anything else passes.
    """
    geoms = _as_geoms(geoms)
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


def dominant_orientation(geoms: Geoms) -> F64:
    """Wall direction in [0, 90) degrees per polygon: length-weighted circular mean mod 90°.

    Edge angles are multiplied by 4 on the unit circle, so walls at 0, 90, 180 and 270
    degrees count as one direction. Polygons without edges get 0.
    """
    geoms = _as_geoms(geoms)
    n = geoms.shape[0]
    xy, idx = shapely.get_coordinates(shapely.get_exterior_ring(geoms), return_index=True)
    same = idx[1:] == idx[:-1]
    d = np.diff(xy, axis=0)[same]
    pid = idx[1:][same]
    length = np.hypot(d[:, 0], d[:, 1])
    angle4 = 4.0 * np.arctan2(d[:, 1], d[:, 0])
    c = np.bincount(pid, length * np.cos(angle4), minlength=n)
    s = np.bincount(pid, length * np.sin(angle4), minlength=n)
    theta = np.mod(np.degrees(np.arctan2(s, c)) / 4.0, 90.0)
    theta[theta >= 90.0] = 0.0
    return np.asarray(theta, dtype=np.float64)


# --------------------------------------------------------------------------- edge tables


def _match_vertices(raw_xy: F64, raw_idx: I64, s_xy: F64, s_idx: I64) -> I64:
    """Global raw index of each simplified vertex (DP keeps raw vertices), -1 when not found."""
    nr, ns = raw_idx.shape[0], s_idx.shape[0]
    pid = np.concatenate([raw_idx, s_idx])
    xy = np.concatenate([raw_xy, s_xy])
    flag = np.r_[np.zeros(nr, np.int8), np.ones(ns, np.int8)]
    order = np.lexsort((flag, xy[:, 1], xy[:, 0], pid))
    at = np.maximum.accumulate(np.where(order < nr, np.arange(order.shape[0]), -1))
    sel = order >= nr
    ok, sid = at[sel] >= 0, order[sel] - nr
    cand = np.where(ok, order[np.maximum(at[sel], 0)], -1)
    safe = np.where(ok, cand, 0)
    ok &= (raw_idx[safe] == s_idx[sid]) & np.all(raw_xy[safe] == s_xy[sid], axis=1)
    out = np.full(ns, -1, dtype=np.int64)
    out[sid[ok]] = cand[ok]
    return out


def _cyclic_ok(pos: I64, s_idx: I64, s_starts: I64, s_counts: I64, n: int) -> NDArray[np.bool_]:
    """Rings whose DP vertices were all found, in raw order up to the start (one wrap)."""
    found = np.bincount(s_idx[pos < 0], minlength=n) == 0
    nxt = _next_in_ring(s_idx, s_starts, s_counts)
    descents = np.bincount(s_idx[pos[nxt] <= pos], minlength=n)
    return np.asarray(found & (descents == 1) & (s_counts >= 3), dtype=np.bool_)


def _support_edge(pos: I64, raw_idx: I64, raw_starts: I64, ok: NDArray[np.bool_]) -> I64:
    """For each raw edge, the DP edge (global simplified vertex index) replacing it, or -1."""
    nr = raw_idx.shape[0]
    mark = np.full(nr, -1, dtype=np.int64)
    good = pos >= 0
    mark[pos[good]] = np.flatnonzero(good)
    at = np.arange(nr, dtype=np.int64)
    filled = np.maximum.accumulate(np.where(mark >= 0, at, -1))
    last = np.full(raw_starts.shape[0], -1, dtype=np.int64)
    np.maximum.at(last, raw_idx[mark >= 0], at[mark >= 0])
    wrap = filled < raw_starts[raw_idx]
    filled[wrap] = last[raw_idx[wrap]]
    use = ok[raw_idx] & (filled >= 0)
    return np.where(use, mark[np.maximum(filled, 0)], -1)


def _support_moments(raw_rel: F64, nxt: I64, edge: I64, ns: int) -> F64:
    """Per DP edge, line-mass moments of the raw edges it replaces: w, Sx, Sy, Sxx, Syy, Sxy."""
    use = edge >= 0
    a, b, e = raw_rel[use], raw_rel[nxt[use]], edge[use]
    d = b - a
    length = np.hypot(d[:, 0], d[:, 1])
    m = (a + b) / 2.0
    terms = (
        length,
        length * m[:, 0],
        length * m[:, 1],
        length * (m[:, 0] ** 2 + d[:, 0] ** 2 / 12.0),
        length * (m[:, 1] ** 2 + d[:, 1] ** 2 / 12.0),
        length * (m[:, 0] * m[:, 1] + d[:, 0] * d[:, 1] / 12.0),
    )
    return np.stack([np.bincount(e, t, minlength=ns) for t in terms])


def _fitted_orientation(mom: F64, chord: F64, s_idx: I64, n: int) -> F64:
    """Orientation (radians, [0, pi/2)) from the principal direction of each edge's support.

    Like :func:`dominant_orientation` (angles x4, weighted by chord length), but each DP
    edge contributes the direction fitted to its raw pixel edges, not its chord between
    two staircase corners (about 1.5° off on a 10 m wall at 0.3 m pixels).
    """
    w = np.maximum(mom[0], 1e-12)
    cxx = mom[3] - mom[1] ** 2 / w
    cyy = mom[4] - mom[2] ** 2 / w
    cxy = mom[5] - mom[1] * mom[2] / w
    phi4 = 2.0 * np.arctan2(2.0 * cxy, cxx - cyy)
    c = np.bincount(s_idx, chord * np.cos(phi4), minlength=n)
    s = np.bincount(s_idx, chord * np.sin(phi4), minlength=n)
    theta = np.mod(np.arctan2(s, c) / 4.0, np.pi / 2.0)
    theta[theta >= np.pi / 2.0] = 0.0
    return np.asarray(theta, dtype=np.float64)


def _classify(d: F64, tolerance_deg: float) -> I64:
    """H, V or D per chord (rotated frame) by its angle to the axes."""
    angle = np.degrees(np.arctan2(np.abs(d[:, 1]), np.abs(d[:, 0])))
    cls = np.full(d.shape[0], D, dtype=np.int64)
    cls[angle <= tolerance_deg] = H
    cls[angle >= 90.0 - tolerance_deg] = V
    return cls


# --------------------------------------------------------------------------- one ring


def _join(a: Group, b: Group) -> Group:
    return (a[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4], a[5] + b[5], a[6], a[7], b[8], b[9])


def _merge_runs(groups: list[Group]) -> list[Group]:
    """Merge cyclically consecutive H/H and V/V groups (diagonals never merge)."""
    out: list[Group] = []
    for g in groups:
        if out and g[0] != D and out[-1][0] == g[0]:
            out[-1] = _join(out[-1], g)
        else:
            out.append(g)
    while len(out) > 1 and out[0][0] != D and out[0][0] == out[-1][0]:
        out[0] = _join(out.pop(), out[0])
    return out


def _diagonal_corner(a: Group, b: Group, ref: Point) -> Point:
    """Intersection of two diagonal lines, or ``ref`` when they are nearly parallel."""
    ax, ay, bx, by = a[2] / a[1], a[3] / a[1], b[2] / b[1], b[3] / b[1]
    cross = a[4] * b[5] - a[5] * b[4]
    if abs(cross) < MIN_DIAGONAL_SIN * math.hypot(a[4], a[5]) * math.hypot(b[4], b[5]):
        return ref
    t = ((bx - ax) * b[5] - (by - ay) * b[4]) / cross
    return (ax + t * a[4], ay + t * a[5])


def _corner(a: Group, b: Group, max_shift_m: float) -> Point:
    """Vertex where group ``a``'s line meets the next group ``b``'s line.

    H/V lines meet at a right angle. Where a diagonal is involved and the intersection
    lies more than ``max_shift_m`` from the DP vertex between the two (``ref``), the
    vertex is ``ref`` projected onto the H/V line instead (or ``ref`` itself for D/D).
    """
    ref = ((a[8] + b[6]) / 2.0, (a[9] + b[7]) / 2.0)
    if a[0] == H and b[0] == V:
        return (b[2] / b[1], a[3] / a[1])
    if a[0] == V and b[0] == H:
        return (a[2] / a[1], b[3] / b[1])
    axis, diag = (a, b) if a[0] != D else (b, a)
    if axis[0] == H:
        y = axis[3] / axis[1]
        x = diag[2] / diag[1] + (y - diag[3] / diag[1]) * diag[4] / diag[5]
        p, proj = (x, y), (ref[0], y)
    elif axis[0] == V:
        x = axis[2] / axis[1]
        y = diag[3] / diag[1] + (x - diag[2] / diag[1]) * diag[5] / diag[4]
        p, proj = (x, y), (x, ref[1])
    else:
        p, proj = _diagonal_corner(a, b, ref), ref
    return p if math.hypot(p[0] - ref[0], p[1] - ref[1]) <= max_shift_m else proj


def _signed_lengths(groups: list[Group], pts: list[Point]) -> list[float]:
    """Length of each snapped edge along its original direction (negative when reversed).

    Diagonal edges count ``DIAGONAL_EDGE_FACTOR`` times shorter: a short diagonal is a cut
    corner or a staircase remnant more often than a wall.
    """
    n = len(groups)
    out = []
    for i, g in enumerate(groups):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % n]
        norm = math.hypot(g[4], g[5])
        length = ((x1 - x0) * g[4] + (y1 - y0) * g[5]) / norm if norm > 0 else -1.0
        out.append(length / DIAGONAL_EDGE_FACTOR if g[0] == D else length)
    return out


def snap_ring(groups: list[Group], *, min_edge_m: float, max_shift_m: float) -> list[Point] | None:
    """Vertices of one orthogonalized ring (rotated frame), or None when it collapses."""
    groups = _merge_runs(groups)
    while len(groups) >= 3:
        n = len(groups)
        pts = [_corner(groups[i - 1], groups[i], max_shift_m) for i in range(n)]
        lengths = _signed_lengths(groups, pts)
        k = min(range(n), key=lengths.__getitem__)
        if lengths[k] >= min_edge_m:
            return pts
        g, before, after = groups[k], groups[k - 1][0], groups[(k + 1) % n][0]
        if g[0] == D and before == after != D:  # a short diagonal between parallel walls: a jog
            groups[k] = _as_axis(g, V if before == H else H)
        else:
            del groups[k]
        groups = _merge_runs(groups)
    return None


def _as_axis(g: Group, cls: int) -> Group:
    """The group as an H or V edge, its direction projected on that axis."""
    dx, dy = (g[4], 0.0) if cls == H else (0.0, g[5])
    return (cls, g[1], g[2], g[3], dx, dy, g[6], g[7], g[8], g[9])


# --------------------------------------------------------------------------- regularize


def _edge_groups(raw: Geoms, simple: Geoms, origin: F64, tolerance_deg: float) -> tuple[
    list[Group], F64, I64, I64, NDArray[np.bool_]
]:  # fmt: skip
    """Per DP edge of every ring (rotated frame): its group; orientation, ring starts, counts, ok."""
    n = raw.shape[0]
    raw_xy, raw_idx, raw_starts, raw_counts = _open_rings(shapely.get_exterior_ring(raw))
    s_xy, s_idx, s_starts, s_counts = _open_rings(shapely.get_exterior_ring(simple))
    pos = _match_vertices(raw_xy, raw_idx, s_xy, s_idx)
    ok = _cyclic_ok(pos, s_idx, s_starts, s_counts, n)
    edge = _support_edge(pos, raw_idx, raw_starts, ok)
    raw_nxt = _next_in_ring(raw_idx, raw_starts, raw_counts)
    mom = _support_moments(raw_xy - origin[raw_idx], raw_nxt, edge, s_idx.shape[0])
    ok &= np.bincount(s_idx[mom[0] <= 0], minlength=n) == 0
    s_rel = s_xy - origin[s_idx]
    chord = s_rel[_next_in_ring(s_idx, s_starts, s_counts)] - s_rel
    theta = _fitted_orientation(mom, np.hypot(chord[:, 0], chord[:, 1]), s_idx, n)
    s_r, d = _turn(s_rel, s_idx, theta), _turn(chord, s_idx, theta)
    w = mom[0]
    centre = _turn(np.column_stack([mom[1], mom[2]]), s_idx, theta)  # rotation is linear: sums turn too
    cls = _classify(d, tolerance_deg)
    end = s_r + d
    cols = (cls, w, centre[:, 0], centre[:, 1], d[:, 0], d[:, 1], s_r[:, 0], s_r[:, 1], end[:, 0], end[:, 1])
    groups: list[Group] = list(zip(*(c.tolist() for c in cols), strict=True))
    return groups, theta, s_starts, s_counts, ok


def _orthogonal_shells(
    raw: Geoms, simple: Geoms, *, angle_tolerance_deg: float, min_edge_m: float, max_shift_m: float
) -> tuple[Geoms, NDArray[np.bool_]]:
    """Squared exterior rings in the metric frame, and which polygons got one."""
    n = raw.shape[0]
    b = shapely.bounds(simple)
    origin = np.column_stack([(b[:, 0] + b[:, 2]) / 2.0, (b[:, 1] + b[:, 3]) / 2.0])
    groups, theta, starts, counts, ok = _edge_groups(raw, simple, origin, angle_tolerance_deg)
    xs: list[Point] = []
    ring_of: list[int] = []
    # Python loop per polygon: each ring's edge list is ragged and its merges are sequential.
    for i in np.flatnonzero(ok).tolist():
        s = int(starts[i])
        pts = snap_ring(groups[s : s + int(counts[i])], min_edge_m=min_edge_m, max_shift_m=max_shift_m)
        if pts is None:
            ok[i] = False
            continue
        xs.extend(pts)
        ring_of.extend([i] * len(pts))
    shells = np.full(n, None, dtype=object)
    if xs:
        idx = np.asarray(ring_of, dtype=np.int64)
        xy = _turn(np.asarray(xs, dtype=np.float64), idx, theta, back=True) + origin[idx]
        done = np.flatnonzero(ok)
        shells[done] = shapely.linearrings(xy, indices=np.searchsorted(done, idx))
    return shells, ok


def _with_holes(shells: Geoms, simple: Geoms) -> Geoms:
    """Polygons from new exterior rings and the simplified holes of ``simple``."""
    rings, ridx = shapely.get_rings(simple, return_index=True)
    hole = np.r_[False, ridx[1:] == ridx[:-1]]
    all_rings = np.concatenate([shells, rings[hole]])
    owner = np.concatenate([np.arange(shells.shape[0]), ridx[hole]])
    is_hole = np.r_[np.zeros(shells.shape[0], bool), np.ones(int(hole.sum()), bool)]
    order = np.lexsort((is_hole, owner))
    out = shapely.polygons(all_rings[order], indices=owner[order])
    return np.asarray(out, dtype=object)


def _dp(geoms: Geoms, tolerance_m: float) -> Geoms:
    """Douglas-Peucker: the fast plain one, topology-preserving where there are holes."""
    simple = np.asarray(shapely.simplify(geoms, tolerance_m, preserve_topology=False), dtype=object)
    holed = np.flatnonzero(shapely.get_num_interior_rings(geoms) > 0)
    if holed.size:
        simple[holed] = shapely.simplify(geoms[holed], tolerance_m, preserve_topology=True)
    return simple


def _squared(
    raw: Geoms, simple: Geoms, *, angle_tolerance_deg: float, min_edge_m: float, simplify_m: float,
    max_area_change: float,
) -> tuple[I64, Geoms]:  # fmt: skip
    """Indexes of the polygons that square well, and their squared outlines (holes kept)."""
    shells, made = _orthogonal_shells(
        raw, simple, angle_tolerance_deg=angle_tolerance_deg, min_edge_m=min_edge_m,
        max_shift_m=MAX_SHIFT_FACTOR * simplify_m,
    )  # fmt: skip
    done = np.flatnonzero(made)
    if done.size == 0:
        return done, np.empty(0, dtype=object)
    squared = _with_holes(shells[done], simple[done])
    squared = polygonal_part(shapely.simplify(squared, COLLINEAR_M, preserve_topology=True))
    before, after = shapely.area(raw[done]), shapely.area(squared)
    change = np.abs(after - before) / np.maximum(before, 1e-12)
    good = ~shapely.is_empty(squared) & shapely.is_valid(squared) & (change <= max_area_change)
    # IoU against the (repaired) DP outline: 10x cheaper than against the pixel staircase.
    reference = polygonal_part(simple[done[good]])
    good[good] = polygon_iou(squared[good], reference) >= MIN_IOU
    return done[good], squared[good]


def regularize(
    geoms: Geoms,
    *,
    angle_tolerance_deg: float = 15.0,
    min_edge_m: float = 1.0,
    simplify_m: float = 0.5,
    max_area_change: float = 0.25,
) -> Geoms:
    """Square building polygons (metric CRS) around their dominant orientation.

    Returns one valid polygonal geometry per input, aligned with ``geoms``: the
    orthogonalized outline, or where squaring failed the checks (empty, area changed by
    more than ``max_area_change``, IoU < 0.5 with the simplified input) the input
    simplified with ``simplify_m`` (topology-preserving, repaired). Multi-polygons are
    only simplified.
    """
    geoms = _as_geoms(geoms)
    if geoms.size == 0:
        return geoms
    simple = _dp(geoms, simplify_m)
    cand = np.flatnonzero(
        (shapely.get_type_id(geoms) == POLYGON)
        & (shapely.get_type_id(simple) == POLYGON)
        & (shapely.get_num_coordinates(simple) >= 4)
    )
    ok, squared = _squared(
        geoms[cand], simple[cand], angle_tolerance_deg=angle_tolerance_deg,
        min_edge_m=min_edge_m, simplify_m=simplify_m, max_area_change=max_area_change,
    )  # fmt: skip
    out = np.empty(geoms.shape[0], dtype=object)
    out[cand[ok]] = squared
    rest = np.ones(geoms.shape[0], dtype=bool)
    rest[cand[ok]] = False
    fallback = shapely.simplify(geoms[rest], simplify_m, preserve_topology=True)
    out[rest] = shapely.make_valid(fallback, method="structure", keep_collapsed=False)
    return out


# --------------------------------------------------------------------------- overlaps, chain


def remove_overlaps(geoms: Geoms, *, priority: F64, snap_m: float = SNAP_M) -> Geoms:
    """Make polygons pairwise non-overlapping; higher ``priority`` keeps a shared area.

    Candidates come from an STRtree; only polygons that overlap a higher-priority one are
    touched, in priority order, each minus the union of its already-final neighbours
    (after snapping onto them, see :func:`_cut`; largest polygon part kept, so it may
    come out empty when fully covered).
    """
    geoms = _as_geoms(geoms)
    if geoms.size < 2:
        return geoms
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    rank = np.empty(geoms.shape[0], dtype=np.int64)
    rank[np.lexsort((np.arange(geoms.shape[0]), -priority))] = np.arange(geoms.shape[0])
    sel = rank[b] < rank[a]
    a, b = a[sel], b[sel]
    overlap = shapely.area(shapely.intersection(geoms[a], geoms[b])) > OVERLAP_M2
    a, b = a[overlap], b[overlap]
    if a.size == 0:
        return geoms
    out = geoms.copy()
    order = np.lexsort((b, rank[a]))
    a, b = a[order], b[order]
    cuts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    for lo, hi in zip(cuts.tolist(), np.r_[cuts[1:], a.size].tolist(), strict=True):
        i = int(a[lo])
        out[i] = _cut(out[i], shapely.union_all(out[b[lo:hi]]), snap_m)
    return out


def _cut(geom: shapely.Geometry, taken: shapely.Geometry, snap_m: float) -> shapely.Geometry:
    """``geom`` minus ``taken``, its vertices first snapped onto ``taken`` within ``snap_m``.

    Two squared neighbours rarely share a wall to the last centimetre; snapping makes the
    walls coincide, so the cut leaves no centimetre-wide notches. The plain cut is kept
    when snapping lost more than ``1 - SNAP_KEEP`` of the area.
    """
    plain = shapely.difference(geom, taken)
    snapped = shapely.make_valid(shapely.snap(geom, taken, snap_m), method="structure", keep_collapsed=False)
    both = polygonal_part(np.array([shapely.difference(snapped, taken), plain], dtype=object))
    return both[0] if shapely.area(both[0]) >= SNAP_KEEP * shapely.area(both[1]) else both[1]


def estimate_pixel_m(geoms: Geoms) -> float:
    """Pixel size of pixel polygons (metric CRS): the median over polygons of their shortest edge.

    Every polygon that is not an axis-aligned rectangle has one-pixel steps, so the median
    is the pixel side. Capped at ``MAX_ESTIMATED_PIXEL_M``; 0 when there are no edges.
    """
    geoms = _as_geoms(geoms)
    xy, idx = shapely.get_coordinates(shapely.get_exterior_ring(geoms), return_index=True)
    same = idx[1:] == idx[:-1]
    if not same.any():
        return 0.0
    d = np.diff(xy, axis=0)[same]
    shortest = np.full(geoms.shape[0], np.inf)
    np.minimum.at(shortest, idx[1:][same], np.hypot(d[:, 0], d[:, 1]))
    return float(min(np.median(shortest[np.isfinite(shortest)]), MAX_ESTIMATED_PIXEL_M))


def postprocess(
    geoms_scene: Geoms,
    *,
    frame: MetricFrame,
    fill_holes_m2: float,
    simplify_m: float,
    regularize: bool,
    angle_tolerance_deg: float,
    min_edge_m: float,
    pixel_m: float | None = None,
) -> Geoms:
    """Holes, squaring (or simplification) and overlap removal, in metres; scene CRS in and out.

    One polygon per input, aligned; valid and pairwise non-overlapping. An output is an
    empty polygon only when nothing of its input survives (a degenerate input, or a
    building fully covered by a larger neighbour): drop those with ``shapely.is_empty``.

    Regularization simplifies with ``max(simplify_m, REGULARIZE_MIN_SIMPLIFY_M,
    DP_PIXELS * pixel_m)``: Douglas-Peucker must be coarser than the pixel staircase or
    its steps survive as short diagonal edges. ``pixel_m`` (the raster's pixel size in
    metres) is estimated from the polygons when not given (:func:`estimate_pixel_m`).
    """
    geoms = _as_geoms(geoms_scene)
    if geoms.size == 0:
        return geoms
    metric = canonical_rings(frame.to_metric(geoms))  # block-independent input: see pipeline.rings
    area = np.asarray(shapely.area(metric), dtype=np.float64)
    filled = fill_holes(metric, max_hole_m2=fill_holes_m2)
    if regularize:
        px = estimate_pixel_m(metric) if pixel_m is None else pixel_m
        out = _regularize(
            filled,
            angle_tolerance_deg=angle_tolerance_deg,
            min_edge_m=min_edge_m,
            simplify_m=max(simplify_m, REGULARIZE_MIN_SIMPLIFY_M, DP_PIXELS * px),
        )
    else:
        out = shapely.simplify(filled, simplify_m, preserve_topology=True) if simplify_m > 0 else filled
    out = remove_overlaps(polygonal_part(out), priority=area)
    scene = frame.to_scene(out)
    bad = ~shapely.is_valid(scene)
    if bad.any():
        scene = scene.copy()
        scene[bad] = polygonal_part(scene[bad])
    return scene


_regularize = regularize  # ``postprocess`` takes a ``regularize`` flag that shadows the function
