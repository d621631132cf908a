"""The cases of the fault matrix (tests/system/test_faults.py): one builder per bad input, config,
checkpoint, URL and output folder, each returning the CLI call and what its error line must name."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import safetensors.torch
import torch
from affine import Affine

from pipeline.config import default_checkpoint
from pipeline.model.header import METADATA_KEY, read_checkpoint_metadata
from pipeline.run.outdir import LOCK_NAME
from tests.clitools import publish_fake, write_lock
from tests.conftest import coordinate_image, write_tif


@dataclass
class Case:
    """A CLI call that must fail: its arguments, and what its one error line must name."""

    args: list[str]
    file: str
    problem: str
    fix: str
    env: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  # text that must not be printed (a secret)


Builder = Callable[[Path, pytest.MonkeyPatch], Case]
CASES: dict[str, Builder] = {}


def case(name: str) -> Callable[[Builder], Builder]:
    def register(build: Builder) -> Builder:
        CASES[name] = build
        return build

    return register


def _scene(tmp: Path, name: str = "scene.tif", *, size: tuple[int, int] = (64, 64), **kw: Any) -> Path:
    return write_tif(tmp / name, coordinate_image(*size), **kw)


def _segment(src: Path | str, tmp: Path, *extra: str) -> list[str]:
    return ["segment", str(src), "--out", str(tmp / "out"), *extra]


def _config(tmp: Path, text: str) -> Path:
    path = tmp / "bad.yaml"
    path.write_text(text)
    return path


# --- inputs ---------------------------------------------------------------------------


@case("missing-file")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    return Case(_segment(tmp / "missing.tif", tmp), "missing.tif", "not found", "check the path")


@case("folder")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    (tmp / "scenes").mkdir()
    return Case(_segment(tmp / "scenes", tmp), "scenes", "is a folder", "pass one scene file")


@case("zero-byte-file")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    (tmp / "empty.tif").write_bytes(b"")
    return Case(_segment(tmp / "empty.tif", tmp), "empty.tif", "0 bytes", "re-download")


@case("text-file")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    (tmp / "table.tif").write_text("id,name\n1,a\n")
    return Case(_segment(tmp / "table.tif", tmp), "table.tif", "not a raster", "pass a GeoTIFF")


@case("no-crs")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    return Case(_segment(_scene(tmp, crs=None), tmp), "scene.tif", "has no CRS", "assign one")


@case("two-bands")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    src = write_tif(tmp / "two.tif", coordinate_image(64, 64, bands=2))
    return Case(_segment(src, tmp), "two.tif", "has 2 bands", "set input.bands")


@case("zero-size")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    (tmp / "zero.vrt").write_text(
        '<VRTDataset rasterXSize="0" rasterYSize="0"><SRS>EPSG:32614</SRS>'
        '<VRTRasterBand dataType="Byte" band="1"/></VRTDataset>'
    )
    return Case(_segment(tmp / "zero.vrt", tmp), "zero.vrt", "zero size", "re-export")


@case("bands-out-of-range")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    cfg = _config(tmp, "input: {bands: [1, 2, 7]}\n")
    return Case(
        _segment(_scene(tmp), tmp, "--config", str(cfg)), "scene.tif", "band(s) [7]", "choose indexes"
    )


@case("sheared-grid")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    src = _scene(tmp, "sheared.tif", transform=Affine(0.5, 0.2, 600000.0, 0.0, -0.5, 3300000.0))
    return Case(_segment(src, tmp), "sheared.tif", "sheared", "gdalwarp")


@case("vrt-source-missing")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">gone.tif</SourceFilename><SourceBand>{b}</SourceBand>'
        "</SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3)
    )
    (tmp / "mosaic.vrt").write_text(
        '<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:32614</SRS>'
        f"<GeoTransform>600000, 0.5, 0, 3300000, 0, -0.5</GeoTransform>{bands}</VRTDataset>"
    )
    return Case(_segment(tmp / "mosaic.vrt", tmp), "mosaic.vrt", f"VRT source {tmp / 'gone.tif'}", "restore")


def _cog(tmp: Path, name: str) -> Path:
    """A deflated 512² COG (its directory first, then its 64² tiles): random, so it does not shrink."""
    rng = np.random.default_rng(0)
    plain = write_tif(tmp / "plain.tif", rng.integers(0, 255, (3, 512, 512), dtype=np.uint8))
    path = tmp / name
    rasterio.shutil.copy(plain, path, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=64, OVERVIEWS="NONE")
    plain.unlink()
    return path


@case("truncated-geotiff")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    path = _cog(tmp, "truncated.tif")
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])  # opens; its last tiles are gone
    return Case(_segment(path, tmp), "truncated.tif", "failed", "re-download")


@case("damaged-tile")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    path = _cog(tmp, "damaged.tif")
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_3_3", "TIFF", bidx=1))
    data = bytearray(path.read_bytes())
    data[offset : offset + 200] = bytes(range(200))  # not a deflate stream any more
    path.write_bytes(bytes(data))
    return Case(_segment(path, tmp), "damaged.tif", "failed", "re-download")


@case("all-nodata")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    src = write_tif(tmp / "blank.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)
    return Case(_segment(src, tmp), "blank.tif", "every pixel is nodata", "input.nodata")


@case("all-nan")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    src = write_tif(tmp / "nan.tif", np.full((3, 64, 64), np.nan, np.float32))
    return Case(_segment(src, tmp), "nan.tif", "every pixel is nodata", "input.nodata")


# --- configs --------------------------------------------------------------------------


@case("config-missing")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    return Case(
        _segment(_scene(tmp), tmp, "--config", str(tmp / "nope.yaml")), "nope.yaml", "not found", "pass"
    )


@case("config-not-yaml")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    cfg = _config(tmp, "tiling: {tile_size: [\n")
    return Case(
        _segment(_scene(tmp), tmp, "--config", str(cfg)), "bad.yaml", "not valid YAML", "fix the syntax"
    )


@case("config-not-a-mapping")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    cfg = _config(tmp, "[1, 2]\n")
    return Case(
        _segment(_scene(tmp), tmp, "--config", str(cfg)), "bad.yaml", "must be a mapping", "see configs/"
    )


@case("config-unknown-key")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    cfg = _config(tmp, "tiling: {tile_sise: 512}\n")
    return Case(
        _segment(_scene(tmp), tmp, "--config", str(cfg)), "bad.yaml", "tiling.tile_sise", "configs/default"
    )


@case("config-bad-value")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    cfg = _config(tmp, "model: {output_stride: 32}\n")
    return Case(
        _segment(_scene(tmp), tmp, "--config", str(cfg)), "bad.yaml", "model.output_stride", "valid values"
    )


@case("config-every-error")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    cfg = _config(tmp, "tiling: {tile_size: 8}\nmodel: {flips: 2}\nsplit: {grow_m: -1}\n")
    args = _segment(_scene(tmp), tmp, "--config", str(cfg))
    return Case(args, "bad.yaml", "3 problems: tiling.tile_size", "model.flips")


@case("config-checkpoint-missing")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    cfg = _config(tmp, f"model: {{checkpoint: {tmp / 'gone.safetensors'}}}\n")
    args = _segment(_scene(tmp), tmp, "--config", str(cfg))
    return Case(args, "gone.safetensors", "checkpoint not found", "existing .safetensors")


# --- checkpoints ----------------------------------------------------------------------


def _model_case(tmp: Path, path: Path, problem: str, fix: str) -> Case:
    return Case(_segment(_scene(tmp), tmp, "--model", str(path)), path.name, problem, fix)


def _shipped_header() -> dict[str, Any]:
    shipped = default_checkpoint()
    assert shipped is not None
    return read_checkpoint_metadata(shipped)


@case("checkpoint-missing")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    return _model_case(tmp, tmp / "nope.safetensors", "checkpoint not found", "pass the path")


@case("checkpoint-garbage")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    (tmp / "garbage.safetensors").write_bytes(b"not a checkpoint")
    return _model_case(tmp, tmp / "garbage.safetensors", "not a readable safetensors", "save_checkpoint")


@case("checkpoint-pickled")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    torch.save({"w": torch.zeros(2)}, tmp / "model.pth")
    return _model_case(tmp, tmp / "model.pth", "not a readable safetensors", "pickled .pt/.pth files")


@case("checkpoint-no-header")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(tmp / "plain.safetensors"))
    return _model_case(tmp, tmp / "plain.safetensors", "no 'footprints' metadata", "re-save it")


@case("checkpoint-truncated")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    shipped = default_checkpoint()
    assert shipped is not None
    data = shipped.read_bytes()
    (tmp / "cut.safetensors").write_bytes(data[: len(data) // 2])
    return _model_case(tmp, tmp / "cut.safetensors", "not a readable safetensors", "save_checkpoint")


@case("checkpoint-foreign-weights")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    """Another model's tensors under a header copied from the shipped checkpoint."""
    tensors = {"encoder.model.conv_stem.weight": torch.zeros(1), "classifier.weight": torch.zeros(3, 3)}
    path = tmp / "foreign.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(_shipped_header())})
    return _model_case(tmp, path, "weights do not fit", "re-save")


