"""Pooling over scenes and sources, the macro average, and the order of the tables."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from pipeline.evaluation.polygon_metrics import summarize
from pipeline.evaluation.report import (
    by_source,
    macro,
    object_scores,
    pixel_scores,
    pool,
    report_tables,
    summarize_scenes,
)


def scene(source: str, *, pixel: tuple[int, int, int], obj: tuple[int, int, int]) -> dict[str, Any]:
    counts = {"tp": obj[0], "fp": obj[1], "fn": obj[2]}
    return {
        "scene": f"{source}-{pixel}", "source": source,
        "pixel": pixel_scores(tp=pixel[0], fp=pixel[1], fn=pixel[2]), "object": object_scores(**counts),
        "object_iou25": object_scores(**counts), "polygon": summarize([], []),
    }  # fmt: skip


# Source a: one scene. Source b: two scenes, pooled to pixel (30, 10, 60), objects (2, 1, 4).
SCENES = [
    scene("a", pixel=(80, 20, 0), obj=(8, 2, 0)),
    scene("b", pixel=(10, 10, 20), obj=(1, 1, 2)),
    scene("b", pixel=(20, 0, 40), obj=(1, 0, 2)),
]


def test_per_source_pooling() -> None:
    sources = by_source(SCENES)
    assert list(sources) == ["a", "b"]
    assert sources["b"]["scenes"] == 2
    assert {k: sources["b"]["object"][k] for k in ("tp", "fp", "fn")} == {"tp": 2, "fp": 1, "fn": 4}
    assert sources["a"]["pixel"]["iou"] == pytest.approx(80 / 100)
    assert sources["b"]["pixel"]["iou"] == pytest.approx(30 / 100)
    assert sources["a"]["object"]["f1"] == pytest.approx(16 / 18)
    assert sources["b"]["object"]["f1"] == pytest.approx(4 / 9)


def test_macro_weighs_each_source_once_and_differs_from_pooled() -> None:
    report = summarize_scenes(SCENES, per_source=True)
    assert list(report) == ["macro", "overall", "sources"]
    m = report["macro"]
    assert m["sources"] == 2
    assert m["pixel"]["iou"] == pytest.approx((80 / 100 + 30 / 100) / 2)
    assert m["object"]["f1"] == pytest.approx((16 / 18 + 4 / 9) / 2)  # = 2/3
    assert m["object"]["precision"] == pytest.approx((8 / 10 + 2 / 3) / 2)
    assert m["object"]["recall"] == pytest.approx((8 / 8 + 2 / 6) / 2)
    pooled = report["overall"]
    assert pooled["pixel"]["iou"] == pytest.approx(110 / 200)  # tp 110, fp 30, fn 60
    assert pooled["object"]["f1"] == pytest.approx(20 / 27)  # tp 10, fp 3, fn 4
    assert m == macro(by_source(SCENES))
    assert pooled == pool(SCENES)


def test_without_sources_only_overall() -> None:
    assert list(summarize_scenes(SCENES, per_source=False)) == ["overall"]


def _render(report: dict[str, Any]) -> str:
    console = Console(record=True, width=200)
    for table in report_tables(report):
        console.print(table)
    return console.export_text()


def test_tables_put_macro_first_then_pooled_then_sources() -> None:
    params = {"iou_threshold": 0.5, "min_area_m2": 8.0, "loose_iou_threshold": 0.25}
    report = {"params": params, **summarize_scenes(SCENES, per_source=True), "scenes": SCENES}
    text = _render(report)
    assert (
        text.index("macro") < text.index("pooled") < text.index("per source") < text.index("b-(10, 10, 20)")
    )
    assert "0.667" in text  # macro object F1
    plain = _render({"params": params, **summarize_scenes(SCENES, per_source=False), "scenes": SCENES})
    assert "macro" not in plain and "overall" in plain and "polygon metrics" in plain
