"""Training: loss, schedule, threshold choice, a tiny run that writes a loadable checkpoint, resume, CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import typer
import yaml
from numpy.typing import NDArray
from rasterio.transform import Affine
from typer.testing import CliRunner

import pipeline.training.train as train_module
from pipeline.cli.train import register
from pipeline.core.errors import CheckpointError, ConfigError
from pipeline.model.checkpoint import load_checkpoint, read_checkpoint_metadata
from pipeline.training.losses import segmentation_loss
from pipeline.training.options import TrainOptions
from pipeline.training.state import lr_factor, state_path
from pipeline.training.validation import THRESHOLDS, choose_threshold

# --------------------------------------------------------------------------- helpers


def _write_tif(path: Path, bands: NDArray[np.uint8], gsd: float) -> None:
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": bands.shape[1],
        "width": bands.shape[2],
        "count": bands.shape[0],
        "dtype": "uint8",
        "crs": "EPSG:32631",
        "transform": Affine(gsd, 0.0, 500000.0, 0.0, -gsd, 5000000.0),
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(bands)


def _scene(
    tmp: Path, name: str, size: int, box: tuple[int, int, int, int], gsd: float = 1.0
) -> dict[str, str]:
    rng = np.random.default_rng(size)
    image = rng.integers(40, 120, size=(3, size, size), dtype=np.uint8)
    mask = np.zeros((1, size, size), np.uint8)
    r0, r1, c0, c1 = box
    mask[0, r0:r1, c0:c1] = 255
    image[:, r0:r1, c0:c1] += 100  # bright roofs
    _write_tif(tmp / f"{name}.tif", image, gsd)
    _write_tif(tmp / f"{name}_gt.tif", mask, gsd)
    return {"image": f"{name}.tif", "label": f"{name}_gt.tif"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("data")
    items = [
        _scene(tmp, "a", 96, (20, 50, 20, 60)),
        _scene(tmp, "b", 80, (10, 30, 40, 70), gsd=0.5),
        {**_scene(tmp, "v", 70, (10, 40, 10, 40)), "split": "val"},
    ]
    path = tmp / "DATASET.yaml"
    path.write_text(yaml.safe_dump({"gsd_m": 1.0, "sources": {"synthetic": {"items": items}}}))
    return path


TINY: dict[str, Any] = {"crop": 64, "batch_size": 2, "progress": False, "threads": 2}


def train(
    *, resume: bool = False, threads: int | None = None, progress: bool = True, **options: Any
) -> dict[str, Any]:
    """:func:`pipeline.training.train.train` with the options as keywords (paths as strings)."""
    opts = TrainOptions(**{k: str(v) if isinstance(v, Path) else v for k, v in options.items()})
    return train_module.train(opts, resume=resume, threads=threads, progress=progress)


# --------------------------------------------------------------------------- loss, schedule, threshold


def test_loss_ignores_nodata_pixels() -> None:
    torch.manual_seed(0)
    target = torch.zeros(2, 2, 16, 16, dtype=torch.uint8)
    target[:, 0, 4:12, 4:12] = 1
    target[:, 1, 4:12, 4] = 1
    target[:, :, :, 14:] = 255
    logits = torch.randn(2, 2, 16, 16)
    loss, parts = segmentation_loss(logits, target)
    changed = logits.clone()
    changed[:, :, :, 14:] = 50.0  # only no-data pixels differ
    assert segmentation_loss(changed, target)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    assert set(parts) == {"bce", "dice", "boundary"}
    perfect = (target.float() * 2 - 1) * 20
    assert segmentation_loss(perfect, target)[0].item() < 0.01 < loss.item()
    half = segmentation_loss(logits, target, boundary_weight=0.0)[0].item()
    assert loss.item() - half == pytest.approx(0.5 * parts["boundary"].item(), rel=1e-5)


def test_boundary_dice_adds_a_soft_dice_term_on_the_second_class() -> None:
    torch.manual_seed(1)
    target = torch.zeros(2, 2, 16, 16, dtype=torch.uint8)
    target[:, 0, 4:12, 4:12] = 1
    target[:, 1, 4:12, 7:9] = 1
    target[:, :, 14:, :] = 255
    logits = torch.randn(2, 2, 16, 16)
    plain, _ = segmentation_loss(logits, target, boundary_weight=0.5)
    total, parts = segmentation_loss(logits, target, boundary_weight=0.5, boundary_dice=True)
    valid = (target[:, 1] != 255).float()
    prob = torch.sigmoid(logits[:, 1]) * valid
    truth = (target[:, 1] == 1).float()
    dice = 1 - (2 * (prob * truth).sum() + 1) / (prob.sum() + truth.sum() + 1)
    assert parts["boundary_dice"].item() == pytest.approx(dice.item(), rel=1e-6)
    assert total.item() - plain.item() == pytest.approx(0.5 * dice.item(), rel=1e-5)
    perfect = (target.float() * 2 - 1) * 20
    assert segmentation_loss(perfect, target, boundary_dice=True)[0].item() < 0.01


def test_loss_of_an_all_nodata_batch_is_finite() -> None:
    target = torch.full((2, 2, 8, 8), 255, dtype=torch.uint8)
    loss, _ = segmentation_loss(torch.randn(2, 2, 8, 8, requires_grad=True), target)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)


def test_lr_schedule_warms_up_then_decays() -> None:
    factors = [lr_factor(s, total=100, warmup=5) for s in range(100)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == pytest.approx(1.0)
    assert factors[5] == pytest.approx(1.0) and all(a >= b for a, b in itertools.pairwise(factors[5:]))
    assert lr_factor(100, total=100, warmup=5) == pytest.approx(0.01)


def test_threshold_is_chosen_by_mean_iou_over_sources() -> None:
    hist = np.zeros((2, 256), np.int64)  # per uint8 probability, as the product writes them
    hist[0, 158] = 80  # buildings at p = 0.62
    hist[0, 51] = 20  # missed buildings at p = 0.20
    hist[1, 140] = 30  # background at p = 0.55: in the product's mask at 0.55 (u8 >= 140), not at 0.6
    hist[1, 25] = 900
    threshold, metrics = choose_threshold({"a": hist, "b": hist})
    assert threshold in THRESHOLDS and threshold == pytest.approx(0.6)
    assert metrics["iou"] == pytest.approx(0.8) and metrics["iou_pooled"] == pytest.approx(0.8)
    assert metrics["iou_at_0.5"] == pytest.approx(80 / 130) and metrics["iou_a"] == pytest.approx(0.8)


def test_threshold_counts_pixels_as_the_products_mask_does() -> None:
    # the product's mask at 0.35 is u8 >= round(0.35 x 255) = 89: a building at 89 is found (at
    # 0.35 x 255 = 89.25 a float comparison would miss it)
    hist = np.zeros((2, 256), np.int64)
    hist[0, 89] = 10
    hist[1, 88] = 10
    assert choose_threshold({"a": hist}, thresholds=(0.35,))[1]["iou"] == 1.0


def test_bad_options_are_config_errors(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        train(data=tiny_data, out=tmp_path / "m.safetensors", steps=1, crop=64, batch_size=1, progress=False)
    with pytest.raises(ConfigError, match="multiple of 32"):
        train(data=tiny_data, out=tmp_path / "m.safetensors", steps=1, crop=50, progress=False)
    with pytest.raises(CheckpointError, match="no training state to resume"):
        train(data=tiny_data, out=tmp_path / "m.safetensors", steps=1, resume=True, **TINY)


# --------------------------------------------------------------------------- training runs


@pytest.mark.filterwarnings("ignore:tile size 64")
def test_tiny_training_run_writes_a_loadable_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    summary = train(data=tiny_data, out=out, steps=3, val_every=2, checkpoint_every=1, seed=3, **TINY)
    assert summary["steps"] == 3 and summary["steps_this_call"] == 3
    assert [h["step"] for h in summary["history"]] == [2, 3]
    assert summary["threshold"] in THRESHOLDS and 0.0 <= summary["validation"]["iou"] <= 1.0
    loaded = load_checkpoint(out)
    assert loaded.spec.classes == ("building", "boundary") and loaded.spec.encoder == "efficientnet-lite0"
    assert loaded.info.gsd_m == 1.0 and loaded.info.threshold == summary["threshold"]
    assert loaded.info.validation_metrics["iou"] == pytest.approx(summary["validation"]["iou"])
    assert out.stat().st_size < 40e6
    header = read_checkpoint_metadata(out)
    assert header["normalization"] == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert header["atrous_rates"] == [6, 12, 18] and header["bands"] == ["red", "green", "blue"]
    data = json.loads(loaded.info.training_data)
    assert data["dataset"] == str(tiny_data) and len(data["sha256"]) == 64
    assert [i["image"] for i in data["train_items"]] == ["a.tif", "b.tif"]
    assert [i["image"] for i in data["val_items"]] == ["v.tif"]
    assert data["run"]["steps"] == summary["best_step"] and data["run"]["hardware"]
    assert "1 val scenes" in loaded.info.split and loaded.info.code_version
    with torch.no_grad():
        logits = loaded.model(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 2, 64, 64)
    assert state_path(out).is_file()


def test_init_starts_from_a_checkpoints_weights(tiny_data: Path, tmp_path: Path) -> None:
    first = tmp_path / "first.safetensors"
    train(data=tiny_data, out=first, steps=2, val_every=2, checkpoint_every=2, seed=3, **TINY)
    second = tmp_path / "second.safetensors"
    tiny = {**TINY, "lr": 1e-12}
    train(data=tiny_data, out=second, steps=1, val_every=1, checkpoint_every=1, seed=4, init=first, **tiny)
    a, b = load_checkpoint(first).model.state_dict(), load_checkpoint(second).model.state_dict()
    convs = [k for k, v in a.items() if k.endswith("weight") and v.ndim == 4]
    assert convs and all(torch.allclose(a[k], b[k], atol=1e-6) for k in convs)
    fresh = tmp_path / "fresh.safetensors"
    train(data=tiny_data, out=fresh, steps=1, val_every=1, checkpoint_every=1, seed=4, **tiny)
    c = load_checkpoint(fresh).model.state_dict()
    assert not all(torch.allclose(a[k], c[k], atol=1e-6) for k in convs)
    with pytest.raises(ConfigError, match="--init checkpoint"):
        train(data=tiny_data, out=tmp_path / "x.safetensors", steps=1, init=first, output_stride=8, **TINY)


@pytest.mark.filterwarnings("ignore:tile size 64")
def test_contact_dataset_trains_a_contact_class_from_a_boundary_checkpoint(
    tiny_data: Path, tmp_path: Path
) -> None:
    first = tmp_path / "boundary.safetensors"
    train(data=tiny_data, out=first, steps=1, val_every=1, checkpoint_every=1, seed=3, **TINY)
    spec = yaml.safe_load(tiny_data.read_text())
    contact_yaml = tiny_data.parent / "CONTACT.yaml"
    contact_yaml.write_text(yaml.safe_dump({**spec, "contact_px": 3}))
    out = tmp_path / "contact.safetensors"
    tiny = {**TINY, "lr": 1e-12}
    train(
        data=contact_yaml, out=out, steps=1, val_every=1, checkpoint_every=1, seed=4, init=first,
        boundary_dice=True, **tiny,
    )  # fmt: skip
    loaded = load_checkpoint(out)
    assert loaded.spec.classes == ("building", "contact")
    a, b = load_checkpoint(first).model.state_dict(), loaded.model.state_dict()
    assert torch.allclose(a["classifier.weight"], b["classifier.weight"], atol=1e-6)
    run = json.loads(loaded.info.training_data)["run"]
    assert run["contact_px"] == 3 and run["options"]["boundary_dice"] is True


@pytest.mark.filterwarnings("ignore:tile size 64")
def test_three_class_dataset_adds_a_contact_head_to_a_boundary_checkpoint(
    tiny_data: Path, tmp_path: Path
) -> None:
    first = tmp_path / "boundary.safetensors"
    train(data=tiny_data, out=first, steps=1, val_every=1, checkpoint_every=1, seed=3, **TINY)
    spec = yaml.safe_load(tiny_data.read_text())
    both = tiny_data.parent / "BOTH.yaml"
    both.write_text(yaml.safe_dump({**spec, "contact_px": 3, "separators": ["boundary", "contact"]}))
    out = tmp_path / "both.safetensors"
    train(data=both, out=out, steps=1, val_every=1, checkpoint_every=1, seed=4, init=first, **TINY, lr=1e-12)
    loaded = load_checkpoint(out)
    assert loaded.spec.classes == ("building", "boundary", "contact")
    a, b = load_checkpoint(first).model.state_dict(), loaded.model.state_dict()
    # building and boundary keep their weights by name; contact starts fresh
    assert torch.allclose(a["classifier.weight"], b["classifier.weight"][:2], atol=1e-6)
    assert torch.allclose(a["classifier.bias"], b["classifier.bias"][:2], atol=1e-6)
    assert not torch.allclose(b["classifier.weight"][2], b["classifier.weight"][1], atol=1e-3)
    assert json.loads(loaded.info.training_data)["run"]["classes"] == ["building", "boundary", "contact"]


def test_loss_sums_every_separator_channel() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 2, (2, 3, 8, 8), dtype=torch.uint8)
    total, parts = segmentation_loss(logits, target, boundary_weight=0.5)
    two, _ = segmentation_loss(logits[:, :2], target[:, :2], boundary_weight=0.5)
    third = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 2], target[:, 2].float())
    assert float(parts["separator2"]) == pytest.approx(float(third), rel=1e-5)
    assert float(total) == pytest.approx(float(two) + 0.5 * float(third), rel=1e-5)


def test_focal_loss_is_ten_times_bce_scaled_by_the_missed_share() -> None:
    # logit 0 on a building pixel: BCE ln 2, p_t 0.5, focal 10 x 0.25 x ln 2; a confident right
    # answer (logit 20) costs nothing; with one channel the Dice term is the same for both losses
    logits = torch.tensor([[[[0.0, 20.0]]]])
    target = torch.tensor([[[[1, 1]]]], dtype=torch.uint8)
    _, bce = segmentation_loss(logits, target)
    _, focal = segmentation_loss(logits, target, loss="focal")
    assert float(bce["bce"]) == pytest.approx(np.log(2) / 2, rel=1e-5)
    assert float(focal["bce"]) == pytest.approx(10 * 0.25 * np.log(2) / 2, rel=1e-5)
    assert float(focal["dice"]) == float(bce["dice"])


def test_unknown_loss_is_a_config_error(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loss must be one of bce, focal"):
        train(data=tiny_data, out=tmp_path / "m.safetensors", loss="hinge", **TINY)


@pytest.mark.filterwarnings("ignore:tile size 64")
def test_resume_continues_the_same_run(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common: dict[str, Any] = {
        "data": tiny_data,
        "steps": 4,
        "val_every": 2,
        "checkpoint_every": 2,
        "seed": 5,
        **TINY,
    }
    straight = tmp_path / "straight.safetensors"
    first = train(out=straight, **common)

    resumed = tmp_path / "resumed.safetensors"
    save_state = train_module.save_state

    def interrupt(run: Any) -> Path:
        save_state(run)
        raise KeyboardInterrupt  # the run dies right after the state of step 2 is written

    monkeypatch.setattr(train_module, "save_state", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(out=resumed, **common)
    monkeypatch.setattr(train_module, "save_state", save_state)
    assert torch.load(state_path(resumed), weights_only=True)["step"] == 2
    summary = train(out=resumed, resume=True, **common)
    assert summary["steps"] == 4 and summary["steps_this_call"] == 2
    assert [(h["step"], h["loss"]) for h in summary["history"]] == [
        (h["step"], h["loss"]) for h in first["history"]
    ]

    a = torch.load(state_path(straight), weights_only=True)["model"]
    b = torch.load(state_path(resumed), weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


# --------------------------------------------------------------------------- CLI


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    register(app)
    return app


def test_cli_train_errors_print_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _app(), ["train", "--data", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 2
    assert "nope.yaml: dataset file not found" in result.output


def test_cli_options_are_exactly_the_train_options_fields() -> None:
    import dataclasses

    command = typer.main.get_command(_app()).commands["train"]  # type: ignore[attr-defined]
    options = {p.name: p for p in command.params}
    fields = {f.name: f for f in dataclasses.fields(TrainOptions)}
    assert set(options) == set(fields) | {"resume", "as_json"}
    for name, f in fields.items():
        assert options[name].opts == ["--" + name.replace("_", "-")]
        assert options[name].help == f.metadata["help"]
        assert options[name].required == (f.default is dataclasses.MISSING)
        if f.default is not dataclasses.MISSING:
            assert options[name].default == f.default


def test_cli_passes_every_option_to_train(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def fake_train(opts: TrainOptions, *, resume: bool = False) -> dict[str, Any]:
        seen.update(opts=opts, resume=resume)
        return {
            "steps": 1,
            "out": opts.out,
            "best_step": 1,
            "threshold": 0.5,
            "validation": {},
            "seconds_per_step": 1,
        }

    monkeypatch.setattr(train_module, "train", fake_train)
    args = ["train", "--data", "d.yaml", "--out", "m.safetensors", "--resume", "--val-tile", "512"]
    args += ["--weight-decay", "0", "--boundary-dice", "--max-minutes", "2.5", "--init", "x.safetensors"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert seen["resume"] is True
    expected = TrainOptions(
        data="d.yaml", out="m.safetensors", val_tile=512, weight_decay=0.0, boundary_dice=True,
        max_minutes=2.5, init="x.safetensors",
    )  # fmt: skip
    assert seen["opts"] == expected


def test_cli_train_help_lists_options() -> None:
    result = CliRunner().invoke(_app(), ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--data", "--out", "--resume", "--steps", "--device", "--batch-size", "--crop", "--seed"):
        assert option in result.output


@pytest.mark.filterwarnings("ignore:tile size 64")
def test_a_datapack_trains_like_its_yaml_and_loads_without_gdal(tiny_data: Path, tmp_path: Path) -> None:
    import io
    import subprocess
    import sys

    from PIL import Image

    from pipeline.training.datapack import load_pack, write_pack
    from pipeline.training.dataset import load_dataset

    dataset = load_dataset(tiny_data)
    pack = write_pack(dataset, tmp_path / "pack.npz", quality=95)
    loaded = load_pack(pack)
    assert [s.name for s in loaded.scenes] == [s.name for s in dataset.scenes]
    assert loaded.spec == dataset.spec
    for a, b in zip(dataset.scenes, loaded.scenes, strict=True):
        assert (a.source, a.split, a.gsd_m, a.weight) == (b.source, b.split, b.gsd_m, b.weight)
        np.testing.assert_array_equal(a.label, b.label)  # labels are lossless (PNG)
        jpeg = io.BytesIO()
        Image.fromarray(a.image).save(jpeg, format="JPEG", quality=95, subsampling=0)
        np.testing.assert_array_equal(np.asarray(Image.open(jpeg)), b.image)  # JPEG at quality 95
    out = tmp_path / "packed.safetensors"
    summary = train(data=pack, out=out, steps=2, val_every=2, checkpoint_every=2, seed=1, workers=2, **TINY)
    assert summary["steps"] == 2 and load_checkpoint(out).spec.classes == ("building", "boundary")
    # the GPU machine has torch but no GDAL: training from a pack must not import rasterio
    code = (
        "import sys, pipeline.training.train, pipeline.training.datapack; sys.exit('rasterio' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0


@pytest.mark.filterwarnings("ignore:tile size 64")
def test_max_minutes_stops_validates_and_saves(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "budget.safetensors"
    summary = train(
        data=tiny_data, out=out, steps=500, val_every=500, checkpoint_every=500, max_minutes=1e-4, **TINY
    )
    assert 0 <= summary["steps"] < 500 and out.is_file() and state_path(out).is_file()
    assert summary["history"][-1]["step"] == summary["steps"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:tile size 64")
def test_gpu_recipe_dry_run_probes_trains_and_writes_fp16(tiny_data: Path, tmp_path: Path) -> None:
    """scripts/gpu_train.sh --dry-run: the GPU stage's own path (probe, budgeted run, fp16) on the CPU."""
    import os
    import subprocess
    import sys

    from safetensors import safe_open

    from pipeline.training.datapack import write_pack
    from pipeline.training.dataset import load_dataset

    repo = Path(__file__).resolve().parents[2]
    pack = write_pack(load_dataset(tiny_data), tmp_path / "pack.npz")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PY": sys.executable}
    done = subprocess.run(
        ["bash", "scripts/gpu_train.sh", "--dry-run", str(pack)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["planned_steps"] == 3 and summary["steps"] == 3 and summary["probe_seconds_per_step"] > 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    assert load_checkpoint(out / "model.safetensors").spec.classes == ("building", "boundary")
