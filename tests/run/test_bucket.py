"""The bucket: listing scenes, the bucket manifest, and a flow run killed mid-bucket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.errors import InputNotFoundError
from pipeline.describe.output_files import DATA_NAMES, OUTPUT_NAMES
from pipeline.run.bucket import BucketManifest, plan_bucket, scene_entry
from tests.conftest import DEMO_SCENE, REAL, requires_real
from tests.stacschemas import validate

REPO = Path(__file__).resolve().parents[2]
RIO = REAL / "spacenet1_rio" / "3band" / "3band_013022223130_Public_img55.tif"
DATA = DATA_NAMES  # byte-identical whenever input, model and config are


def test_plan_bucket_gives_each_scene_its_folder(tmp_path: Path) -> None:
    for name in ("b.tif", "a.tif", "a.jp2"):
        (tmp_path / name).write_bytes(b"x")
    jobs = plan_bucket(input_url=str(tmp_path), output_url="s3://out/run1/")
    assert [(j.scene, j.output_url) for j in jobs] == [("a", "s3://out/run1/a"), ("b", "s3://out/run1/b")]
    assert jobs[0].input_url == str(tmp_path / "a.tif")
    with pytest.raises(InputNotFoundError, match=r"no scene matches pattern '\*\.png'"):
        plan_bucket(input_url=str(tmp_path), output_url="/o", pattern="*.png")
    with pytest.raises(InputNotFoundError, match="share a stem"):
        plan_bucket(input_url=str(tmp_path), output_url="/o", pattern="a.*")


def test_bucket_manifest_lists_every_scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hush-hush-1234")
    for name in ("a.tif", "b.tif", "c.tif"):
        (tmp_path / name).write_bytes(b"x")
    out = tmp_path / "out"
    jobs = plan_bucket(input_url=str(tmp_path), output_url=str(out))
    manifest = BucketManifest(input_url=str(tmp_path), output_url=str(out), pattern="*.tif", jobs=jobs)
    manifest.write()
    record = {"counts": {"tiles": 4, "tiles_inferred": 4}, "run_key": "k"}
    manifest.record(scene_entry(jobs[0], record=record, error=None))
    manifest.record(scene_entry(jobs[1], record={**record, "skipped": True}, error=None))
    manifest.record(scene_entry(jobs[2], record=None, error=OSError("denied by hush-hush-1234")))
    data = json.loads((out / "manifest.json").read_text())
    assert data["summary"] == {"done": 1, "up-to-date": 1, "failed": 1, "pending": 0}
    assert data["tiles_inferred_now"] == 4  # the up-to-date scene inferred nothing this time
    assert [s["status"] for s in data["scenes"]] == ["done", "up-to-date", "failed"]
    assert data["scenes"][0]["outputs"]["mask.tif"] == str(out / "a" / "mask.tif")
    assert "hush-hush" not in (out / "manifest.json").read_text()
    assert manifest.failed == ["c"]


def _bucket_run(inp: Path, out: Path, config: Path, home: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": str(REPO),
    }  # fmt: skip
    log = (home / f"run-{time.monotonic_ns()}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "flows.segment_bucket", str(inp), str(out), str(config)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _tiles_recorded(out: Path) -> int:
    total = 0
    for manifest in out.glob(".footprints-state/*/manifest.json"):
        try:
            total += len(json.loads(manifest.read_text())["tiles_done"])
        except (OSError, ValueError):
            continue  # being replaced right now
    return total


def _finish(proc: subprocess.Popen[bytes], home: Path, timeout: float = 300) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in home.glob("run-*.log"))
    assert rc == 0, logs


@pytest.mark.slow
@requires_real
def test_a_bucket_run_killed_mid_way_resumes_with_identical_outputs(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "austin.tif").symlink_to(DEMO_SCENE)
    (inp / "rio55.tif").symlink_to(RIO)
    config = tmp_path / "small.yaml"
    config.write_text(
        "tiling: {tile_size: 192, overlap: 24, batch_size: 2}\ndask: {max_batches_in_flight: 2}\n"
    )
    home = tmp_path / "prefect"
    home.mkdir()

    reference = tmp_path / "reference"
    _finish(_bucket_run(inp, reference, config, home), home)
    ref_manifest = json.loads((reference / "manifest.json").read_text())
    total = sum(s["counts"]["tiles_inferred"] for s in ref_manifest["scenes"])

    out = tmp_path / "out"
    proc = _bucket_run(inp, out, config, home)
    try:
        deadline = time.monotonic() + 240
        while _tiles_recorded(out) < 6:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no tiles were recorded"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the flow, its Prefect server and its Dask workers
        proc.wait(timeout=60)
    killed_at = _tiles_recorded(out)
    assert (
        not (out / "manifest.json").exists()
        or json.loads((out / "manifest.json").read_text())["summary"]["pending"] > 0
    )

    _finish(_bucket_run(inp, out, config, home), home)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["failed"] == 0 and manifest["summary"]["pending"] == 0
    inferred = manifest["tiles_inferred_now"]
    reused = sum(s["counts"].get("tiles_reused", 0) for s in manifest["scenes"] if "counts" in s)
    print(f"\nrestart: {total} tiles inferred uninterrupted; killed after {killed_at} recorded; "
          f"rerun inferred {inferred} and reused {reused}")  # fmt: skip
    assert reused >= 4 and inferred < total
    for scene in ("austin", "rio55"):
        for name in DATA:
            assert (out / scene / name).read_bytes() == (reference / scene / name).read_bytes(), (scene, name)
        assert sorted(p.name for p in (out / scene).iterdir()) == sorted(OUTPUT_NAMES)

    _finish(_bucket_run(inp, out, config, home), home)  # a finished bucket: no inference at all
    again: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    assert again["summary"]["up-to-date"] == 2 and again["tiles_inferred_now"] == 0
    index = (out / "index.html").read_text()
    assert 'href="austin/report.html"' in index and 'href="rio55/report.html"' in index
    collection = json.loads((out / "collection.json").read_text())
    validate(collection)
    assert sorted(lk["href"] for lk in collection["links"] if lk["rel"] == "item") == [
        "./austin/item.json", "./rio55/item.json"
    ]  # fmt: skip
