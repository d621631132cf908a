"""Polygon shape metrics of matched building pairs (see DESIGN.md, "Polygon metrics").

Every function takes two aligned arrays of polygons in a metric CRS (metres): ``pred[i]``
was matched to ``truth[i]``. A polygon's *vertices* are the vertices of all its rings
(exterior and holes, every part of a multi-polygon), each ring without its closing
duplicate; collinear vertices count as present (they are vertices of the polygon as
delivered). The metrics, per pair:

* **IoU**: area of the intersection over the area of the union.
* **C-IoU** (PolyWorld, Zorzi et al. CVPR 2022; HiSup, Xu et al. 2023):
  ``IoU * (1 - |N_pred - N_true| / (N_pred + N_true))`` with N the vertex counts.
* **N-ratio** (HiSup): summed over pairs, ``sum(N_pred) / sum(N_true)``.
* **PoLiS** (Avbelj et al. 2015, IEEE GRSL), metres: the mean distance from each vertex
  of ``pred`` to the boundary of ``truth`` and the mean distance from each vertex of
  ``truth`` to the boundary of ``pred``, summed and halved.
* **Max tangent angle error** (Girard et al. CVPR 2021, Frame Field Learning), degrees:
  see :func:`max_tangent_error`.
* **Rotation error**, degrees: see :func:`rotation_error`.

:func:`summarize` turns the per-pair values into a scene's figures and :func:`pool` pools
figures over scenes exactly (means weighted by their pair counts, vertex sums added).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray

from pipeline.vectorize.measure import as_geoms, orientation, polygon_iou, shift

Geoms = NDArray[np.object_]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

#: Length of the pieces the predicted boundary is cut into for the tangent error.
TANGENT_SPACING_M = 0.5
#: A projected piece lies on the true boundary when its midpoint is this close to it.
ON_BOUNDARY_M = 1e-6
#: Girard's ``max_stretch``: pieces stretched or shrunk more by the projection are left out.
MAX_STRETCH = 2.0
#: Figures that are means over pairs, and the count each is averaged over.
MEANS = {
    "mean_iou": "pairs",
    "c_iou": "pairs",
    "polis_m": "pairs",
    "max_tangent_deg": "tangent_pairs",
    "rotation_deg": "pairs",
}


def _rings(geoms: Geoms) -> tuple[Geoms, I64]:
    """Every ring (exterior and holes, of every part) and the index of its polygon."""
    parts, owner = shapely.get_parts(geoms, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    return rings, owner[ring_part].astype(np.int64)


def vertices(geoms: Geoms | Sequence[Any]) -> tuple[F64, I64]:
    """Vertex coordinates of every ring without its closing duplicate, and their polygon."""
    rings, owner = _rings(as_geoms(geoms))
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    closing = np.r_[ring[1:] != ring[:-1], True] if ring.size else np.zeros(0, dtype=bool)
    return xy[~closing], owner[ring[~closing]]


def vertex_counts(geoms: Geoms | Sequence[Any]) -> I64:
    """Vertices per polygon: all rings, closing duplicates left out, collinear ones counted."""
    geoms = as_geoms(geoms)
    _, owner = vertices(geoms)
    return np.bincount(owner, minlength=geoms.shape[0]).astype(np.int64)


def complexity_iou(iou: F64, n_pred: I64, n_true: I64) -> F64:
    """C-IoU: ``iou * (1 - |n_pred - n_true| / (n_pred + n_true))`` (``iou`` where both are 0)."""
    total = (n_pred + n_true).astype(np.float64)
    diff = np.abs(n_pred - n_true).astype(np.float64)
    rel = np.divide(diff, total, out=np.zeros_like(total), where=total > 0)
    return np.asarray(iou * (1.0 - rel), dtype=np.float64)


def _mean_vertex_distance(src: Geoms, dst: Geoms) -> F64:
    """Per pair: mean distance from the vertices of ``src[i]`` to the boundary of ``dst[i]``."""
    xy, owner = vertices(src)
    dist = shapely.distance(shapely.points(xy), shapely.boundary(dst)[owner])
    count = np.bincount(owner, minlength=src.shape[0])
    total = np.bincount(owner, dist, minlength=src.shape[0])
    return np.asarray(np.divide(total, count, out=np.full(src.shape[0], np.nan), where=count > 0))


def polis(pred: Geoms | Sequence[Any], truth: Geoms | Sequence[Any]) -> F64:
    """PoLiS distance per pair (Avbelj et al. 2015), in the polygons' units.

    ``p(A, B) = 1/(2q) sum_a d(a, dB) + 1/(2r) sum_b d(b, dA)``: ``a`` runs over the ``q``
    vertices of A, ``b`` over the ``r`` vertices of B, and ``d(x, dY)`` is the distance
    from ``x`` to the nearest point of Y's boundary (all rings).
    """
    a, b = as_geoms(pred), as_geoms(truth)
    return np.asarray(0.5 * (_mean_vertex_distance(a, b) + _mean_vertex_distance(b, a)))


def _local(pred: Geoms, truth: Geoms) -> tuple[Geoms, Geoms]:
    """Both polygons of each pair moved so that the true polygon's lower-left corner is 0, 0.

    GEOS's projections and rectangles lose digits at UTM coordinates (1e5-1e6 m).
    """
    origin = shapely.bounds(truth)[:, :2]
    return shift(pred, origin), shift(truth, origin)


def _samples(geoms: Geoms, spacing: float) -> tuple[F64, I64, I64]:
    """Every ring edge cut into ``max(1, round(length / spacing))`` equal pieces.

    Returns the pieces' start points, the index of the next start point of the same ring
    (where each piece ends; the last wraps to the first) and the polygon of each.
    """
    rings, owner = _rings(geoms)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    same = ring[1:] == ring[:-1]
    p, q, edge_ring = xy[:-1][same], xy[1:][same], ring[1:][same]
    keep = np.hypot(*(q - p).T) > 0
    p, q, edge_ring = p[keep], q[keep], edge_ring[keep]
    n = np.maximum(1, np.rint(np.hypot(*(q - p).T) / spacing)).astype(np.int64)
    edge = np.repeat(np.arange(p.shape[0]), n)
    j = np.arange(edge.shape[0]) - np.repeat(np.cumsum(n) - n, n)
    start = p[edge] + (j / n[edge])[:, None] * (q - p)[edge]
    sample_ring = edge_ring[edge]
    first = np.r_[True, sample_ring[1:] != sample_ring[:-1]] if edge.size else np.zeros(0, bool)
    last = np.r_[first[1:], True] if edge.size else first
    nxt = np.arange(1, edge.shape[0] + 1)
    nxt[last] = np.flatnonzero(first)
    return start, nxt.astype(np.int64), owner[sample_ring]


def _nearest(xy: F64, boundaries: Geoms) -> F64:
    """The nearest point of ``boundaries[i]`` to ``xy[i]``."""
    lines = shapely.shortest_line(shapely.points(xy), boundaries)
    return np.asarray(shapely.get_coordinates(lines).reshape(-1, 2, 2)[:, 1])


def max_tangent_error(
    pred: Geoms | Sequence[Any], truth: Geoms | Sequence[Any], *, spacing_m: float = TANGENT_SPACING_M
) -> F64:
    """Max tangent angle error per pair, in degrees in [0, 90]; NaN where nothing is measurable.

    After Girard et al. (CVPR 2021), the predicted boundary against the true one, one way:

    1. Every edge of every ring of ``pred[i]`` is cut into ``max(1, round(length /
       spacing_m))`` equal pieces.
    2. Both ends of a piece are projected onto their nearest points on the boundary of
       ``truth[i]`` (all rings); the *chord* joins the two projections.
    3. A piece is *measurable* when

       * the chord lies on the true boundary: it is longer than ``ON_BOUNDARY_M`` and its
         midpoint lies within ``ON_BOUNDARY_M`` of the boundary, so both ends project onto
         one straight stretch and the chord's direction is the true boundary's tangent at
         the nearest points (pieces whose ends project on either side of a true corner,
         where that tangent is undefined, are left out); and
       * neither the piece nor the chord is more than ``MAX_STRETCH`` (2) times longer than
         the other, Girard's ``max_stretch``: near a corner, the end of a predicted wall is
         nearer the *other* true wall and projects onto it almost perpendicularly.

       The chord of a measurable piece is its orthogonal projection onto a true edge
       (unless an end is clamped at the edge's end), so measurable errors lie below 60
       degrees (cos 60° = 1/2), as in Girard's evaluation.
    4. A piece's error is the angle between the piece and its chord as undirected lines
       (ring orientation does not matter), in [0, 90] degrees; the pair's value is the
       largest error over its measurable pieces. A square rotated by 5° scores exactly 5°.

    Each pair is moved to its own origin first, so projections are exact to well under a
    micrometre at UTM coordinates.
    """
    a_geoms, b_geoms = _local(as_geoms(pred), as_geoms(truth))
    out = np.full(a_geoms.shape[0], np.nan)
    a, nxt, owner = _samples(a_geoms, spacing_m)
    if owner.size == 0:
        return out
    bounds = shapely.boundary(b_geoms)[owner]
    pa = _nearest(a, bounds)
    piece, chord = a[nxt] - a, pa[nxt] - pa
    length, chord_length = np.hypot(*piece.T), np.hypot(*chord.T)
    ok = (chord_length > ON_BOUNDARY_M) & (length < MAX_STRETCH * chord_length)
    ok &= chord_length < MAX_STRETCH * length
    idx = np.flatnonzero(ok)
    mid = shapely.points(0.5 * (pa[idx] + pa[nxt[idx]]))
    idx = idx[shapely.distance(mid, bounds[idx]) <= ON_BOUNDARY_M]
    cross = np.abs(piece[idx, 0] * chord[idx, 1] - piece[idx, 1] * chord[idx, 0])
    dot = np.abs(np.einsum("ij,ij->i", piece[idx], chord[idx]))
    np.fmax.at(out, owner[idx], np.degrees(np.arctan2(cross, dot)))
    return out


def rotation_error(pred: Geoms | Sequence[Any], truth: Geoms | Sequence[Any]) -> F64:
    """Difference of dominant orientations (:func:`orientation`) mod 90, folded into [0, 45] degrees."""
    diff = np.mod(np.abs(orientation(pred) - orientation(truth)), 90.0)
    return np.asarray(np.minimum(diff, 90.0 - diff))


def _mean(values: F64) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def summarize(pred: Geoms | Sequence[Any], truth: Geoms | Sequence[Any]) -> dict[str, float | int | None]:
    """Shape figures of matched pairs (metric CRS): means over pairs, None when there is none."""
    a, b = _local(as_geoms(pred), as_geoms(truth))
    n_pred, n_true = vertex_counts(a), vertex_counts(b)
    iou = polygon_iou(a, b)
    tangent = max_tangent_error(a, b)
    true_vertices = int(n_true.sum())
    return {
        "pairs": int(a.shape[0]),
        "mean_iou": _mean(iou),
        "c_iou": _mean(complexity_iou(iou, n_pred, n_true)),
        "n_ratio": float(n_pred.sum()) / true_vertices if true_vertices else None,
        "pred_vertices": int(n_pred.sum()),
        "true_vertices": true_vertices,
        "polis_m": _mean(polis(a, b)),
        "max_tangent_deg": _mean(tangent),
        "tangent_pairs": int(np.isfinite(tangent).sum()),
        "rotation_deg": _mean(rotation_error(a, b)),
    }


def _weighted(entries: Sequence[dict[str, Any]], key: str, weight: str) -> float | None:
    pairs = [(float(e[key]), int(e[weight])) for e in entries if e[key] is not None and int(e[weight]) > 0]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def pool(entries: Sequence[dict[str, Any]]) -> dict[str, float | int | None]:
    """Figures of several :func:`summarize` results as if their pairs were one set."""
    counts = ("pairs", "pred_vertices", "true_vertices", "tangent_pairs")
    total = {key: sum(int(e[key]) for e in entries) for key in counts}
    out: dict[str, float | int | None] = {"pairs": total["pairs"]}
    out.update({key: _weighted(entries, key, MEANS[key]) for key in ("mean_iou", "c_iou")})
    out["n_ratio"] = total["pred_vertices"] / total["true_vertices"] if total["true_vertices"] else None
    out.update({"pred_vertices": total["pred_vertices"], "true_vertices": total["true_vertices"]})
    out.update({key: _weighted(entries, key, MEANS[key]) for key in ("polis_m", "max_tangent_deg")})
    out["tangent_pairs"] = total["tangent_pairs"]
    out["rotation_deg"] = _weighted(entries, "rotation_deg", MEANS["rotation_deg"])
    return out


def macro(entries: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Unweighted mean of each figure over entries (sources) that have it."""
    out: dict[str, float | None] = {}
    for key in ("mean_iou", "c_iou", "n_ratio", "polis_m", "max_tangent_deg", "rotation_deg"):
        values = [float(e[key]) for e in entries if e.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out
