"""``footprints bench``: model-only, end-to-end and pipeline-only on one cluster, on a tiny scene."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from affine import Affine

from pipeline.config import default_checkpoint, load_config
from pipeline.run.bench import PIPELINE_ONLY, format_report, run_bench
from tests.conftest import write_tif

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_checkpoint() is None, reason="no checkpoint in models/"),
]

STAGES = {"plan", "infer_stitch", "vectorize", "write_vectors", "describe"}


def houses(size: int = 700) -> np.ndarray:
    """Bright roofs on a darker ground, at the model's GSD (0.35 m): a 2 x 2 tile grid."""
    rng = np.random.default_rng(0)
    img = np.full((3, size, size), 70, np.uint8) + rng.integers(0, 20, (3, size, size), dtype=np.uint8)
    for r in range(40, size - 60, 90):
        for c in range(30, size - 60, 110):
            img[:, r : r + 40, c : c + 55] = 200
    return img


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    scene = write_tif(
        tmp_path_factory.mktemp("bench") / "houses.tif", houses(),
        transform=Affine(0.35, 0.0, 600000.0, 0.0, -0.35, 3300000.0),
    )  # fmt: skip
    config = load_config(**{"model.runtime": "torch"})
    return run_bench(input_path=str(scene), config=config, model_path=None, max_tiles=2)


def test_the_report_says_all_three_ran_alike(report: dict[str, Any]) -> None:
    layout = report["layout"]
    assert layout["tiles"] == 4 and layout["batch_size"] == 1 and layout["workers"] == 1
    assert "same Dask cluster" in layout["statement"] and "same grid (4 tiles" in layout["statement"]
    model = report["model_only"]
    assert model["tiles"] == 2 and len(model["passes"]) == 2  # before and after end-to-end
    before, after = model["windows"]
    e2e = report["end_to_end"]["window"]
    assert before[1] <= e2e[0] and e2e[1] <= after[0]  # the two passes bracket the end-to-end run
    # pooled: the passes' tile pixels over their seconds, between the two rates
    assert min(model["passes"]) - 1e-3 <= model["mps"] <= max(model["passes"]) + 1e-3
    for key in ("end_to_end", "pipeline_only"):
        run = report[key]
        assert run["tiles_inferred"] == 4
        assert set(run["stages_s"]) == STAGES == set(run["client_cpu_s"])
        assert set(run["worker_cpu_s"]) == {"read", "infer", "other", "total"}
        cpu = run["worker_cpu_s"]
        assert cpu["infer"] > 0 and cpu["total"] >= cpu["infer"]
        assert 0 < run["worker_busy"] <= 1
        assert run["mps"] > 0 and run["scene_mps"] < run["mps"]  # tiles overlap: more tile than scene pixels
    ratio = report["ratio"]
    e2e, model = report["end_to_end"]["mps"], report["model_only"]["mps"]
    assert ratio["end_to_end_over_model_only"] == pytest.approx(e2e / model, abs=1e-3)
    assert report["peak_rss_mb"]["sum"] == pytest.approx(
        report["peak_rss_mb"]["client"] + report["peak_rss_mb"]["workers"], abs=0.2
    )


def test_pipeline_only_ran_the_stand_in_and_the_others_the_model(report: dict[str, Any]) -> None:
    assert report["model_only"]["runtime"] == "torch" and report["end_to_end"]["runtime"] == "torch"
    assert report["pipeline_only"]["runtime"] == PIPELINE_ONLY  # reported by the workers that ran it
    # the stand-in costs next to nothing: the workers' inferring CPU drops
    e2e, stand_in = report["end_to_end"]["worker_cpu_s"], report["pipeline_only"]["worker_cpu_s"]
    assert stand_in["infer"] < e2e["infer"] / 2


def test_the_text_report_has_a_row_per_mode_and_per_stage(report: dict[str, Any]) -> None:
    text = format_report(report)
    assert text.startswith(
        "model-only (before and after end-to-end), end-to-end and pipeline-only ran on the same Dask cluster"
    )
    assert "passes before and after end-to-end: " in text
    for row in ("model-only", "end-to-end", "pipeline-only", *STAGES, "end-to-end / model-only"):
        assert f"\n{row}" in text, row


def test_cli_bench_rejects_a_missing_scene(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli.main import app

    result = CliRunner().invoke(app, ["bench", str(tmp_path / "nope.tif")])
    assert result.exit_code == 2
