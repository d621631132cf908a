"""Evaluate pipeline outputs against ground truth: pixel, object and polygon metrics.

Inputs (a ``footprints segment`` folder and a label raster or vector file) are read by
:mod:`pipeline.evaluation.inputs`, which also refuses what cannot be scored. Pixels where either
side has no data are left out, and so are polygons whose point on surface falls on such
a pixel (a truth building where the imagery is missing is not a miss).

Object metrics follow SpaceNet: a prediction and a truth polygon match when their IoU
is at least 0.5, each polygon matches at most once, and polygons under ``min_area_m2``
(measured in metres, see :class:`pipeline.core.geo.MetricFrame`) are dropped on both sides
first. The one-to-one matching is *optimal*, not greedy: it maximises the number of
matches (then the summed IoU) with ``scipy.optimize.linear_sum_assignment``, solved
separately on each connected group of candidate pairs, so the cost stays near linear.
The same matching at IoU >= 0.25 gives ``object_iou25`` (small buildings, whose IoU
suffers most from a pixel of offset). The pairs matched at the main threshold are
scored by :mod:`pipeline.evaluation.polygon_metrics` (``polygon``: mean IoU, C-IoU, N-ratio, PoLiS,
max tangent angle error, rotation error), in metres.

Scenes are pooled (``overall``), and with sources also per source and as the macro
average over sources (:mod:`pipeline.evaluation.report`). Ratios with a zero denominator are
1.0 when there is nothing to find and nothing was found (tp = fp = fn = 0) and 0.0
otherwise, and undefined means are None, so the JSON never holds NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.core.errors import ConfigError, EvaluationInputError
from pipeline.core.geo import MetricFrame
from pipeline.core.raster import RasterGrid
from pipeline.evaluation import polygon_metrics
from pipeline.evaluation.error_kinds import classify_errors
from pipeline.evaluation.inputs import (
    Labels,
    Polygons,
    clean_polygons,
    extent_warning,
    in_valid,
    read_prediction,
    read_scene_name,
    read_truth,
)
from pipeline.evaluation.report import object_scores, pixel_scores, summarize_scenes

IOU_THRESHOLD = 0.5
#: The looser threshold at which object F1 is also reported (small buildings).
LOOSE_IOU_THRESHOLD = 0.25

__all__ = [
    "IOU_THRESHOLD",
    "LOOSE_IOU_THRESHOLD",
    "Objects",
    "candidate_ious",
    "candidate_pairs",
    "clean_polygons",
    "evaluate",
    "evaluate_scene",
    "match_one_to_one",
    "object_metrics",
    "object_scores",
    "pixel_metrics",
    "pixel_scores",
]


# --------------------------------------------------------------------------- metrics


def pixel_metrics(
    pred: NDArray[np.bool_], truth: NDArray[np.bool_], valid: NDArray[np.bool_] | None = None
) -> dict[str, float | int]:
    """Pixel tp/fp/fn, precision, recall and IoU over the ``valid`` pixels (all if None)."""
    if pred.shape != truth.shape or (valid is not None and valid.shape != pred.shape):
        raise ValueError(
            f"pixel_metrics: pred {pred.shape}, truth {truth.shape} and valid "
            f"{None if valid is None else valid.shape} must have one shape; bring them onto one grid"
        )
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if valid is not None:
        v = np.asarray(valid, dtype=bool)
        p, t = p & v, t & v
    tp = int(np.count_nonzero(p & t))
    return pixel_scores(tp=tp, fp=int(np.count_nonzero(p)) - tp, fn=int(np.count_nonzero(t)) - tp)


def candidate_pairs(
    pred: NDArray[np.object_], truth: NDArray[np.object_]
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]:
    """Every intersecting (prediction, truth) pair, found with an STRtree: indexes, intersection
    area and IoU."""
    if pred.size == 0 or truth.size == 0:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty, np.empty(0, dtype=np.float64), np.empty(0, dtype=np.float64)
    pi, ti = shapely.STRtree(truth).query(pred, predicate="intersects")
    inter = shapely.area(shapely.intersection(pred[pi], truth[ti]))
    union = shapely.area(pred)[pi] + shapely.area(truth)[ti] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return pi.astype(np.intp), ti.astype(np.intp), inter.astype(np.float64), iou.astype(np.float64)


def candidate_ious(
    pred: NDArray[np.object_], truth: NDArray[np.object_]
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """IoU of every intersecting (prediction, truth) pair (:func:`candidate_pairs` without areas)."""
    pi, ti, _, iou = candidate_pairs(pred, truth)
    return pi, ti, iou


def _solve_group(
    p: NDArray[np.intp], t: NDArray[np.intp], w: NDArray[np.float64]
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Most matches, then most summed IoU, inside one connected group of pairs."""
    rows, r = np.unique(p, return_inverse=True)
    cols, c = np.unique(t, return_inverse=True)
    big = float(min(rows.size, cols.size) + 1)
    weight = np.zeros((rows.size, cols.size))
    weight[r, c] = big + w
    ri, ci = linear_sum_assignment(weight, maximize=True)
    hit = weight[ri, ci] > 0
    return rows[ri[hit]], cols[ci[hit]]


