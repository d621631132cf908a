"""Squaring one ring: snap its Douglas-Peucker edges to walls and intersect them.

A ring arrives as a list of :data:`Group` s, one per Douglas-Peucker edge, in a frame
rotated so that the building's walls run along the axes (see :mod:`pipeline.vectorize.regularize`):

* an edge within the angle tolerance of the x axis is H, of the y axis V, else D
  (diagonal walls exist and are kept); consecutive H (or V) edges merge;
* every edge becomes a line: an H line at the length-weighted mean y of its support (the
  centroid of the raw staircase, which lies on the true wall on average), a V line at
  the mean x, a D line through its support centroid along its DP chord. Vertices are the
  intersections of consecutive lines, so H/V corners are exact right angles and a
  diagonal keeps its direction; where that intersection lies more than ``max_shift_m``
  from the DP vertex, the DP vertex projected onto the H/V line is used instead (no
  spikes from shallow diagonals);
* the shortest edge, if shorter than ``min_edge_m`` (diagonals: ``2 * min_edge_m``) or
  reversed, goes: a short diagonal between two parallel walls becomes a jog (an edge
  across them), anything else is dropped so that its neighbours merge or meet. Lines
  are snapped again until every edge is long enough;
* then, with ``corner_area_ratio``, the diagonal whose removal moves the least area goes
  while that area is under the ratio times the ring's area (a rounded or cut corner of a
  blob-like mask moves little; a real diagonal wall moves a lot), and lines are snapped again.

This is the only Python loop of the regularizer: each ring has its own small, ragged edge
list whose merges depend on the previous ones, which does not vectorize.
"""

from __future__ import annotations

import math

Point = tuple[float, float]
# One edge group: (class, support length, sum of length*x, sum of length*y, chord dx, chord dy,
# first vertex x, y, last vertex x, y), in the rotated frame.
Group = tuple[int, float, float, float, float, float, float, float, float, float]

H, V, D = 0, 1, 2
MIN_DIAGONAL_SIN = math.sin(math.radians(10.0))  # D/D lines closer than 10° meet at the DP vertex
DIAGONAL_EDGE_FACTOR = 2.0  # diagonal edges must be this many times min_edge_m long


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


def _ring_area(pts: list[Point]) -> float:
    """Unsigned shoelace area of a ring."""
    n = len(pts)
    return abs(sum(pts[i - 1][0] * pts[i][1] - pts[i][0] * pts[i - 1][1] for i in range(n))) / 2.0


def _corner_areas(groups: list[Group], pts: list[Point], max_shift_m: float) -> list[float]:
    """Per diagonal edge, the area (m²) its removal moves (``math.inf`` for H/V edges).

    Without the diagonal its neighbours' lines meet at a corner (:func:`_corner`): the
    triangle of the diagonal and that corner. Between two parallel walls it becomes a jog
    instead: the triangle |dx dy| / 2 of its chord.
    """
    n, out = len(groups), []
    for i, g in enumerate(groups):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % n]
        before, after = groups[i - 1], groups[(i + 1) % n]
        if g[0] != D:
            out.append(math.inf)
        elif before[0] == after[0] != D:
            out.append(abs((x1 - x0) * (y1 - y0)) / 2.0)
        else:
            cx, cy = _corner(before, after, max_shift_m)
            out.append(abs((x1 - x0) * (cy - y0) - (y1 - y0) * (cx - x0)) / 2.0)
    return out


def snap_ring(
    groups: list[Group], *, min_edge_m: float, max_shift_m: float, corner_area_ratio: float = 0.0
) -> list[Point] | None:
    """Vertices of one orthogonalized ring (rotated frame), or None when it collapses.

    When every edge is long enough, a diagonal still goes where removing it moves less than
    ``corner_area_ratio`` of the ring's area (:func:`_corner_areas`): a rounded or cut corner
    of a blob-like mask, not a diagonal wall.
    """
    groups = _merge_runs(groups)
    while len(groups) >= 3:
        n = len(groups)
        pts = [_corner(groups[i - 1], groups[i], max_shift_m) for i in range(n)]
        lengths = _signed_lengths(groups, pts)
        k = min(range(n), key=lengths.__getitem__)
        if lengths[k] >= min_edge_m:
            if corner_area_ratio <= 0 or n <= 4:
                return pts
            moved = _corner_areas(groups, pts, max_shift_m)
            k = min(range(n), key=moved.__getitem__)
            if moved[k] >= corner_area_ratio * _ring_area(pts):
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
