"""Object errors by kind: every unmatched building is a merge, a split, an outline or a miss.

Object F1 counts errors; separating touching buildings needs to know which errors they are.
Each truth building without a match at IoU 0.5 (a false negative) and each unmatched
prediction (a false positive) gets exactly one kind, the first that applies, from how much of
each polygon the other side covers (``cover``: intersection over the polygon's own area):

========  ===================================================  =========================================
kind      truth building (false negative)                       prediction (false positive)
========  ===================================================  =========================================
merge     a prediction covers half of it and half of another    it covers half of two or more truths
          truth building too (neighbours fused into one blob)
split     two or more predictions lie mostly inside it          it lies mostly inside a truth building
                                                                that holds another such prediction
outline   a prediction overlaps it at IoU >= 0.1, not enough    it overlaps a truth at IoU >= 0.1
miss      nothing of the above: not found                       ``false_positive``: nothing there
========  ===================================================  =========================================

The counts of each side add up to its FN or FP count.
"""

from __future__ import annotations

import numpy as np
import shapely
from numpy.typing import NDArray

__all__ = ["KINDS_PRED", "KINDS_TRUTH", "classify_errors"]

COVER = 0.5
OVERLAP_IOU = 0.1
KINDS_TRUTH = ("merge", "split", "outline", "miss")
KINDS_PRED = ("merge", "split", "outline", "false_positive")


def _first_kind(
    flags: list[NDArray[np.bool_]], names: tuple[str, ...], rows: NDArray[np.intp]
) -> dict[str, int]:
    """Count ``rows`` by the first flag that holds (the last name takes the rest)."""
    left = np.zeros(flags[0].shape, bool)
    left[rows] = True
    out: dict[str, int] = {}
    for name, flag in zip(names[:-1], flags, strict=True):
        hit = left & flag
        out[name] = int(np.count_nonzero(hit))
        left &= ~hit
    out[names[-1]] = int(np.count_nonzero(left))
    return out


def classify_errors(
    pred: NDArray[np.object_],
    truth: NDArray[np.object_],
    *,
    pred_idx: NDArray[np.intp],
    truth_idx: NDArray[np.intp],
    inter: NDArray[np.float64],
    iou: NDArray[np.float64],
    matched_pred: NDArray[np.intp],
    matched_truth: NDArray[np.intp],
) -> dict[str, dict[str, int]]:
    """Unmatched truths and predictions by kind (see the module docstring).

    ``pred_idx``, ``truth_idx``, ``inter`` (intersection area) and ``iou`` are every intersecting
    pair (as :func:`pipeline.evaluation.evaluate.candidate_pairs` gives them); ``matched_*`` the one-to-one
    matches.
    """
    n_pred, n_truth = pred.size, truth.size
    cover_truth = np.divide(inter, shapely.area(truth)[truth_idx], out=np.zeros_like(iou), where=iou > 0)
    cover_pred = np.divide(inter, shapely.area(pred)[pred_idx], out=np.zeros_like(iou), where=iou > 0)
    covers = cover_truth >= COVER  # the prediction covers half of the truth building
    inside = cover_pred >= COVER  # the prediction lies mostly inside the truth building
    truths_covered = np.bincount(pred_idx[covers], minlength=n_pred)
    preds_inside = np.bincount(truth_idx[inside], minlength=n_truth)
    overlap = iou >= OVERLAP_IOU

    def truth_flag(pairs: NDArray[np.bool_]) -> NDArray[np.bool_]:
        return np.bincount(truth_idx[pairs], minlength=n_truth) > 0

    def pred_flag(pairs: NDArray[np.bool_]) -> NDArray[np.bool_]:
        return np.bincount(pred_idx[pairs], minlength=n_pred) > 0

    fused = covers & (truths_covered[pred_idx] >= 2)
    shared = inside & (preds_inside[truth_idx] >= 2)
    missed_truth = np.setdiff1d(np.arange(n_truth), matched_truth).astype(np.intp)
    extra_pred = np.setdiff1d(np.arange(n_pred), matched_pred).astype(np.intp)
    truth_kinds = _first_kind(
        [truth_flag(fused), preds_inside >= 2, truth_flag(overlap)], KINDS_TRUTH, missed_truth
    )
    pred_kinds = _first_kind(
        [truths_covered >= 2, pred_flag(shared), pred_flag(overlap)], KINDS_PRED, extra_pred
    )
    return {"truth": truth_kinds, "pred": pred_kinds}
