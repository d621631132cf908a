"""Squaring building outlines (metric CRS) around their dominant orientation.

Pixel polygons are staircases. :func:`regularize` turns each exterior ring into a
building-like outline, in metres:

* Douglas-Peucker (``simplify_m``) gives the main edges; each edge is *supported* by the
  raw pixel edges between its two end vertices (DP keeps a subset of the raw vertices).
* The orientation theta is the first side of the outline's minimum rotated rectangle
  (``shapely.oriented_envelope``, the estimator of the rotation error metric), or with
  ``orientation="walls"`` the length-weighted circular mean (angles x4) of the
  directions fitted to each edge's support (principal axis of its pixel edges,
  :func:`_fitted_orientation`), which are within a fraction of a degree where DP chords between
  staircase corners are 1-2 degrees off. The envelope is the default: measured, it is the
  closer to the true walls (DESIGN.md, "Choosing the regularizer").
* Building-shaped priors (:mod:`pipeline.vectorize.priors`, optional): neighbours within
  ``group_m`` whose orientations agree within a tolerance share one orientation, and an
  outline whose moment-fitted rectangle has IoU >= ``rectangle_iou`` with it becomes that
  rectangle.
* Each ring, rotated by -theta about its bounding-box centre so that its walls run along
  the axes, is squared by :func:`pipeline.vectorize.squaring.snap_ring` and rotated back;
  with ``priors.corner_area_ratio`` a diagonal whose removal moves less than that share of
  the building's area goes too (rounded corners of a blob-like mask; issue 12).

The result (simplified holes kept) is repaired with ``make_valid`` and its largest
polygon kept; it falls back to the simplified input when it is empty, changed the area
by more than ``max_area_change`` or has IoU < 0.5 with the simplified input.

Orientation, rotation, edge support (``np.bincount`` over all rings at once), assembly
and the validity checks work on whole arrays; only :func:`~pipeline.vectorize.squaring.snap_ring`
loops, once per polygon.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import shapely
from numpy.typing import NDArray

from pipeline.vectorize.measure import as_geoms, orientation, polygon_iou
from pipeline.vectorize.overlaps import POLYGON, polygonal_part
from pipeline.vectorize.priors import Priors, circular_mean, moment_rectangles, shared_orientations
from pipeline.vectorize.rings import CHUNK, box_centres, in_chunks, next_in_ring, open_rings, turn
from pipeline.vectorize.squaring import D, Group, H, Point, V, snap_ring

Geoms = NDArray[np.object_]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
Mask = NDArray[np.bool_]

MIN_IOU = 0.5
MAX_SHIFT_FACTOR = 2.0  # a corner with a diagonal moves at most this many DP tolerances
COLLINEAR_M = 1e-6  # vertices this close to the line of their neighbours are dropped
NO_PRIORS = Priors()


# --------------------------------------------------------------------------- edge support


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
    nxt = next_in_ring(s_idx, s_starts, s_counts)
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

    A circular mean mod 90° (angles x4, weighted by chord length) in which each DP edge
    contributes the direction fitted to its raw pixel edges, not its chord between two
    staircase corners (about 1.5° off on a 10 m wall at 0.3 m pixels).
    """
    w = np.maximum(mom[0], 1e-12)
    cxx = mom[3] - mom[1] ** 2 / w
    cyy = mom[4] - mom[2] ** 2 / w
    cxy = mom[5] - mom[1] * mom[2] / w
    principal = np.arctan2(2.0 * cxy, cxx - cyy) / 2.0  # direction of each edge's support
    return circular_mean(principal, chord, s_idx, n)


def _classify(d: F64, tolerance_deg: float) -> I64:
    """H, V or D per chord (rotated frame) by its angle to the axes."""
    angle = np.degrees(np.arctan2(np.abs(d[:, 1]), np.abs(d[:, 0])))
    cls = np.full(d.shape[0], D, dtype=np.int64)
    cls[angle <= tolerance_deg] = H
    cls[angle >= 90.0 - tolerance_deg] = V
    return cls


# --------------------------------------------------------------------------- edge tables


