"""scripts/gpu_bench.sh --dry-run: the GPU bench's own path (scene, bench per batch size, JSON) on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import default_checkpoint
from tests.conftest import requires_real

REPO = Path(__file__).resolve().parents[2]


@requires_real
@pytest.mark.slow
@pytest.mark.skipif(default_checkpoint() is None, reason="no checkpoint in models/")
def test_gpu_bench_dry_run_benches_each_batch_size_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PY": sys.executable}
    done = subprocess.run(
        ["bash", "scripts/gpu_bench.sh", "--dry-run", "--work", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((out / "gpu_bench.json").read_text())
    assert result["dry_run"] and result["device"] == "cpu" and result["scene"] == [1024, 1024]
    assert result["gpu_sampling"] != "nvml, 0.1 s"  # no GPU here: says why there are no samples
    assert [r["batch_size"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["report"]["layout"]["batch_size"] == row["batch_size"]
        for mode in ("model_only", "end_to_end", "pipeline_only"):
            assert row[mode]["mps"] > 0 and row[mode]["gpu_busy_pct"] is None
        assert row["report"]["pipeline_only"]["runtime"] == "pipeline-only"
        assert row["report"]["end_to_end"]["runtime"] == "torch"
        assert row["ratio"]["end_to_end_over_model_only"] > 0
    assert (tmp_path / "work" / "mosaic1024.tif").exists()
    assert "batch   1:" in done.stdout and "batch   2:" in done.stdout
