"""The fault matrix of issue #15.

Every bad input, config, checkpoint, URL and output folder is refused with exit code 2 and
one line naming the file, the problem and the fix, with no traceback and no file left under
a final name (and no OUTDIR the run created). Runs killed (SIGKILL at three stages, a
worker killed twice), interrupted (SIGINT) or raced by a second run resume, and the rerun
writes outputs byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.core.errors import RasterReadError
from pipeline.describe.output_files import DATA_NAMES, OUTPUT_NAMES
from pipeline.run.outdir import LOCK_NAME
from tests.clitools import error_line
from tests.conftest import ORIGIN, coordinate_image, write_tif
from tests.faultcases import CASES

REPO = Path(__file__).resolve().parents[2]
DATA = DATA_NAMES
runner = CliRunner()


# --- the matrix -----------------------------------------------------------------------


def _files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


FINAL_NAMES = {*OUTPUT_NAMES, "polygons.geojson", "polygons.shp"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fault_matrix(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: None) -> None:
    spec = CASES[name](tmp_path, monkeypatch)
    before = _files(tmp_path)
    had_out = (tmp_path / "out").exists()
    result = runner.invoke(app, spec.args, env=spec.env)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught error
    line = error_line(result.output)
    for needle in (spec.file, spec.problem, spec.fix):
        assert needle in line, f"{needle!r} not in {line!r}"
    assert not any(secret in result.output for secret in spec.absent)
    after = _files(tmp_path)
    assert {p: after.get(p) for p in before} == before  # nothing overwritten or removed
    new = [p for p in after if p not in before]
    assert not [p for p in new if p.name in FINAL_NAMES], new  # nothing under a final name
    assert not [p for p in new if not any(part.startswith(".") for part in p.relative_to(tmp_path).parts)]
    assert had_out or not (tmp_path / "out").exists()  # no empty OUTDIR left behind


def test_the_matrix_has_at_least_40_cases() -> None:
    assert len(CASES) >= 40


def test_a_read_error_raised_on_a_worker_arrives_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dask sends a task's error with its cause chain (tblib); rasterio's CPLE_* cause does not
    unpickle, so the error would arrive as a plain Exception: detached, it arrives whole."""
    from distributed.core import clean_exception, error_message

    from pipeline.core.errors import detach
    from pipeline.io.read import open_raster, read_tile
    from pipeline.tiling.grid import TileGrid

    path = Path(CASES["damaged-tile"](tmp_path, monkeypatch).args[1])
    info = open_raster(path)
    with pytest.raises(RasterReadError) as caught:
        for tile in TileGrid(height=512, width=512, tile_size=128, overlap=0):
            read_tile(info, tile)
    _, raw, _ = clean_exception(error_message(caught.value)["exception"].data)
    assert type(raw) is Exception  # what Dask did to it before
    error = detach(caught.value)
    _, again, _ = clean_exception(error_message(error)["exception"].data)
    assert type(again) is RasterReadError and isinstance(again, OSError) and again.__cause__ is None
    assert str(again) == str(error) and "\n" not in str(again)
    assert str(path) in str(again) and "IReadBlock failed" in str(again) and "re-download" in str(again)
    assert type(pickle.loads(pickle.dumps(error))) is RasterReadError


def test_a_batch_whose_workers_keep_dying_is_one_line() -> None:
    from types import SimpleNamespace

    from distributed.scheduler import KilledWorker

    from pipeline.core.errors import WorkerLostError
    from pipeline.run.dispatch import _result
    from pipeline.tiling.grid import TileGrid

    class Lost:
        def result(self) -> None:
            raise KilledWorker("predict_batch-1", SimpleNamespace(address="tcp://127.0.0.1:1"), 3)

    tiles = list(TileGrid(height=64, width=64, tile_size=32, overlap=0))
    with pytest.raises(WorkerLostError) as caught:
        _result(Lost(), tiles[1:3])
    message = str(caught.value)
    assert message.startswith("tiles 1-2: the Dask workers running them died 4 times") and "\n" not in message
    assert "lower tiling.batch_size" in message and "rerun the same command to resume" in message


