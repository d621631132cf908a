"""OUTDIR safety: never over the input or another scene's outputs, one run at a time, and a
scene is "up to date" only while its outputs are what was published."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.core.errors import FootprintsError, OutputBusyError, OutputConflictError, OutputError
from pipeline.describe.output_files import DATA_NAMES, OUTPUT_NAMES
from pipeline.io.storage import parse_location
from pipeline.run.outdir import LOCK_NAME, OutDirLock, check_owner, owner
from pipeline.run.restart import MANIFEST, state_location
from tests.clitools import error_line, listing, publish_fake, write_lock
from tests.conftest import coordinate_image, write_tif

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_new_errors_are_footprints_errors_and_survive_pickling() -> None:
    for cls, builtin in ((OutputConflictError, FileExistsError), (OutputBusyError, BlockingIOError)):
        exc = cls("/out: taken; choose another --out")
        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is cls and str(again) == str(exc)
        assert isinstance(again, FootprintsError | OutputError) and isinstance(again, builtin)


# --- the lock -------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_lock_refuses_a_second_run(tmp_path: Path) -> None:
    path = write_lock(tmp_path / "out", pid=os.getpid(), token="t")
    with pytest.raises(OutputBusyError) as e:
        OutDirLock.acquire(tmp_path / "out")
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    assert f"PID {os.getpid()} on {socket.gethostname()}" in message and "delete the lock file" in message
    assert json.loads(path.read_text())["token"] == "t"  # untouched


def test_a_lock_held_on_another_host_is_never_taken_over(tmp_path: Path) -> None:
    write_lock(tmp_path / "out", pid=_dead_pid(), host="elsewhere.example")
    with pytest.raises(OutputBusyError, match=r"on elsewhere\.example"):
        OutDirLock.acquire(tmp_path / "out")


def test_a_stale_lock_is_taken_over_and_released(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = write_lock(out, pid=_dead_pid(), token="old")
    lock = OutDirLock.acquire(out)
    held = json.loads(path.read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["token"] == lock.token
    with pytest.raises(OutputBusyError):  # ours now, and alive
        OutDirLock.acquire(out)
    lock.release()
    assert not path.exists() and out.is_dir()  # OUTDIR existed before: kept
    assert sorted(p.name for p in out.iterdir()) == []


def test_an_empty_lock_left_by_a_killed_creator_is_stale_once_old(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text("")
    old = time.time() - 60
    os.utime(out / LOCK_NAME, (old, old))
    OutDirLock.acquire(out).release()
    assert not (out / LOCK_NAME).exists()


def test_the_lock_removes_an_outdir_it_created_when_nothing_was_published(tmp_path: Path) -> None:
    lock = OutDirLock.acquire(tmp_path / "new" / "out")
    assert (tmp_path / "new" / "out" / LOCK_NAME).exists()
    lock.release()
    assert not (tmp_path / "new" / "out").exists()


HOLDER = """
import sys, time
from pathlib import Path
from pipeline.run.outdir import OutDirLock
OutDirLock.acquire(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A real second process holding OUTDIR's lock."""
    out = tmp_path / "held"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc, out
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_concurrent_process_holds_the_lock_until_it_dies(
    holder: tuple[subprocess.Popen[str], Path], make_tif: Any
) -> None:
    proc, out = holder
    src = make_tif(coordinate_image(64, 64))
    result = runner.invoke(app, ["segment", str(src), "--out", str(out)])
    assert result.exit_code == 2, result.output
    line = error_line(result.output)
    assert str(out / LOCK_NAME) in line and f"PID {proc.pid} on {socket.gethostname()}" in line
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
    proc.kill()  # kill -9: the lock stays behind, stale
    proc.wait(timeout=30)
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == proc.pid
    OutDirLock.acquire(out).release()  # taken over
    assert not (out / LOCK_NAME).exists()


# --- who owns OUTDIR ------------------------------------------------------------------


def test_owner_check(tmp_path: Path) -> None:
    out = tmp_path / "out"
    loc = parse_location(str(out))
    check_owner(loc, owner(scene="/a.tif", config_sha256="c"))  # nothing there yet
    publish_fake(out, scene="/a.tif")
    check_owner(loc, owner(scene="/a.tif", config_sha256="c"))  # ours
    with pytest.raises(OutputConflictError) as e:
        check_owner(loc, owner(scene="/b.tif", config_sha256="c"))
    assert str(out) in str(e.value) and "/a.tif" in str(e.value) and "--force" in str(e.value)
    assert "another --out" in str(e.value)
    with pytest.raises(OutputConflictError, match="another config"):
        check_owner(loc, owner(scene="/a.tif", config_sha256="d"))
    legacy = {"input": {"url": "/a.tif"}}  # a run.json without "owner": its scene decides
    (out / "run.json").write_text(json.dumps(legacy))
    check_owner(loc, owner(scene="/a.tif", config_sha256="d"))


def test_a_half_published_outdir_belongs_to_its_restart_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "probability.tif").write_bytes(b"x")  # published before a crash, run.json not yet
    loc = parse_location(str(out))
    with pytest.raises(OutputConflictError, match=r"no run\.json"):
        check_owner(loc, owner(scene="/a.tif", config_sha256="c"))
    manifest = Path(state_location(loc).path) / MANIFEST
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"input": {"url": "/a.tif"}, "config_sha256": "c"}))
    check_owner(loc, owner(scene="/a.tif", config_sha256="c"))
    with pytest.raises(OutputConflictError, match="another scene"):
        check_owner(loc, owner(scene="/b.tif", config_sha256="c"))


