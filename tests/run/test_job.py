"""The scene job is defined once (pipeline.run.job.STAGES): both runners run that list."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.run import job
from pipeline.run.context import SceneContext, Vectorized
from pipeline.run.job import STAGES, Stage
from tests.conftest import coordinate_image, write_tif

runner = CliRunner()


def test_each_stage_takes_what_the_one_before_returns() -> None:
    previous: Any = type(None)
    for stage in STAGES:
        hints = typing.get_type_hints(stage.run)
        params = [v for k, v in hints.items() if k != "return"]
        assert params == [SceneContext, previous], stage.name
        previous = hints["return"]
    assert previous == dict[str, Any]  # the last one: the run record


def test_the_flow_has_one_task_per_stage_named_as_before() -> None:
    from flows.common import IO_RETRIES
    from flows.segment_scene import stage_task

    tasks = [stage_task(stage) for stage in STAGES]
    assert [t.name for t in tasks] == ["infer-stitch", "vectorize", "write-vectors", "publish"]
    assert [t.retries for t in tasks] == [IO_RETRIES, 0, 0, IO_RETRIES]  # I/O stages retry


def audit_stage(
    calls: list[tuple[str, int, str | None]], clients: list[Any] | None = None
) -> Stage[Vectorized, Vectorized]:
    """A stage added after vectorize: notes the scene, its building count and the task running it
    (and in ``clients``, the job's Dask client)."""

    def audit(ctx: SceneContext, vectorized: Vectorized) -> Vectorized:
        from prefect.context import TaskRunContext

        task_run = TaskRunContext.get()
        calls.append((ctx.plan.scene, len(vectorized.buildings), task_run.task.name if task_run else None))
        if clients is not None:
            clients.append(ctx.client)
        return vectorized

    return Stage("audit", audit)


def small_scene(tmp_path: Path) -> tuple[Path, Path]:
    """A 300 x 300 scene and a config of 256-pixel tiles: four tiles, two batches."""
    src = write_tif(tmp_path / "small.tif", coordinate_image(300, 300))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tiling: {tile_size: 256, overlap: 32, batch_size: 2}\n")
    return src, cfg


#: run.json's seconds with the audit stage added: in the order the stages ran.
AUDITED_SECONDS = ["plan", "infer_stitch", "vectorize", "audit", "write_vectors", "describe"]


def spy_polygonize(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ``client`` each polygonization of the job was given (None: in this process)."""
    from pipeline.vectorize import buildings

    seen: list[Any] = []
    original = buildings.polygonize_blocks

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("client"))
        return original(*args, **kwargs)

    monkeypatch.setattr(buildings, "polygonize_blocks", spy)
    return seen


def with_stage(monkeypatch: pytest.MonkeyPatch, stage: Stage[Any, Any]) -> None:
    names = [s.name for s in job.STAGES]
    at = names.index("vectorize") + 1
    monkeypatch.setattr(job, "STAGES", (*job.STAGES[:at], stage, *job.STAGES[at:]))


def test_a_stage_added_to_the_list_runs_in_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: None
) -> None:
    from pipeline.run.cluster import active_client

    calls: list[tuple[str, int, str | None]] = []
    clients: list[Any] = []
    with_stage(monkeypatch, audit_stage(calls, clients))
    polygonized = spy_polygonize(monkeypatch)
    src, cfg = small_scene(tmp_path)
    result = runner.invoke(app, ["segment", str(src), "--out", str(tmp_path / "out"), "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert calls == [("small", record["counts"]["buildings"], None)]  # in-process: no task
    # the stages after infer-and-stitch still have the cluster, whose workers polygonized the bands
    assert clients == polygonized == [active_client()] and clients[0] is not None
    assert list(record["seconds"]) == AUDITED_SECONDS
