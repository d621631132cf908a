"""The Prefect flow ``segment-scene`` on a 2-worker Dask LocalCluster."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from pipeline.describe.output_files import OUTPUT_NAMES
from tests.conftest import coordinate_image, write_tif

pytestmark = pytest.mark.slow


def test_segment_scene_flow_on_two_workers(prefect_harness: None, tmp_path: Path) -> None:
    from dask.distributed import Client, LocalCluster

    from flows.segment_scene import segment_scene_flow

    height, width = 2000, 3000
    image = coordinate_image(height, width)
    image[:, :600, :] = 0  # nodata margins: top band and right band, wider than a tile
    image[:, :, 2300:] = 0
    src = write_tif(tmp_path / "big.tif", image, nodata=0, tiled=True, block=256)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tiling: {tile_size: 512, overlap: 64, batch_size: 2}\n")
    out = tmp_path / "out"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        record = segment_scene_flow(
            str(src), str(out), config_path=str(cfg), scheduler=cluster.scheduler_address
        )
        # the model was loaded on both workers, once each (by the worker plugin)
        from pipeline.model.infer import cached_count

        counts = client.run(cached_count)
        assert len(counts) == 2 and all(c == 1 for c in counts.values())
    assert {p.name for p in out.iterdir()} == set(OUTPUT_NAMES)
    from prefect.artifacts import Artifact

    table = Artifact.get("footprints-big")
    markdown = Artifact.get("footprints-big-report")
    assert table is not None and table.type == "table" and "buildings" in str(table.data)
    assert "seconds: infer_stitch" in str(table.data)
    assert markdown is not None and (out / "report.html").as_uri() in str(markdown.data)
    assert record["counts"]["tiles_skipped"] > 0
    assert record["counts"]["tiles_inferred"] + record["counts"]["tiles_skipped"] == record["counts"]["tiles"]
    assert json.loads((out / "run.json").read_text())["counts"] == record["counts"]
    with rasterio.open(out / "probability.tif") as ds, rasterio.open(src) as s:
        assert ds.shape == (height, width) and ds.transform == s.transform and ds.crs == s.crs
        valid = ds.dataset_mask() > 0
        np.testing.assert_array_equal(valid, s.dataset_mask() > 0)
        prob = ds.read(1)
        assert prob[valid].std() > 0


def test_tasks_retry_transient_io_errors_only(prefect_harness: None) -> None:
    from prefect import flow, task

    from flows.common import retry_transient
    from pipeline.core.errors import InputNotFoundError

    calls = {"flaky": 0, "missing": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionResetError("connection reset by peer")
        return "ok"

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def missing() -> None:
        calls["missing"] += 1
        raise InputNotFoundError("s3://b/x.tif: object not found")

    @flow
    def both() -> str:
        result = flaky()
        with contextlib.suppress(InputNotFoundError):
            missing()
        return result

    assert both() == "ok"
    assert calls == {"flaky": 3, "missing": 1}  # transient: retried until it worked; permanent: once


def test_a_stage_added_to_the_job_runs_as_a_task_of_the_flow(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding a stage to pipeline.run.job.STAGES is all it takes: the flow runs it as a task."""
    from flows.segment_scene import segment_scene_flow
    from tests.run.test_job import AUDITED_SECONDS, audit_stage, small_scene, spy_polygonize, with_stage

    calls: list[tuple[str, int, str | None]] = []
    clients: list[Any] = []
    with_stage(monkeypatch, audit_stage(calls, clients))
    polygonized = spy_polygonize(monkeypatch)
    src, cfg = small_scene(tmp_path)
    record = segment_scene_flow(str(src), str(tmp_path / "out"), config_path=str(cfg))
    assert calls == [("small", record["counts"]["buildings"], "audit")]
    # one cluster for the job's tasks: its workers polygonized the bands
    assert clients == polygonized and clients[0] is not None
    assert list(record["seconds"]) == AUDITED_SECONDS
