"""GDAL's process settings: never applied on import, always where a process starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.io.gdal_env import GDAL_CACHE_MB, configure_process

ROOT = Path(__file__).resolve().parents[2]
#: Set by third-party code that some modules import: torch's inductor records its cache folder.
THIRD_PARTY = {"TORCHINDUCTOR_CACHE_DIR"}
SETTINGS = (
    "GDAL_CACHEMAX",
    "AWS_S3_ENDPOINT",
    "AWS_HTTPS",
    "AWS_VIRTUAL_HOSTING",
    "GDAL_DISABLE_READDIR_ON_OPEN",
)

IMPORT_ALL = """
import importlib, json, os, pkgutil, sys
before = dict(os.environ)
import pipeline, flows
names = sorted(
    m.name for pkg in (pipeline, flows) for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
    if not m.name.endswith("__main__")
)
for name in names:
    importlib.import_module(name)
after = dict(os.environ)
changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
print(json.dumps({"modules": len(names), "changed": changed}))
"""


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in SETTINGS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")


def test_importing_every_module_leaves_the_environment_alone() -> None:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # would be translated into AWS_S3_ENDPOINT on import
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["modules"] > 60 and set(report["changed"]) <= THIRD_PARTY


def test_configure_process_bounds_the_cache_and_sets_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    configure_process()
    assert os.environ["GDAL_CACHEMAX"] == str(GDAL_CACHE_MB)
    assert os.environ["AWS_S3_ENDPOINT"] == "127.0.0.1:9" and os.environ["AWS_HTTPS"] == "NO"
    monkeypatch.setenv("GDAL_CACHEMAX", "512")
    configure_process()
    assert os.environ["GDAL_CACHEMAX"] == "512"  # an explicit setting wins


def test_the_cli_configures_its_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.cli.main import app

    _clean_env(monkeypatch)
    result = CliRunner().invoke(app, ["segment", "--help"])
    assert result.exit_code == 0, result.output
    assert (
        os.environ["GDAL_CACHEMAX"] == str(GDAL_CACHE_MB) and os.environ["AWS_S3_ENDPOINT"] == "127.0.0.1:9"
    )


@pytest.mark.slow
def test_dask_workers_are_configured_by_their_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers start from an unconfigured environment; the plugin configures them."""
    from pipeline.run.cluster import connect

    _clean_env(monkeypatch)
    with connect(scheduler=None, n_workers=1) as client:
        seen = client.run(lambda: {key: os.environ.get(key) for key in SETTINGS})
    (worker,) = seen.values()
    assert worker["GDAL_CACHEMAX"] == str(GDAL_CACHE_MB) and worker["AWS_S3_ENDPOINT"] == "127.0.0.1:9"


def test_the_cog_cache_is_given_in_bytes() -> None:
    """rasterio hands an integer GDAL_CACHEMAX to GDALSetCacheMax64, which counts bytes: the COG
    conversion's cache of 64 was 64 bytes, and the conversion took 30 % more CPU."""
    from pipeline.io.gdal_env import BAND_CACHE_BYTES, STREAM_CACHE_BYTES

    assert STREAM_CACHE_BYTES >= 16 << 20 and BAND_CACHE_BYTES < 512 * 512


def test_cache_size_is_set_inside_and_restored_after_even_within_an_environment(tmp_path: Path) -> None:
    """Inside an open dataset's ``with`` block (a rasterio environment), a nested
    ``rasterio.Env(GDAL_CACHEMAX=...)`` did not restore the size on leaving."""
    import numpy as np
    import rasterio
    from rasterio.env import get_gdal_config

    from pipeline.io.gdal_env import cache_size

    size = get_gdal_config("GDAL_CACHEMAX")
    profile = dict(driver="GTiff", dtype="uint8", count=1, height=8, width=8)
    with rasterio.open(tmp_path / "s.tif", "w", **profile) as ds:
        with cache_size(3 << 20):
            assert get_gdal_config("GDAL_CACHEMAX") == 3 << 20
            ds.write(np.zeros((8, 8), np.uint8), 1)
        assert get_gdal_config("GDAL_CACHEMAX") == size
    assert get_gdal_config("GDAL_CACHEMAX") == size
