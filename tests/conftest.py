"""Shared fixtures: tiny GeoTIFFs with a known CRS and transform, written to tmp_path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from numpy.typing import NDArray

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
DEMO_SCENE = REAL / "inria_austin" / "images" / "aerial_sample.tif"
DEMO_LABELS = REAL / "inria_austin" / "labels" / "aerial_sample.tif"
UTM_CRS = "EPSG:32614"
ORIGIN = Affine(0.5, 0.0, 600000.0, 0.0, -0.5, 3300000.0)

requires_real = pytest.mark.skipif(not REAL.exists(), reason="../shared/data/real is absent")


def coordinate_image(height: int, width: int, *, bands: int = 3) -> NDArray[np.uint8]:
    """Pixels that encode their own position: band 1 = row % 251, band 2 = col % 251, band 3 mixes."""
    rows, cols = np.mgrid[0:height, 0:width]
    planes = [rows % 251, cols % 251, (rows // 251 * 7 + cols // 251 * 13) % 251]
    return np.stack(planes[:bands] + [planes[0]] * max(0, bands - 3)).astype(np.uint8)


def write_tif(
    path: Path,
    data: NDArray[Any],
    *,
    crs: str | None = UTM_CRS,
    transform: Affine = ORIGIN,
    nodata: float | None = None,
    tiled: bool = False,
    block: int = 256,
    **extra: Any,
) -> Path:
    if data.ndim == 2:
        data = data[None]
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        **extra,
    }
    if tiled:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


@pytest.fixture
def make_tif(tmp_path: Path) -> Any:
    counter = {"n": 0}

    def make(data: NDArray[Any], name: str | None = None, **kw: Any) -> Path:
        counter["n"] += 1
        return write_tif(tmp_path / (name or f"in{counter['n']}.tif"), data, **kw)

    return make


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """One shared Dask cluster (worker processes) for a module's CLI runs, which find it as active."""
    from pipeline.run.cluster import shared_client

    with shared_client(scheduler=None, n_workers=1):
        yield


@pytest.fixture(scope="module")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Prefect's test harness (a temporary server) with its home in a temporary folder."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo scene segmented once per session with the defaults (OUTDIR); skipped without it."""
    if not DEMO_SCENE.exists():
        pytest.skip("../shared/data/real is absent (the demo scene)")
    from typer.testing import CliRunner

    from pipeline.cli.main import app

    out = tmp_path_factory.mktemp("demo") / "out"
    result = CliRunner().invoke(app, ["segment", str(DEMO_SCENE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out