# --- killed, interrupted and raced runs (slow: real processes) -----------------------


@pytest.fixture(scope="module")
def fault_scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A scene, a config, and the data files of one uninterrupted run of them."""
    tmp = tmp_path_factory.mktemp("faults")
    image = coordinate_image(300, 560)
    image[:, :, 420:] = 0
    scene = write_tif(tmp / "scene.tif", image, nodata=0, transform=ORIGIN)
    config = tmp / "config.yaml"
    config.write_text("tiling: {tile_size: 128, overlap: 16, batch_size: 2}\nvectorize: {min_area_m2: 0}\n")
    reference = tmp / "reference"
    proc = _run("none", scene, reference, config)
    assert proc.returncode == 0, proc.stderr
    return {"scene": scene, "config": config, "reference": reference}


def _command(fault: str, scene: Path, out: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "tests.faultrun", fault, "segment", str(scene), "--out", str(out),
            "--config", str(config)]  # fmt: skip


def _run(fault: str, scene: Path, out: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI in its own session; whatever it leaves running (workers of a killed run) is killed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        _command(fault, scene, out, config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        _kill_group(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _same_outputs(out: Path, reference: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
    for name in DATA:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def _resume(fault_scene: dict[str, Path], out: Path) -> dict[str, Any]:
    again = _run("none", fault_scene["scene"], out, fault_scene["config"])
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    _same_outputs(out, fault_scene["reference"])
    counts: dict[str, Any] = json.loads((out / "run.json").read_text())["counts"]
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill-after-batch:3", "kill-at-vectorize", "kill-after-upload:2"])
def test_a_run_killed_at_any_stage_resumes_byte_identical(
    fault: str, fault_scene: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    killed = _run(fault, fault_scene["scene"], out, fault_scene["config"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if fault == "kill-after-upload:2":  # two outputs published, run.json not yet
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(DATA[:2])
    else:
        assert not [p for p in out.iterdir() if p.name in OUTPUT_NAMES]
    counts = _resume(fault_scene, out)
    assert counts["tiles_reused"] > 0


@pytest.mark.slow
def test_a_worker_killed_twice_changes_no_byte(fault_scene: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = _run("kill-worker:2,6", fault_scene["scene"], out, fault_scene["config"])
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    _same_outputs(out, fault_scene["reference"])
    again = _run("none", fault_scene["scene"], out, fault_scene["config"])
    assert again.returncode == 0 and "is up to date" in again.stderr


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_the_rerun_resumes(
    fault_scene: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    stopped = _run("sigint-after-batch:3", fault_scene["scene"], out, fault_scene["config"])
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr, stopped.stderr
    lines = [ln for ln in stopped.stderr.splitlines() if ln.startswith("interrupted;")]
    assert len(lines) == 1, stopped.stderr
    kept = int(lines[0].split("(")[1].split()[0])
    assert lines[0] == f"interrupted; rerun the same command to resume ({kept} tiles kept)" and kept >= 6
    assert not out.exists()  # the run created it, and nothing was published: removed
    counts = _resume(fault_scene, out)
    assert counts["tiles_reused"] >= kept - counts["tiles_skipped"]


@pytest.mark.slow
def test_a_concurrent_second_run_is_refused_and_the_first_completes(
    fault_scene: dict[str, Path], tmp_path: Path
) -> None:
    out, flag = tmp_path / "out", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(
        _command(f"pause-after-batch:2:{flag}", fault_scene["scene"], out, fault_scene["config"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not flag.with_name("go.ready").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        second = _run("none", fault_scene["scene"], out, fault_scene["config"])
        assert second.returncode == 2, second.stderr
        line = error_line(second.stderr)
        assert str(out / LOCK_NAME) in line and f"PID {first.pid}" in line and "wait for it" in line
        flag.touch()
        _, stderr = first.communicate(timeout=600)
        assert first.returncode == 0, stderr
    finally:
        _kill_group(first.pid)
    _same_outputs(out, fault_scene["reference"])


@pytest.fixture(autouse=True)
def _no_stray_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Fallback restart state of these tests goes to their own folder, never to ~/.local/state."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / ".xdg-state"))
    yield