@dataclass(frozen=True)
class EdgeTable:
    """The DP edges of every ring, relative to each polygon's origin, with their raw support.

    ``mom`` holds the support's line-mass moments per edge (:func:`_support_moments`),
    ``idx``/``starts``/``counts`` the polygon of each DP vertex and each ring's slice,
    ``ok`` the polygons whose DP vertices were all found on the raw ring, ``theta`` the
    fitted orientation (radians).
    """

    mom: F64
    rel: F64
    chord: F64
    idx: I64
    starts: I64
    counts: I64
    ok: Mask
    theta: F64


def edge_table(raw: Geoms, simple: Geoms, origin: F64) -> EdgeTable:
    """DP edges of every exterior ring with their support and the fitted orientation."""
    n = raw.shape[0]
    raw_xy, raw_idx, raw_starts, raw_counts = open_rings(shapely.get_exterior_ring(raw))
    s_xy, s_idx, s_starts, s_counts = open_rings(shapely.get_exterior_ring(simple))
    pos = _match_vertices(raw_xy, raw_idx, s_xy, s_idx)
    ok = _cyclic_ok(pos, s_idx, s_starts, s_counts, n)
    edge = _support_edge(pos, raw_idx, raw_starts, ok)
    raw_nxt = next_in_ring(raw_idx, raw_starts, raw_counts)
    mom = _support_moments(raw_xy - origin[raw_idx], raw_nxt, edge, s_idx.shape[0])
    ok &= np.bincount(s_idx[mom[0] <= 0], minlength=n) == 0
    s_rel = s_xy - origin[s_idx]
    chord = s_rel[next_in_ring(s_idx, s_starts, s_counts)] - s_rel
    theta = _fitted_orientation(mom, np.hypot(chord[:, 0], chord[:, 1]), s_idx, n)
    return EdgeTable(mom, s_rel, chord, s_idx, s_starts, s_counts, ok, theta)


def _groups(table: EdgeTable, theta: F64, tolerance_deg: float) -> list[Group]:
    """One :data:`~pipeline.vectorize.squaring.Group` per DP edge, in the frame rotated by -theta."""
    s_r, d = turn(table.rel, table.idx, theta), turn(table.chord, table.idx, theta)
    w = table.mom[0]
    centre = turn(np.column_stack([table.mom[1], table.mom[2]]), table.idx, theta)  # sums turn too
    cls = _classify(d, tolerance_deg)
    end = s_r + d
    cols = (cls, w, centre[:, 0], centre[:, 1], d[:, 0], d[:, 1], s_r[:, 0], s_r[:, 1], end[:, 0], end[:, 1])
    return list(zip(*(c.tolist() for c in cols), strict=True))


def _orientations(raw: Geoms, table: EdgeTable, priors: Priors) -> F64:
    """Each polygon's orientation (radians): its minimum rotated rectangle's
    (``priors.orientation == "envelope"``) or the one fitted to its walls, shared between
    neighbours when ``priors.group_m`` > 0."""
    theta = table.theta
    if priors.orientation == "envelope":
        envelope = np.radians(orientation(raw))
        theta = np.where(np.isfinite(envelope), envelope, theta)
    if priors.group_m <= 0:
        return theta
    length = np.hypot(table.chord[:, 0], table.chord[:, 1])
    weight = np.asarray(np.bincount(table.idx, length, minlength=raw.shape[0]), dtype=np.float64)
    return shared_orientations(
        raw, theta, weight=weight, ok=table.ok, distance_m=priors.group_m,
        tolerance_deg=priors.group_tolerance_deg,
    )  # fmt: skip


