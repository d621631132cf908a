"""Checkpoints: safetensors weights + JSON header, atomic writes, no pickle on load."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch

from pipeline.core.digest import file_sha256
from pipeline.core.errors import CheckpointError, ConfigError, ModelError
from pipeline.model.checkpoint import (
    METADATA_KEY,
    CheckpointMetadata,
    LoadedModel,
    at_output_stride,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)
from pipeline.model.deeplab import DeepLabV3, ModelSpec, build_model

SPEC = ModelSpec(encoder="efficientnet-lite0", encoder_weights=None, output_stride=8)
META = CheckpointMetadata(
    gsd_m=0.3,
    threshold=0.45,
    training_data="inria-aerial austin tiles 1-36",
    split="train: 1-30, val: 31-36",
    validation_metrics={"iou": 0.78, "f1": 0.87},
    code_version="0.1.0+abc1234",
)


def _perturb(model: DeepLabV3) -> None:
    """Give BN statistics non-default values so the round trip checks buffers too."""
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 32))
    model.eval()


@pytest.fixture(scope="module")
def model() -> DeepLabV3:
    torch.manual_seed(0)
    built = build_model(SPEC)
    _perturb(built)
    return built


@pytest.fixture(scope="module")
def saved(model: DeepLabV3, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "deeplabv3-lite0-os8.safetensors"
    assert save_checkpoint(path, model=model, spec=SPEC, metadata=META) == path
    return path


def test_round_trip(model: DeepLabV3, saved: Path) -> None:
    loaded = load_checkpoint(saved)
    assert isinstance(loaded, LoadedModel)
    assert loaded.spec == SPEC
    assert loaded.id == "deeplabv3-lite0-os8"
    assert loaded.sha256 == file_sha256(saved) and len(loaded.sha256) == 64
    assert not loaded.model.training
    want, got = model.state_dict(), loaded.model.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    x = torch.rand(1, 3, 45, 61)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.model(x))
    assert loaded.info == CheckpointMetadata.from_json_dict(loaded.metadata)
    assert loaded.info.validation_metrics == META.validation_metrics
    assert loaded.info.created is not None and loaded.info.created.endswith("Z")


def test_checkpoint_file_is_readable_like_any_new_file(saved: Path) -> None:
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600


def test_header_contents(saved: Path) -> None:
    with safetensors.safe_open(str(saved), framework="pt") as f:
        header = f.metadata()
    assert list(header) == [METADATA_KEY]
    record = json.loads(header[METADATA_KEY])
    assert record == read_checkpoint_metadata(saved)
    assert record["architecture"] == "deeplabv3"
    assert record["encoder"] == "efficientnet-lite0"
    assert record["output_stride"] == 8
    assert record["atrous_rates"] == [12, 24, 36]
    assert record["in_channels"] == 3
    assert record["bands"] == ["red", "green", "blue"]
    assert record["normalization"] == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert record["gsd_m"] == 0.3
    assert record["classes"] == ["building", "boundary"]
    assert record["threshold"] == 0.45
    assert record["training_data"] == META.training_data
    assert record["split"] == META.split
    assert record["validation_metrics"] == {"iou": 0.78, "f1": 0.87}
    assert record["code_version"] == "0.1.0+abc1234"
    assert isinstance(record["created"], str)


def test_metadata_json_round_trip() -> None:
    meta = CheckpointMetadata(gsd_m=None, created="2025-01-01T00:00:00Z")
    assert CheckpointMetadata.from_json_dict(meta.to_json_dict()) == meta


def test_loading_never_unpickles(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle or torch.load was called while loading a checkpoint")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch.serialization, "load", forbidden)
    loaded = load_checkpoint(saved)
    assert loaded.spec == SPEC
    assert read_checkpoint_metadata(saved)["architecture"] == "deeplabv3"


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: checkpoint not found"):
        load_checkpoint(missing)
    with pytest.raises(OSError):  # CheckpointError is an OSError
        read_checkpoint_metadata(missing)


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_pickled_torch_file_is_refused(tmp_path: Path, model: DeepLabV3) -> None:
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(path)


def test_truncated_file(saved: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors"):
        load_checkpoint(path)


def test_safetensors_without_our_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no 'footprints' metadata"):
        load_checkpoint(path)


def test_incompatible_weights(saved: Path, tmp_path: Path) -> None:
    header = read_checkpoint_metadata(saved)
    path = tmp_path / "wrong.safetensors"
    tensors = {"encoder.model.conv_stem.weight": torch.zeros(1), "extra": torch.zeros(1)}
    safetensors.torch.save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(header)})
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "unet"}, "architecture"),
        ({"format_version": 99}, "format_version"),
        ({"output_stride": 32}, "invalid model"),
        ({"atrous_rates": [6, 12, 18]}, "atrous_rates"),
    ],
)
def test_bad_header(saved: Path, tmp_path: Path, change: dict[str, Any], message: str) -> None:
    header = read_checkpoint_metadata(saved) | change
    path = tmp_path / "bad.safetensors"
    tensors = safetensors.torch.load_file(str(saved))
    safetensors.torch.save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(header)})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_save_is_atomic_and_leaves_no_temp_files(model: DeepLabV3, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.safetensors"
    save_checkpoint(path, model=model, spec=SPEC, metadata=META)
    first = file_sha256(path)
    save_checkpoint(path, model=model, spec=SPEC, metadata=META)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.safetensors"]
    assert load_checkpoint(path).spec == SPEC
    assert len(first) == 64


def test_failed_save_keeps_old_file(
    model: DeepLabV3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model=model, spec=SPEC, metadata=META)
    before = file_sha256(path)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(CheckpointError, match="disk full"):
        save_checkpoint(path, model=model, spec=SPEC, metadata=META)
    assert file_sha256(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_save_rejects_inconsistent_inputs(model: DeepLabV3, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    other = ModelSpec(encoder_weights=None, output_stride=16)
    with pytest.raises(ModelError, match="does not describe the model"):
        save_checkpoint(path, model=model, spec=other, metadata=META)
    four_bands = CheckpointMetadata(bands=("r", "g", "b", "nir"), mean=(0.5,) * 4, std=(0.5,) * 4)
    with pytest.raises(ConfigError, match="in_channels=3"):
        save_checkpoint(path, model=model, spec=SPEC, metadata=four_bands)
    nan_metric = CheckpointMetadata(validation_metrics={"iou": float("nan")})
    with pytest.raises(ConfigError, match="NaN"):
        save_checkpoint(path, model=model, spec=SPEC, metadata=nan_metric)
    assert not path.exists()


def test_metadata_validation() -> None:
    with pytest.raises(ConfigError):
        CheckpointMetadata(bands=("r", "g"), mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ConfigError):
        CheckpointMetadata(threshold=1.5)
    with pytest.raises(ConfigError):
        CheckpointMetadata(gsd_m=-1.0)
    with pytest.raises(ConfigError):
        CheckpointMetadata(std=(0.5, 0.0, 0.5))


def test_half_precision_checkpoint_loads_back_to_the_rounded_weights(
    model: DeepLabV3, saved: Path, tmp_path: Path
) -> None:
    half = save_checkpoint(
        tmp_path / "half.safetensors", model=model, spec=model.spec, metadata=CheckpointMetadata(), half=True
    )
    assert half.stat().st_size < 0.6 * saved.stat().st_size
    loaded = load_checkpoint(half).model.state_dict()
    for key, value in model.state_dict().items():
        expected = value.half().to(value.dtype) if value.is_floating_point() else value
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], expected), key


def test_variant_script_runs_the_same_weights_at_output_stride_8(saved: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "os8.safetensors"
    done = subprocess.run(
        [sys.executable, "scripts/checkpoint_variant.py", str(saved), str(out), "--output-stride", "8",
         "--threshold", "0.55"],
        cwd=repo, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    a, b = load_checkpoint(saved), load_checkpoint(out)
    assert (b.spec.output_stride, b.spec.rates, b.info.threshold) == (8, (12, 24, 36), 0.55)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    same = subprocess.run([sys.executable, "scripts/checkpoint_variant.py", str(out), str(out)], cwd=repo)
    assert same.returncode != 0


def test_client_checks_tensors_against_the_header_digest_without_torch(
    model: DeepLabV3, saved: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    header = read_checkpoint_metadata(saved)
    assert len(header["tensors_sha256"]) == 64
    # a foreign file with the header copied onto other tensors
    foreign = tmp_path / "foreign.safetensors"
    tensors = {"encoder.x": torch.zeros(3, 4)}
    safetensors.torch.save_file(tensors, str(foreign), metadata={METADATA_KEY: json.dumps(header)})
    code = (
        "import sys\nfrom pipeline.model.infer import CheckpointSource\n"
        "from pipeline.core.errors import CheckpointError\n"
        f"CheckpointSource({str(saved)!r}).describe()\n"
        "assert 'torch' not in sys.modules, 'describe imported torch'\n"
        f"try:\n    CheckpointSource({str(foreign)!r}).describe()\nexcept CheckpointError as e:\n"
        "    print(e)\nelse:\n    sys.exit('foreign checkpoint accepted')\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "foreign.safetensors" in done.stdout and "re-save" in done.stdout  # a CheckpointError


def test_at_output_stride_keeps_the_weights_and_changes_the_lattice(model: DeepLabV3, saved: Path) -> None:
    """OS 8 -> 16 -> 8: the same tensors, the rates of each stride, and back to the same outputs."""
    loaded = load_checkpoint(saved)
    assert at_output_stride(loaded, 8) == (loaded.model, loaded.spec)  # already there: unchanged
    os16, spec16 = at_output_stride(loaded, 16)
    assert spec16.output_stride == 16 and os16.rates == (6, 12, 18) and loaded.model.rates == (12, 24, 36)
    want, got = loaded.model.state_dict(), os16.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.equal(loaded.model(x), os16(x))  # another lattice, another prediction
    path = save_checkpoint(saved.parent / "os16.safetensors", model=os16, spec=spec16, metadata=loaded.info)
    back, spec8 = at_output_stride(load_checkpoint(path), 8)
    assert spec8 == SPEC and not back.training
    with torch.no_grad():
        assert torch.equal(back(x), model.eval()(x))
    with pytest.raises(ModelError):
        at_output_stride(loaded, 32)
