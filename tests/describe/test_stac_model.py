"""The shipped model's STAC MLM item: in sync with the checkpoint, and valid offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pystac
import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.core.digest import file_sha256
from pipeline.describe.stac_model import model_json, total_parameters
from pipeline.model.header import read_checkpoint_metadata
from tests.stacschemas import validate

MODELS = Path(__file__).resolve().parents[2] / "models"
SHIPPED = MODELS / "deeplabv3-lite0-buildings.safetensors"
COMMITTED = MODELS / "deeplabv3-lite0-buildings.mlm.json"
runner = CliRunner()


@pytest.mark.parametrize("checkpoint", sorted(MODELS.glob("*.safetensors")), ids=lambda p: p.stem)
def test_every_committed_checkpoint_has_its_mlm_json_in_sync(checkpoint: Path) -> None:
    """The default model and the options beside it (``-os16``) each have an up-to-date ``NAME.mlm.json``."""
    committed = checkpoint.with_suffix(".mlm.json")
    assert committed.is_file(), f"run `footprints model-stac {checkpoint}` and commit the result"
    assert committed.read_text() == model_json(checkpoint), f"run `footprints model-stac {checkpoint}`"


def test_mlm_item_validates_offline() -> None:
    item = json.loads(COMMITTED.read_text())
    checked = validate(item)
    assert "https://stac-extensions.github.io/mlm/v1.4.0/schema.json" in checked


def test_mlm_item_describes_the_model() -> None:
    item, meta = json.loads(COMMITTED.read_text()), read_checkpoint_metadata(SHIPPED)
    props = item["properties"]
    assert props["mlm:architecture"] == "DeepLabV3" and props["mlm:framework"] == "pytorch"
    assert props["gsd"] == meta["gsd_m"] == 0.35
    (inp,) = props["mlm:input"]
    assert inp["bands"] == ["red", "green", "blue"]
    assert inp["value_scaling"] == [{"type": "z-score", "mean": 127.5, "stddev": 127.5}] * 3  # (x/255-.5)/.5
    (out,) = props["mlm:output"]
    assert [c["name"] for c in out["classification:classes"]] == meta["classes"]
    assert meta["classes"][0] == "building" and set(meta["classes"][1:]) <= {"boundary", "contact"}
    assert props["mlm:hyperparameters"]["threshold"] == meta["threshold"]
    asset = item["assets"]["model"]
    assert "mlm:model" in asset["roles"] and asset["href"] == f"./{SHIPPED.name}"
    assert (
        asset["file:checksum"] == "1220" + file_sha256(SHIPPED)
        and asset["file:size"] == SHIPPED.stat().st_size
    )
    assert [b["name"] for b in asset["raster:bands"]] == inp["bands"]
    assert props["mlm:total_parameters"] == total_parameters(SHIPPED) > 5_000_000


def test_an_invalid_mlm_item_fails() -> None:
    item = json.loads(COMMITTED.read_text())
    item["assets"]["model"]["roles"] = ["data"]  # no asset with the mlm:model role
    with pytest.raises(pystac.errors.STACValidationError):
        validate(item)


def test_model_stac_command_writes_and_checks(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.safetensors"
    shutil.copy(SHIPPED, ckpt)
    assert runner.invoke(app, ["model-stac", str(ckpt), "--check"]).exit_code == 2
    result = runner.invoke(app, ["model-stac", str(ckpt)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.mlm.json").read_text())["id"] == "m"
    checked = runner.invoke(app, ["model-stac", str(ckpt), "--check"])
    assert checked.exit_code == 0 and "up to date" in checked.output


def test_version_flag() -> None:
    import pipeline

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"footprints {pipeline.__version__}"