def _orthogonal_shells(
    raw: Geoms, simple: Geoms, *, angle_tolerance_deg: float, min_edge_m: float, max_shift_m: float,
    priors: Priors,
) -> tuple[Geoms, Mask, F64]:  # fmt: skip
    """Squared exterior rings in the metric frame, which polygons got one, and the orientations."""
    n = raw.shape[0]
    origin = box_centres(simple)
    table = edge_table(raw, simple, origin)
    theta = _orientations(raw, table, priors)
    groups, ok = _groups(table, theta, angle_tolerance_deg), table.ok.copy()
    xs: list[Point] = []
    ring_of: list[int] = []
    # Python loop per polygon: each ring's edge list is ragged and its merges are sequential.
    for i in np.flatnonzero(ok).tolist():
        s = int(table.starts[i])
        pts = snap_ring(
            groups[s : s + int(table.counts[i])], min_edge_m=min_edge_m, max_shift_m=max_shift_m,
            corner_area_ratio=priors.corner_area_ratio,
        )  # fmt: skip
        if pts is None:
            ok[i] = False
            continue
        xs.extend(pts)
        ring_of.extend([i] * len(pts))
    shells = np.full(n, None, dtype=object)
    if xs:
        idx = np.asarray(ring_of, dtype=np.int64)
        xy = turn(np.asarray(xs, dtype=np.float64), idx, theta, back=True) + origin[idx]
        done = np.flatnonzero(ok)
        shells[done] = shapely.linearrings(xy, indices=np.searchsorted(done, idx))
    return shells, ok, np.where(table.ok, theta, np.nan)


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


def _checked(raw: Geoms, simple: Geoms, shells: Geoms, made: Mask, *, max_area_change: float) -> tuple[
    I64, Geoms
]:  # fmt: skip
    """Indexes of the polygons that square well, and their squared outlines (holes kept)."""
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


def _rectangles(raw: Geoms, theta: F64, min_iou: float) -> tuple[I64, Geoms]:
    """Polygons without holes whose moment-fitted rectangle (:func:`moment_rectangles`) fits them."""
    cand = np.flatnonzero(np.isfinite(theta) & (shapely.get_num_interior_rings(raw) == 0))
    if min_iou <= 0 or cand.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=object)
    rects = moment_rectangles(raw[cand], theta[cand])
    fits = polygon_iou(rects, raw[cand]) >= min_iou
    return cand[fits], rects[fits]


def regularize(
    geoms: Geoms,
    *,
    angle_tolerance_deg: float = 15.0,
    min_edge_m: float = 1.0,
    simplify_m: float = 0.5,
    max_area_change: float = 0.25,
    priors: Priors = NO_PRIORS,
) -> Geoms:
    """Square building polygons (metric CRS) around their dominant orientation.

    Returns one valid polygonal geometry per input, aligned with ``geoms``: the moment-fitted
    rectangle where ``priors.rectangle_iou`` accepts it, else the orthogonalized outline, or
    where squaring failed the checks (empty, area changed by more than ``max_area_change``,
    IoU < 0.5 with the simplified input) the input simplified with ``simplify_m``
    (topology-preserving, repaired). Multi-polygons are only simplified.
    """
    geoms = as_geoms(geoms)
    if geoms.size == 0:
        return geoms
    if priors.group_m <= 0 and geoms.size > CHUNK:  # each building on its own: bounded passes
        one = partial(
            regularize, angle_tolerance_deg=angle_tolerance_deg, min_edge_m=min_edge_m,
            simplify_m=simplify_m, max_area_change=max_area_change, priors=priors,
        )  # fmt: skip
        return in_chunks(one, geoms, CHUNK)
    simple = _dp(geoms, simplify_m)
    cand = np.flatnonzero(
        (shapely.get_type_id(geoms) == POLYGON)
        & (shapely.get_type_id(simple) == POLYGON)
        & (shapely.get_num_coordinates(simple) >= 4)
    )
    shells, made, theta = _orthogonal_shells(
        geoms[cand], simple[cand], angle_tolerance_deg=angle_tolerance_deg, min_edge_m=min_edge_m,
        max_shift_m=MAX_SHIFT_FACTOR * simplify_m, priors=priors,
    )  # fmt: skip
    ok, squared = _checked(geoms[cand], simple[cand], shells, made, max_area_change=max_area_change)
    rect, rects = _rectangles(geoms[cand], theta, priors.rectangle_iou)
    out = np.empty(geoms.shape[0], dtype=object)
    out[cand[ok]] = squared
    out[cand[rect]] = rects
    rest = np.ones(geoms.shape[0], dtype=bool)
    rest[cand[ok]] = rest[cand[rect]] = False
    fallback = shapely.simplify(geoms[rest], simplify_m, preserve_topology=True)
    out[rest] = shapely.make_valid(fallback, method="structure", keep_collapsed=False)
    return out