@case("checkpoint-other-architecture")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    path = tmp / "unet.safetensors"
    header = {**_shipped_header(), "architecture": "unet"}
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(path), metadata={METADATA_KEY: json.dumps(header)})
    return _model_case(tmp, path, "is not 'deeplabv3'", "DeepLabV3 checkpoint")


# --- URLs -----------------------------------------------------------------------------


@case("credentials-in-input-url")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    args = _segment("s3://AKIAEXAMPLE:s3cr3t-value@imagery/x.tif", tmp)
    return Case(args, "imagery/x.tif", "credentials in the URL", "AWS_ACCESS_KEY_ID", absent=("s3cr3t",))


@case("credentials-in-output-url")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    args = ["segment", str(_scene(tmp)), "--out", "s3://AKIAEXAMPLE:s3cr3t-value@results/run"]
    return Case(args, "results/run", "credentials in the URL", "AWS_PROFILE", absent=("s3cr3t",))


@case("unsupported-scheme")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    return Case(_segment("gs://imagery/x.tif", tmp), "gs://imagery/x.tif", "unsupported URL scheme", "s3://")


@case("s3-url-without-bucket")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    return Case(_segment("s3:///x.tif", tmp), "s3:///x.tif", "no bucket", "s3://BUCKET/PREFIX")