# --- end to end through the CLI -------------------------------------------------------


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text("tiling: {tile_size: 256, overlap: 32, batch_size: 2}\nvectorize: {min_area_m2: 0}\n")
    return path


def _segment(src: Path, out: Path, config: Path, *extra: str) -> Any:
    return runner.invoke(app, ["segment", str(src), "--out", str(out), "--config", str(config), *extra])


def test_the_input_is_never_overwritten(tmp_path: Path, config: Path, cluster: None) -> None:
    out = tmp_path / "out"
    out.mkdir()
    src = write_tif(out / "probability.tif", coordinate_image(64, 64))
    before = listing(out)
    for extra in ((), ("--force",)):
        result = _segment(src, out, config, *extra)
        assert result.exit_code == 2, result.output
        line = error_line(result.output)
        assert str(src) in line and "would be overwritten" in line and "another --out" in line
        assert listing(out) == before and sorted(p.name for p in out.iterdir()) == ["probability.tif"]


def test_another_scenes_outputs_are_kept_unless_forced(tmp_path: Path, config: Path, cluster: None) -> None:
    a = write_tif(tmp_path / "a.tif", coordinate_image(200, 200))
    b = write_tif(tmp_path / "b.tif", coordinate_image(200, 220))
    out = tmp_path / "out"
    assert _segment(a, out, config).exit_code == 0
    published = listing(out)
    result = _segment(b, out, config)
    assert result.exit_code == 2, result.output
    line = error_line(result.output)
    assert str(out) in line and str(a) in line and "--force" in line and "another --out" in line
    assert listing(out) == published and sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
    forced = _segment(b, out, config, "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "run.json").read_text())["owner"]["scene"] == str(b)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)


def test_files_footprints_did_not_write_are_kept_unless_forced(
    tmp_path: Path, config: Path, cluster: None
) -> None:
    src = write_tif(tmp_path / "a.tif", coordinate_image(64, 64))
    out = tmp_path / "out"
    out.mkdir()
    (out / "mask.tif").write_bytes(b"the user's own mask")
    result = _segment(src, out, config)
    assert result.exit_code == 2 and "mask.tif" in error_line(result.output)
    assert (out / "mask.tif").read_bytes() == b"the user's own mask"


@pytest.mark.parametrize("damage", ["delete", "modify"])
def test_a_missing_or_changed_output_is_published_again(
    tmp_path: Path, config: Path, cluster: None, damage: str
) -> None:
    src = write_tif(tmp_path / "a.tif", coordinate_image(300, 300))
    out = tmp_path / "out"
    assert _segment(src, out, config).exit_code == 0
    record = json.loads((out / "run.json").read_text())
    assert set(record["checksums"]) == set(OUTPUT_NAMES) - {"run.json"}
    assert all(len(c["sha256"]) == 64 for c in record["checksums"].values())
    reference = listing(out)
    for name in ("mask.tif", "buildings.geojson", "quicklook.png", "report.html", "run.json"):
        if damage == "delete":
            (out / name).unlink()
        else:
            (out / name).write_bytes(reference[name][:-1] + b"?")
        result = _segment(src, out, config)
        assert result.exit_code == 0, result.output
        assert "up to date" not in result.output and "buildings from" in result.output
        assert f"warning: {out}: {name} missing or changed since the scene was published" in result.output
        restored = listing(out)
        assert set(restored) == set(OUTPUT_NAMES)
        assert {n: restored[n] for n in DATA_NAMES} == {n: reference[n] for n in DATA_NAMES}  # byte-identical
    assert "is up to date" in _segment(src, out, config).output


def test_turning_the_quicklook_off_removes_it_and_stays_up_to_date(
    tmp_path: Path, config: Path, cluster: None
) -> None:
    src = write_tif(tmp_path / "a.tif", coordinate_image(200, 200))
    out = tmp_path / "out"
    assert _segment(src, out, config).exit_code == 0 and (out / "quicklook.png").is_file()
    off = tmp_path / "off.yaml"
    off.write_text(config.read_text() + "outputs: {quicklook: false}\n")
    result = _segment(src, out, off, "--force")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(set(OUTPUT_NAMES) - {"quicklook.png"})
    assert "quicklook: false" in (out / "report.html").read_text()
    assert "is up to date" in _segment(src, out, off).output
