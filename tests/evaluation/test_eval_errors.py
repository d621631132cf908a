"""Unmatched buildings by kind: merge, split, outline, miss / false positive (exact hand-made cases)."""

from __future__ import annotations

import numpy as np
import shapely

from pipeline.evaluation.error_kinds import classify_errors
from pipeline.evaluation.evaluate import candidate_pairs, match_one_to_one
from pipeline.evaluation.report import pool


def _classify(pred: list[shapely.Polygon], truth: list[shapely.Polygon]) -> dict[str, dict[str, int]]:
    p, t = np.array(pred, dtype=object), np.array(truth, dtype=object)
    pi, ti, inter, iou = candidate_pairs(p, t)
    mp, mt = match_one_to_one(pred_idx=pi, truth_idx=ti, iou=iou)
    return classify_errors(
        p, t, pred_idx=pi, truth_idx=ti, inter=inter, iou=iou, matched_pred=mp, matched_truth=mt
    )


def test_every_unmatched_building_gets_one_kind() -> None:
    box = shapely.box
    truth = [
        box(0, 0, 10, 10), box(11, 0, 21, 10),  # two neighbours ...
        box(100, 0, 130, 10),  # one long building ...
        box(200, 0, 210, 10),  # one building ...
        box(300, 0, 310, 10),  # one building nobody found
        box(500, 0, 510, 10),  # one building found well
    ]  # fmt: skip
    pred = [
        box(0, 0, 21, 10),  # ... fused into one blob: IoU 100/210 with each, covers all of both
        box(100, 0, 110, 10), box(115, 0, 125, 10),  # ... cut in two pieces: IoU 1/3 each
        box(206, 0, 216, 10),  # ... outlined 6 m off: IoU 40/160
        box(400, 0, 410, 10),  # nothing there
        box(500, 0, 510, 10),  # the match
    ]  # fmt: skip
    errors = _classify(pred, truth)
    assert errors["truth"] == {"merge": 2, "split": 1, "outline": 1, "miss": 1}
    assert errors["pred"] == {"merge": 1, "split": 2, "outline": 1, "false_positive": 1}
    assert sum(errors["truth"].values()) == 5 and sum(errors["pred"].values()) == 5  # = FN and FP


def test_nothing_to_classify_and_pooling() -> None:
    empty = _classify([], [])
    assert empty == {
        "truth": {"merge": 0, "split": 0, "outline": 0, "miss": 0},
        "pred": {"merge": 0, "split": 0, "outline": 0, "false_positive": 0},
    }
    only_truth = _classify([], [shapely.box(0, 0, 5, 5)])
    assert only_truth["truth"]["miss"] == 1
    scene = {"pixel": {"tp": 1, "fp": 0, "fn": 0}, "errors": only_truth}
    assert pool([scene, scene])["errors"]["truth"]["miss"] == 2