@case("s3-key-above-the-bucket")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    args = ["segment", str(_scene(tmp)), "--out", "s3://results/run/../../elsewhere"]
    return Case(args, "s3://results/run/../../elsewhere", "climbs above the bucket", "without '..'")


# --- the output folder ----------------------------------------------------------------


@case("input-is-an-output")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    (tmp / "out").mkdir()
    src = write_tif(tmp / "out" / "probability.tif", coordinate_image(64, 64))
    return Case(_segment(src, tmp), "probability.tif", "would be overwritten", "another --out")


@case("another-scenes-outputs")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    publish_fake(tmp / "out", scene="/data/other.tif")
    return Case(_segment(_scene(tmp), tmp), str(tmp / "out"), "another scene, /data/other.tif", "--force")


@case("files-footprints-did-not-write")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    (tmp / "out").mkdir()
    (tmp / "out" / "mask.tif").write_bytes(b"the user's own mask")
    return Case(_segment(_scene(tmp), tmp), str(tmp / "out"), "no run.json", "--force")


@case("outdir-held-by-a-live-run")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    write_lock(tmp / "out", pid=os.getpid(), token="other")
    return Case(_segment(_scene(tmp), tmp), LOCK_NAME, f"PID {os.getpid()}", "wait for it to finish")


@case("outdir-is-a-file")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    (tmp / "out").write_text("a file")
    return Case(
        _segment(_scene(tmp), tmp), str(tmp / "out"), "cannot create the output folder", "writable --out"
    )


@case("outdir-under-a-file")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    (tmp / "notes").write_text("a file")
    args = ["segment", str(_scene(tmp)), "--out", str(tmp / "notes" / "out")]
    return Case(args, str(tmp / "notes" / "out"), "cannot create the output folder", "writable --out")


@case("restart-state-unwritable")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    (tmp / ".footprints-state").write_text("a file where the state folder goes")
    (tmp / "xdg").write_text("and one where $XDG_STATE_HOME goes")
    env = {"XDG_STATE_HOME": str(tmp / "xdg")}
    return Case(
        _segment(_scene(tmp), tmp), ".footprints-state", "restart state", "restart.enabled: false", env
    )


@case("no-space-before-starting")
def _(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    usage = shutil.disk_usage(tmp)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=10 * 2**20))
    return Case(_segment(_scene(tmp), tmp), str(tmp / "out"), "MB needed, 10 MB free", "free some space")


@case("no-space-while-writing")
def _(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    def full(*_: Any, **__: Any) -> None:
        raise rasterio.errors.RasterioIOError("TIFFAppendToStrip: Write error: No space left on device")

    monkeypatch.setattr("pipeline.io.write.to_cog", full)
    return Case(_segment(_scene(tmp), tmp), str(tmp / "out"), "no space left on /", "free some space")


@case("outdir-unwritable-while-publishing")
def _(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    def denied(local: Path, target: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", target.path)

    monkeypatch.setattr("pipeline.run.outdir.upload", denied)
    return Case(
        _segment(_scene(tmp), tmp), str(tmp / "out"), "cannot write to this output folder", "writable"
    )


# --- vectorize ------------------------------------------------------------------------


def _vectorize(path: Path, tmp: Path, out: str = "polygons.geojson") -> list[str]:
    return ["vectorize", str(path), "--out", str(tmp / out)]


@case("vectorize-an-image")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    return Case(_vectorize(_scene(tmp, "photo.tif"), tmp), "photo.tif", "has 3 bands", "one-band mask")


@case("vectorize-missing")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    return Case(_vectorize(tmp / "mask.tif", tmp), "mask.tif", "file not found", "check the path")


@case("vectorize-float")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    path = write_tif(tmp / "prob.tif", np.zeros((32, 32), np.float32))
    return Case(_vectorize(path, tmp), "prob.tif", "not integer region values", "gdal_translate")


@case("vectorize-no-crs")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    path = write_tif(tmp / "mask.tif", np.ones((32, 32), np.uint8), crs=None)
    return Case(_vectorize(path, tmp), "mask.tif", "no CRS", "gdal_edit")


@case("vectorize-unknown-format")
def _(tmp: Path, _: pytest.MonkeyPatch) -> Case:
    path = write_tif(tmp / "mask.tif", np.ones((32, 32), np.uint8))
    return Case(
        _vectorize(path, tmp, "polygons.shp"), "polygons.shp", "unsupported output extension", ".gpkg"
    )
