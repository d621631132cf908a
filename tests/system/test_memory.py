"""Memory stays flat as rasters grow: 4x the pixels cost < 1.3x the peak RSS."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.rss import run_with_peak_rss

pytestmark = pytest.mark.slow


def write_textured(path: Path, size: int) -> Path:
    """A tiled RGB GeoTIFF written block by block (never whole in memory)."""
    profile = {
        "driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32614", "transform": rasterio.transform.from_origin(600000, 3300000, 0.5, 0.5),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
    }  # fmt: skip
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as ds:
        for r in range(0, size, 512):
            block = rng.integers(0, 255, size=(3, 512, size), dtype=np.uint8)
            block[:, ::7] = 255
            ds.write(block, window=rasterio.windows.Window(0, r, size, 512))
    return path


def peak_for(tmp: Path, size: int) -> int:
    src = write_textured(tmp / f"scene{size}.tif", size)
    cmd = [sys.executable, "-m", "pipeline.cli", "segment", str(src), "--out", str(tmp / f"out{size}")]
    rc, peak, err = run_with_peak_rss(cmd)
    assert rc == 0, err[-2000:]
    return peak


def test_four_times_the_pixels_cost_less_than_1_3x_the_memory(tmp_path: Path) -> None:
    small = peak_for(tmp_path, 2048)
    large = peak_for(tmp_path, 4096)
    print(f"peak RSS 2048^2: {small / 2**20:.0f} MiB, 4096^2: {large / 2**20:.0f} MiB")
    assert large < 1.3 * small


def test_the_workers_of_a_cpu_run_never_import_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default CPU runtime (OpenVINO) runs on arrays: neither the workers nor the client hold
    torch (about 480 MB of RSS each with the CUDA build), from the first run on a machine."""
    pytest.importorskip("openvino")
    from pipeline.config import default_checkpoint, load_config
    from pipeline.run.cluster import connect
    from pipeline.run.scene import segment_scene

    ckpt = default_checkpoint()
    if ckpt is None:
        pytest.skip("no checkpoint in models/")
    config = load_config(**{"model.device": "cpu"})
    assert config.model.runtime == "auto"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # cold: the export runs too
    with connect(scheduler=None, n_workers=1) as client:
        segment_scene(
            input_path=str(write_textured(tmp_path / "scene.tif", 1024)), out_dir=tmp_path / "out",
            config=config, model_path=str(ckpt), client=client,
        )  # fmt: skip
        seen = client.run(lambda: ("torch" in sys.modules, "openvino" in sys.modules))
    assert list(seen.values()) == [(False, True)]
    assert (tmp_path / "out" / "buildings.geojson").is_file()
    assert list((tmp_path / "cache" / "footprints" / "onnx").glob("*.onnx"))
