"""What segment says while it runs: the tile count, an estimate, progress lines without a terminal."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import rasterio
from affine import Affine
from rich.console import Console
from typer.testing import CliRunner

import pipeline.run.progress as progress
from pipeline.cli.main import app
from pipeline.config import load_config
from pipeline.run.plan import plan_scene
from pipeline.run.progress import ProgressReporter, duration
from tests.conftest import UTM_CRS, coordinate_image, write_tif

runner = CliRunner()


def sparse_scene(path: Path, *, size: int, gsd: float) -> Path:
    """A ``size`` x ``size`` RGB GeoTIFF with no block written: a few MB whatever its size."""
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": UTM_CRS,
        "transform": Affine(gsd, 0, 600000.0, 0, -gsd, 3300000.0), "tiled": True, "blockxsize": 512,
        "blockysize": 512, "sparse_ok": True, "BIGTIFF": "YES",
    }  # fmt: skip
    with rasterio.open(path, "w", **profile):
        pass
    return path


def test_duration() -> None:
    assert [duration(s) for s in (0.4, 12, 250, 7260, 118_827)] == [
        "0 s", "12 s", "4 min 10 s", "2 h 01 min", "33 h 00 min",
    ]  # fmt: skip


def test_a_huge_scene_prints_its_tile_count_and_an_estimate(tmp_path: Path) -> None:
    """The 200000² scene of issue #15: 146,689 tiles, about 33 hours at 0.81 s per tile."""
    src = sparse_scene(tmp_path / "huge.tif", size=200_000, gsd=0.3)
    assert src.stat().st_size < 20 * 2**20
    plan = plan_scene(input_path=str(src), config=load_config(), model_gsd_m=0.35, model_stride=16)
    assert len(plan.grid) == 146_689
    clock = iter([0.0, 9.0, 9.81, 19.4])
    text = io.StringIO()
    reporter = ProgressReporter(Console(file=text, width=200), clock=lambda: next(clock))
    with reporter:
        reporter.planned(plan)  # t = 0
        reporter(1, len(plan.grid))  # the first batch: start-up and model loading, 9 s
        reporter(2, len(plan.grid))  # the second: 0.81 s per tile
        reporter(3, len(plan.grid))
    assert text.getvalue().splitlines() == [
        f"huge: 146,689 tiles of {plan.grid.tile_size} px planned over 200,000 x 200,000 pixels",
        "tiles 1/146,689 (0.0 %), 9 s elapsed",
        "estimate: about 33 h 00 min for 146,689 tiles (0.81 s per tile, measured after the first batch)",
        "tiles 3/146,689 (0.0 %), 19 s elapsed, about 33 h 00 min left",
    ]


def test_without_a_terminal_progress_is_plain_lines(
    tmp_path: Path, cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    monkeypatch.setattr(progress, "MIN_WINDOW_S", 0.0)
    src = write_tif(tmp_path / "scene.tif", coordinate_image(300, 300))
    config = tmp_path / "small.yaml"
    config.write_text("tiling: {tile_size: 128, overlap: 16, batch_size: 1}\n")
    result = runner.invoke(
        app, ["segment", str(src), "--out", str(tmp_path / "out"), "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    planned = [ln for ln in lines if "tiles of" in ln and "planned over 300 x 300 pixels" in ln]
    assert len(planned) == 1 and planned[0].startswith("scene: ")
    total = int(planned[0].split()[1].replace(",", ""))
    assert sum(ln.startswith("estimate: about ") for ln in lines) == 1
    steps = [ln for ln in lines if ln.startswith("tiles ")]
    assert len(steps) == total and steps[-1].startswith(f"tiles {total}/{total} (100.0 %)")
    assert "\x1b[" not in result.output  # no terminal: no escape codes


def test_on_a_terminal_the_bar_shows_the_time_left() -> None:
    clock = iter([9.0, 9.81, 10.62, 11.43])
    text = io.StringIO()
    console = Console(file=text, width=120, force_terminal=True, color_system=None)
    reporter = ProgressReporter(console, clock=lambda: next(clock))
    with reporter:
        reporter(1, 100)  # the first batch (start-up included): no estimate yet
        assert reporter.eta_text(1, 100) == "estimating..."
        reporter(2, 100)  # 0.81 s per tile from here
        assert reporter.eta_text(2, 100) == "about 1 min 19 s left"  # 98 tiles at 0.81 s
        reporter(3, 100)
        reporter._bar.refresh()
    assert "about 1 min 19 s left" in text.getvalue() or "about 1 min 18 s left" in text.getvalue()
    assert reporter.eta_text(100, 100) == "done"