def match_one_to_one(
    *,
    pred_idx: NDArray[np.intp],
    truth_idx: NDArray[np.intp],
    iou: NDArray[np.float64],
    iou_threshold: float = IOU_THRESHOLD,
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Optimal one-to-one matching of pairs with ``iou >= iou_threshold``.

    Returns the matched prediction and truth indexes. Pairs are split into connected
    groups of the bipartite graph; a group of one pair is a match as is, larger groups
    (overlapping polygons) are solved with ``linear_sum_assignment``.
    """
    ok = iou >= iou_threshold
    p, t, w = pred_idx[ok], truth_idx[ok], iou[ok]
    if p.size == 0:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp)
    up, pc = np.unique(p, return_inverse=True)
    ut, tc = np.unique(t, return_inverse=True)
    n = up.size + ut.size
    graph = coo_matrix((np.ones(p.size), (pc, tc + up.size)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    edge_group = component[pc]
    single = np.bincount(edge_group)[edge_group] == 1
    out_p, out_t = [p[single]], [t[single]]
    multi = np.flatnonzero(~single)
    multi = multi[np.argsort(edge_group[multi], kind="stable")]
    cuts = np.flatnonzero(np.diff(edge_group[multi])) + 1
    for group in np.split(multi, cuts) if multi.size else []:
        gp, gt = _solve_group(p[group], t[group], w[group])
        out_p.append(gp)
        out_t.append(gt)
    return np.concatenate(out_p).astype(np.intp), np.concatenate(out_t).astype(np.intp)


@dataclass(frozen=True)
class Objects:
    """Both sides' polygons in metres (cleaned, small ones dropped) and their candidate pairs."""

    pred: NDArray[np.object_]
    truth: NDArray[np.object_]
    pred_idx: NDArray[np.intp]
    truth_idx: NDArray[np.intp]
    inter: NDArray[np.float64]
    iou: NDArray[np.float64]

    @classmethod
    def prepare(
        cls, pred_polys: Polygons, truth_polys: Polygons, *, min_area_m2: float, frame: MetricFrame | None
    ) -> Objects:
        """``frame`` maps the polygons' CRS to metres; without it they must be metric already."""
        pred, truth = clean_polygons(pred_polys), clean_polygons(truth_polys)
        if frame is not None:
            pred, truth = frame.to_metric(pred), frame.to_metric(truth)
        pred = pred[shapely.area(pred) >= min_area_m2]
        truth = truth[shapely.area(truth) >= min_area_m2]
        return cls(pred, truth, *candidate_pairs(pred, truth))

    def match(self, iou_threshold: float) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        """Matched prediction and truth indexes at ``iou_threshold``."""
        return match_one_to_one(
            pred_idx=self.pred_idx, truth_idx=self.truth_idx, iou=self.iou, iou_threshold=iou_threshold
        )

    def scores(self, iou_threshold: float) -> dict[str, float | int]:
        tp = int(self.match(iou_threshold)[0].size)
        return object_scores(tp=tp, fp=int(self.pred.size) - tp, fn=int(self.truth.size) - tp)


def object_metrics(
    pred_polys: Polygons,
    truth_polys: Polygons,
    *,
    iou_threshold: float = IOU_THRESHOLD,
    min_area_m2: float = 8.0,
    frame: MetricFrame | None = None,
) -> dict[str, float | int]:
    """SpaceNet object tp/fp/fn, precision, recall and F1 with one-to-one IoU matching.

    ``frame`` maps the polygons' CRS to metres (areas and IoU are computed there);
    without it the polygons must already be in a metric CRS. Polygons under
    ``min_area_m2`` are ignored on both sides before matching.
    """
    objects = Objects.prepare(pred_polys, truth_polys, min_area_m2=min_area_m2, frame=frame)
    return objects.scores(iou_threshold)


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class SceneInputs:
    """An OUTDIR and its truth, read and cut to the pixels that have data on both sides."""

    grid: RasterGrid
    pred: Labels
    truth: Labels
    valid: NDArray[np.bool_]
    frame: MetricFrame

    def scored(self, polys: Polygons) -> NDArray[np.object_]:
        """Clean polygons whose point on surface lies where both sides have data."""
        polys = clean_polygons(polys)
        return polys[in_valid(polys, grid=self.grid, valid=self.valid)]


def read_scene(*, pred_dir: Path, truth_path: Path, truth_value: int | None = None) -> SceneInputs:
    """Read both sides; refuse a pair without a pixel that has data on both."""
    grid, pred = read_prediction(pred_dir)
    mask_path = str(pred_dir / "mask.tif")
    truth = read_truth(truth_path, grid=grid, value=truth_value, pred=mask_path)
    valid = pred.valid & truth.valid
    if not valid.any():
        raise EvaluationInputError(
            f"{truth_path}: no pixel has data both here and in the prediction {mask_path} (one side is "
            "nodata wherever they overlap), so nothing can be scored; pass the labels of the same scene"
        )
    return SceneInputs(grid, pred, truth, valid, MetricFrame.for_scene(grid.crs, grid.bounds))


def evaluate_scene(
    *,
    pred_dir: Path,
    truth_path: Path,
    min_area_m2: float = 8.0,
    truth_value: int | None = None,
    iou_threshold: float = IOU_THRESHOLD,
) -> dict[str, Any]:
    """Pixel, object and polygon metrics of one ``footprints segment`` output against its truth.

    Pixels and polygons (by their point on surface) where either side has no data are
    left out; a pair without a pixel that has data on both sides is refused. When a label
    raster's extent differs from the prediction's, ``warnings`` says which share was scored.
    """
    inputs = read_scene(pred_dir=pred_dir, truth_path=truth_path, truth_value=truth_value)
    scene, source = read_scene_name(pred_dir)
    objects = Objects.prepare(
        inputs.scored(inputs.pred.polygons), inputs.scored(inputs.truth.polygons), min_area_m2=min_area_m2,
        frame=inputs.frame,
    )  # fmt: skip
    mp, mt = objects.match(iou_threshold)
    warning = extent_warning(truth_path, str(pred_dir / "mask.tif"), inputs.truth.shares)
    return {
        "scene": scene,
        "pred": str(pred_dir),
        "truth": str(truth_path),
        "input": source,
        "extent": {"pred_share": inputs.truth.shares[0], "truth_share": inputs.truth.shares[1]},
        "warnings": [] if warning is None else [warning],
        "pixel": pixel_metrics(inputs.pred.mask, inputs.truth.mask, inputs.valid),
        "object": objects.scores(iou_threshold),
        "object_iou25": objects.scores(LOOSE_IOU_THRESHOLD),
        "polygon": polygon_metrics.summarize(objects.pred[mp], objects.truth[mt]),
        "errors": classify_errors(
            objects.pred, objects.truth, pred_idx=objects.pred_idx, truth_idx=objects.truth_idx,
            inter=objects.inter, iou=objects.iou, matched_pred=mp, matched_truth=mt,
        ),
    }  # fmt: skip


@dataclass(frozen=True)
class CandidateMatches:
    """Which candidate polygons were scored, which of those match a true building, and how
    many true buildings were scored."""

    scored: NDArray[np.bool_]
    matched: NDArray[np.bool_]
    n_truth: int


def match_candidates(
    *,
    pred_dir: Path,
    truth_path: Path,
    polygons: Polygons,
    min_area_m2: float = 8.0,
    iou_threshold: float = IOU_THRESHOLD,
) -> CandidateMatches:
    """Match ``polygons`` (scene CRS, e.g. vectorized without the confidence filter) against
    the scene's truth exactly as :func:`evaluate_scene` matches the delivered buildings."""
    inputs = read_scene(pred_dir=pred_dir, truth_path=truth_path)
    polys = np.asarray(polygons, dtype=object).reshape(-1)
    scored = ~shapely.is_empty(polys) & ~shapely.is_missing(polys)
    scored[scored] = in_valid(polys[scored], grid=inputs.grid, valid=inputs.valid)
    scored[scored] = shapely.area(inputs.frame.to_metric(polys[scored])) >= min_area_m2
    objects = Objects.prepare(
        polys[scored], inputs.scored(inputs.truth.polygons), min_area_m2=min_area_m2, frame=inputs.frame
    )
    if objects.pred.size != int(scored.sum()):
        raise ValueError("match_candidates: polygons were dropped by cleaning; pass valid polygons")
    matched = np.zeros(objects.pred.size, dtype=bool)
    matched[objects.match(iou_threshold)[0]] = True
    return CandidateMatches(scored=scored, matched=matched, n_truth=int(objects.truth.size))


def confidence_matches(
    *,
    pred_dir: Path,
    truth_path: Path,
    polygons: Polygons,
    confidence: NDArray[np.float64],
    min_area_m2: float = 8.0,
    iou_threshold: float = IOU_THRESHOLD,
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """The confidences and match flags of the scored ``polygons`` (:func:`match_candidates`)."""
    m = match_candidates(
        pred_dir=pred_dir, truth_path=truth_path, polygons=polygons, min_area_m2=min_area_m2,
        iou_threshold=iou_threshold,
    )  # fmt: skip
    return np.asarray(confidence, dtype=np.float64).reshape(-1)[m.scored], m.matched


def _check_params(
    pairs: Sequence[tuple[Path, Path]],
    sources: Sequence[str] | None,
    min_area_m2: float,
    iou_threshold: float,
) -> None:
    if not pairs:
        raise ConfigError("evaluate: no scenes given; pass --pred OUTDIR --truth LABELS at least once")
    if sources is not None and len(sources) != len(pairs):
        raise ConfigError(
            f"evaluate: {len(sources)} sources for {len(pairs)} scenes; give one --source per --pred, or none"
        )
    if min_area_m2 < 0:
        raise ConfigError(f"evaluate: min_area_m2={min_area_m2} is negative; give 0 or more square metres")
    if not 0.0 < iou_threshold <= 1.0:
        raise ConfigError(f"evaluate: iou_threshold={iou_threshold} must lie in (0, 1]; SpaceNet uses 0.5")


def evaluate(
    *,
    pairs: Sequence[tuple[Path, Path]],
    sources: Sequence[str] | None = None,
    min_area_m2: float = 8.0,
    truth_value: int | None = None,
    iou_threshold: float = IOU_THRESHOLD,
) -> dict[str, Any]:
    """Evaluate (OUTDIR, LABELS) pairs: per-scene results and a pooled ``overall`` entry.

    With ``sources`` (one name per pair) each scene carries its ``source`` and the report
    adds ``sources`` (pooled per source) and ``macro`` (each source weighs the same).
    """
    _check_params(pairs, sources, min_area_m2, iou_threshold)
    scenes = [
        evaluate_scene(
            pred_dir=Path(pred),
            truth_path=Path(truth),
            min_area_m2=min_area_m2,
            truth_value=truth_value,
            iou_threshold=iou_threshold,
        )
        for pred, truth in pairs
    ]
    for scene, source in zip(scenes, sources or [], strict=False):
        scene["source"] = str(source)
    params = {
        "min_area_m2": min_area_m2,
        "iou_threshold": iou_threshold,
        "loose_iou_threshold": LOOSE_IOU_THRESHOLD,
        "truth_value": truth_value,
        "matching": "optimal one-to-one (linear_sum_assignment)",
        "tangent_spacing_m": polygon_metrics.TANGENT_SPACING_M,
    }
    return {"params": params, **summarize_scenes(scenes, per_source=sources is not None), "scenes": scenes}
