"""S3 end to end against moto's standalone server on loopback: the bucket flow and the CLI.

Reads go through GDAL's /vsis3/ (HTTP range requests, checked in the server's log),
outputs are uploaded back to the bucket, and the secret key never shows up in an
output, a manifest, a log or an error message.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rasterio
from typer.testing import CliRunner

from pipeline.describe.output_files import OUTPUT_NAMES
from tests.conftest import DEMO_SCENE, REAL, requires_real

pytestmark = [pytest.mark.slow, requires_real]

RIO = REAL / "spacenet1_rio" / "3band" / "3band_013022223130_Public_img55.tif"
SECRET = "moto-Secret-Key-4f2a9c"
OUTPUTS = set(OUTPUT_NAMES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """moto_server on 127.0.0.1, the AWS variables pointing at it, and a bucket with two scenes."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    env = {
        "AWS_ACCESS_KEY_ID": "footprints-test", "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }  # fmt: skip
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()}") from None
                time.sleep(0.2)
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]})
        fs.mkdir("imagery")
        fs.mkdir("footprints")
        fs.put_file(str(DEMO_SCENE), "imagery/scenes/austin.tif")
        fs.put_file(str(RIO), "imagery/scenes/rio55.tif")
        fs.pipe_file("imagery/scenes/notes.txt", b"not a scene")
        yield {"fs": fs, "log": log, "env": env}
    finally:
        mp.undo()
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _object_gets(log: Path, key: str) -> list[str]:
    """HTTP status codes of every GET of ``key`` in the server's request log."""
    return re.findall(rf'"GET /{re.escape(key)} HTTP/1\.1" (\d+)', log.read_text())


def test_bucket_flow_reads_through_vsis3_and_writes_back(
    s3: dict[str, Any], prefect_harness: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flows.segment_bucket import segment_bucket_flow

    fs = s3["fs"]
    config = tmp_path / "small.yaml"
    config.write_text("tiling: {tile_size: 256, overlap: 32}\n")
    summary = segment_bucket_flow(
        input_url="s3://imagery/scenes/", output_url="s3://footprints/buildings", config=str(config),
        concurrency=2,  # both scenes at once, on one shared Dask cluster
    )  # fmt: skip
    assert summary["scenes"] == 2 and summary["failed"] == []
    manifest = json.loads(fs.cat("footprints/buildings/manifest.json"))
    assert [s["scene"] for s in manifest["scenes"]] == ["austin", "rio55"]
    assert manifest["summary"]["done"] == 2
    assert {"index.html", "collection.json"} <= {p.rsplit("/", 1)[-1] for p in fs.ls("footprints/buildings")}
    collection = json.loads(fs.cat("footprints/buildings/collection.json"))
    assert [lk["href"] for lk in collection["links"] if lk["rel"] == "item"] == [
        "./austin/item.json", "./rio55/item.json"
    ]  # fmt: skip
    for scene in ("austin", "rio55"):
        names = {p.rsplit("/", 1)[-1] for p in fs.ls(f"footprints/buildings/{scene}")}
        assert names == OUTPUTS  # nothing else, no partial or temporary object
        record = json.loads(fs.cat(f"footprints/buildings/{scene}/run.json"))
        assert record["input"]["url"] == f"s3://imagery/scenes/{scene}.tif"
        assert record["input"]["path"] == f"/vsis3/imagery/scenes/{scene}.tif"
        assert record["input"]["etag"] and record["counts"]["tiles_inferred"] > 0
        # every read of the image was a ranged GET (206 Partial Content), never a download
        codes = _object_gets(s3["log"], f"imagery/scenes/{scene}.tif")
        assert codes and set(codes) == {"206"}, codes
    with (
        rasterio.open("/vsis3/footprints/buildings/austin/probability.tif") as out,
        rasterio.open(DEMO_SCENE) as src,
    ):
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
    # no credential anywhere: outputs, manifests, logs
    for key in fs.find("footprints"):
        if key.endswith((".json", ".geojson")):
            assert SECRET not in fs.cat(key).decode()
    assert SECRET not in caplog.text

    again = segment_bucket_flow(
        input_url="s3://imagery/scenes", output_url="s3://footprints/buildings", config=str(config)
    )
    assert again["failed"] == []
    manifest = json.loads(fs.cat("footprints/buildings/manifest.json"))
    assert manifest["summary"]["up-to-date"] == 2  # a finished bucket does no inference at all
    assert manifest["tiles_inferred_now"] == 0


def test_cli_segments_an_s3_scene_into_s3(s3: dict[str, Any], tmp_path: Path) -> None:
    from pipeline.cli.main import app

    fs = s3["fs"]
    runner = CliRunner()
    result = runner.invoke(
        app, ["segment", "s3://imagery/scenes/rio55.tif", "--out", "s3://footprints/cli/rio55"]
    )
    assert result.exit_code == 0, result.output
    assert {p.rsplit("/", 1)[-1] for p in fs.ls("footprints/cli/rio55")} == OUTPUTS
    mask = fs.cat("footprints/cli/rio55/mask.tif")
    fs.rm("footprints/cli/rio55/mask.tif")  # a lost output: published again, not "up to date"
    again = runner.invoke(
        app, ["segment", "s3://imagery/scenes/rio55.tif", "--out", "s3://footprints/cli/rio55"]
    )
    assert again.exit_code == 0 and "up to date" not in again.output, again.output
    assert fs.cat("footprints/cli/rio55/mask.tif") == mask
    other = runner.invoke(
        app, ["segment", "s3://imagery/scenes/austin.tif", "--out", "s3://footprints/cli/rio55"]
    )
    assert other.exit_code == 2 and "s3://imagery/scenes/rio55.tif" in other.output  # its owner
    assert fs.cat("footprints/cli/rio55/mask.tif") == mask
    missing = runner.invoke(
        app, ["segment", "s3://imagery/scenes/nope.tif", "--out", "s3://footprints/cli/x"]
    )
    assert missing.exit_code == 2
    assert "s3://imagery/scenes/nope.tif: object not found" in missing.output
    assert SECRET not in result.output + missing.output
    assert not fs.exists("footprints/cli/x")
