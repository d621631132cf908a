"""The reliability table of ``confidence``: precision per bin, exact synthetic cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation.evaluate import confidence_matches, evaluate
from pipeline.evaluation.reliability import pool, reliability
from pipeline.evaluation.report import report_tables
from tests.evaluation.test_evaluate import SPECK, A, B, C, make_outdir, px_box, truth_tif


def by_bin(rows: list[dict[str, object]]) -> dict[object, tuple[object, object, object]]:
    return {r["bin"]: (r["count"], r["matched"], r["precision"]) for r in rows if r["count"]}


def test_bins_counts_and_precision() -> None:
    conf = np.array([0.3, 0.5, 0.52, 0.549, 0.55, 0.81, 0.85, 0.99, 1.0, np.nan, 1.2])
    hit = np.array([False, True, False, True, True, True, False, True, False, True, True])
    rows = reliability(conf, hit)
    assert [r["bin"] for r in rows][:3] == ["0.00-0.50", "0.50-0.55", "0.55-0.60"] and len(rows) == 11
    assert by_bin(rows) == {
        "0.00-0.50": (1, 0, 0.0),
        "0.50-0.55": (3, 2, pytest.approx(2 / 3)),  # [0.50, 0.55): 0.5, 0.52, 0.549
        "0.55-0.60": (1, 1, 1.0),
        "0.80-0.85": (1, 1, 1.0),
        "0.85-0.90": (1, 0, 0.0),
        "0.95-1.00": (2, 1, 0.5),  # the last bin holds 1.0; NaN and 1.2 are left out
    }
    assert rows[5]["precision"] is None and rows[5]["count"] == 0
    with pytest.raises(ValueError, match="one each"):
        reliability(conf, hit[:3])


def test_pool_adds_bin_by_bin() -> None:
    a = reliability(np.array([0.6, 0.9]), np.array([True, False]))
    b = reliability(np.array([0.61, 0.62, 0.97]), np.array([False, True, True]))
    assert by_bin(pool([a, b])) == {
        "0.60-0.65": (3, 2, pytest.approx(2 / 3)),
        "0.90-0.95": (1, 0, 0.0),
        "0.95-1.00": (1, 1, 1.0),
    }
    assert pool([]) == []
    with pytest.raises(ValueError, match="different bins"):
        pool([a, reliability(np.array([0.6]), np.array([True]), edges=(0.0, 1.0))])


def test_confidence_matches_scores_unfiltered_polygons_as_evaluate_does(tmp_path: Path) -> None:
    """A and C match their truth, B is shifted (IoU 24/104), the speck is under 8 m², the last
    polygon lies on nodata rows: three scored, two matched."""
    out = make_outdir(tmp_path)
    truth = truth_tif(tmp_path)
    polys = [px_box(*b) for b in (A, B, C, SPECK)] + [px_box(37, 40, 10, 20)]
    conf, matched = confidence_matches(
        pred_dir=out, truth_path=truth, polygons=polys, confidence=np.array([0.97, 0.52, 0.83, 0.6, 0.7])
    )
    assert conf.tolist() == [0.97, 0.52, 0.83] and matched.tolist() == [True, False, True]
    scene = evaluate(pairs=[(out, truth)])["scenes"][0]
    assert scene["object"]["tp"] == int(matched.sum())  # the same matching as the delivered buildings
    rows = reliability(conf, matched)
    assert by_bin(rows) == {"0.50-0.55": (1, 0, 0.0), "0.80-0.85": (1, 1, 1.0), "0.95-1.00": (1, 1, 1.0)}


def test_validation_report_prints_the_reliability_table(tmp_path: Path) -> None:
    out = make_outdir(tmp_path)
    report = evaluate(pairs=[(out, truth_tif(tmp_path))])
    assert report_tables(report)[-1].title.startswith("polygon") is False
    report["reliability"] = {"min_confidence": 0.8, "bins": reliability(np.array([0.9]), np.array([True]))}
    table = report_tables(report)[-1]
    assert "reliability" in str(table.title) and table.row_count == 11
