"""Training DeepLabV3 on a DATASET.yaml (see :mod:`pipeline.training.dataset`).

* Data: balanced, augmented crops at the dataset's training GSD
  (:class:`pipeline.training.sampling.CropSampler`);
  validation on whole val scenes resampled to that GSD.
* Loss: BCE + soft Dice on the building channel, plus ``boundary_weight`` (0.5) x BCE on the
  second channel (boundary, or contact when the DATASET.yaml sets ``contact_px``), with a soft
  Dice term there too when ``boundary_dice``; pixels labelled 255 (no-data) are excluded from
  every term. The model runs channels-last (NHWC), which oneDNN and cuDNN convolve faster.
* Optimiser: AdamW (weight decay 1e-4), linear warm-up over ``warmup_fraction`` of the steps, then
  cosine decay to 1 % of ``lr``. Mixed precision (fp16 autocast + GradScaler) on CUDA only.
* Validation every ``val_every`` steps and at the end: building probability per scene (tiles of
  ``val_tile`` px, averaged where they overlap), pixel IoU at thresholds 0.30-0.70 per source; the
  selection metric ``iou`` is the mean over sources (each source counts once, as in sampling) at
  the best threshold, which becomes the checkpoint's decision threshold.
* Outputs: ``out`` (safetensors via :func:`pipeline.model.checkpoint.save_checkpoint`) holds the model of
  the best validation step (the last step when there are no val scenes); ``<out stem>.state.pt``
  holds the training state (model, optimiser, scheduler, scaler, step, RNG states) written every
  ``checkpoint_every`` steps and at the end, for ``resume=True``. The state file is our own and
  never shipped, so it uses ``torch.save``; it is read back with ``weights_only=True``.

:class:`pipeline.model.checkpoint.CheckpointMetadata` has no fields for the run itself, so
``training_data`` is a JSON string: the DATASET.yaml path and sha256, source weights, the train and
val scene lists and a ``run`` object (steps, best step, wall time, hardware, hyper-parameters).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import platform
import random
import resource
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from pipeline.core.digest import file_sha256
from pipeline.core.errors import CheckpointError, ConfigError
from pipeline.model.checkpoint import CheckpointMetadata, save_checkpoint
from pipeline.model.deeplab import DeepLabV3, ModelSpec, build_model, check_rates
from pipeline.model.encoders import IMAGENET_LITE_MEAN, IMAGENET_LITE_STD, lite_variant
from pipeline.training.dataspec import IGNORE, Dataset
from pipeline.training.sampling import CropSampler, ValScene, batch_stream, validation_scenes

__all__ = [
    "THRESHOLDS",
    "TrainOptions",
    "choose_threshold",
    "evaluate",
    "lr_factor",
    "predict_probability",
    "segmentation_loss",
    "state_path",
    "train",
]

THRESHOLDS: tuple[float, ...] = tuple(round(0.3 + 0.05 * i, 2) for i in range(9))
"""Candidate decision thresholds on the building probability (0.30 ... 0.70)."""

PROGRESS_EVERY = 25
"""Without a terminal (nohup, CI) a plain progress line is printed every this many steps."""

_BINS = 1001  # probability histogram bins: bin k holds p in [k/1000, (k+1)/1000)
_STATE_FORMAT = 1
_CODE_FILES = ("dataset.py", "train.py", "model.py", "encoders.py", "checkpoint.py")


@dataclass(frozen=True)
class TrainOptions:
    """Every setting of a training run (stored in the resume state and the checkpoint)."""

    data: str
    out: str
    steps: int = 3000
    device: str = "auto"
    seed: int = 0
    batch_size: int = 8
    crop: int = 384
    encoder: str = "efficientnet-lite0"
    encoder_weights: str | None = "imagenet"
    output_stride: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    boundary_weight: float = 0.5
    boundary_dice: bool = False
    loss: str = "bce"
    val_every: int = 250
    checkpoint_every: int = 100
    val_tile: int = 1024
    init: str | None = None
    workers: int = 0
    max_minutes: float | None = None

    def check(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work."""
        rules = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (batch norm needs batch statistics)"),
            (self.crop >= 32 and self.crop % 32 == 0, "crop must be a multiple of 32 and >= 32"),
            (self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0"),
            (0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
            (
                self.val_every >= 1 and self.checkpoint_every >= 1,
                "val_every and checkpoint_every must be >= 1",
            ),
            (self.val_tile >= 64 and self.val_tile % 32 == 0, "val_tile must be a multiple of 32 and >= 64"),
            (self.workers >= 0, "workers must be >= 0"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}"),
            (self.max_minutes is None or self.max_minutes > 0, "max_minutes must be > 0"),
        ]
        for ok, message in rules:
            if not ok:
                raise ConfigError(f"training options for {self.out}: {message}; pass a valid value")


def state_path(out: str | os.PathLike[str]) -> Path:
    """The resume-state file beside a checkpoint: ``model.safetensors`` -> ``model.state.pt``."""
    return Path(out).with_suffix(".state.pt")


# --------------------------------------------------------------------------- loss and schedule


def _soft_dice(prob: Tensor, truth: Tensor, weight: Tensor) -> Tensor:
    """1 - soft Dice of ``prob`` against 0/1 ``truth`` over the pixels where ``weight`` is 1."""
    prob = prob * weight
    return 1.0 - (2.0 * (prob * truth).sum() + 1.0) / (prob.sum() + (truth * weight).sum() + 1.0)


LOSSES = ("bce", "focal")
FOCAL_GAMMA = 2.0
FOCAL_WEIGHT = 10.0  # cannab's SpaceNet 4 loss: Dice + 10 x focal


def _pixel_loss(logits: Tensor, truth: Tensor, kind: str) -> Tensor:
    """Per-pixel BCE, or focal loss (gamma 2, x ``FOCAL_WEIGHT``): BCE x (1 - p_t)^gamma."""
    bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
    if kind == "bce":
        return bce
    p_t = torch.exp(-bce)  # the probability given to the true class
    return FOCAL_WEIGHT * (1.0 - p_t) ** FOCAL_GAMMA * bce


def segmentation_loss(
    logits: Tensor,
    target: Tensor,
    *,
    boundary_weight: float = 0.5,
    boundary_dice: bool = False,
    loss: str = "bce",
) -> tuple[Tensor, dict[str, Tensor]]:
    """BCE + Dice (building) + ``boundary_weight`` x BCE (each separator class), ignoring target 255.

    ``loss="focal"`` replaces every BCE term with 10 x focal loss (gamma 2), as the SpaceNet 4
    winner did (Dice + 10 x focal).

    ``boundary_dice`` adds a soft Dice term to the separator classes as well: a rare class such as
    contact otherwise settles on probabilities far below 0.5. ``logits`` (N, K, H, W); ``target``
    (N, K, H, W) uint8 with 0/1 and 255 on no-data; channel 0 is building, channels 1.. are the
    separators (boundary, contact). Returns the total loss and its detached parts.
    """
    logits = logits.float()
    weight = (target[:, 0] != IGNORE).float()
    count = weight.sum().clamp(min=1.0)
    building = (target[:, 0] == 1).float()
    bce = _pixel_loss(logits[:, 0], building, loss)
    bce_building = (bce * weight).sum() / count
    dice = _soft_dice(torch.sigmoid(logits[:, 0]), building, weight)
    parts = {"bce": bce_building.detach(), "dice": dice.detach()}
    second = torch.zeros((), device=logits.device)
    for k in range(1, logits.shape[1]):
        truth = (target[:, k] == 1).float()
        bce = _pixel_loss(logits[:, k], truth, loss)
        term = (bce * weight).sum() / count
        parts["boundary" if k == 1 else f"separator{k}"] = term.detach()
        if boundary_dice:
            term_dice = _soft_dice(torch.sigmoid(logits[:, k]), truth, weight)
            parts["boundary_dice" if k == 1 else f"separator{k}_dice"] = term_dice.detach()
            term = term + term_dice
        second = second + term
    return bce_building + dice + boundary_weight * second, parts


def lr_factor(step: int, *, total: int, warmup: int, floor: float = 0.01) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up, then cosine decay to ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- evaluation


def _normalize(pixels: Tensor, device: torch.device) -> Tensor:
    """uint8 (N, 3, H, W) -> float, scaled to [0, 1] and normalised with the Lite mean/std."""
    x = pixels.to(device, non_blocking=True).float().div_(255.0)
    mean = torch.tensor(IMAGENET_LITE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_LITE_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return [*starts, size - tile]


@torch.inference_mode()
def predict_probability(
    model: torch.nn.Module,
    image: NDArray[np.uint8],
    *,
    device: torch.device,
    tile: int = 1024,
    overlap: int = 64,
) -> NDArray[np.float32]:
    """Building probability (H, W) of a whole (H, W, 3) scene, in overlapping tiles (averaged)."""
    model.eval()
    h, w = image.shape[:2]
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    total = np.zeros((h, w), np.float32)
    count = np.zeros((h, w), np.float32)
    for y0 in _starts(h, tile, overlap):
        for x0 in _starts(w, tile, overlap):
            patch = pixels[:, y0 : y0 + tile, x0 : x0 + tile].unsqueeze(0)
            with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
                logits = model(_normalize(patch, device))
            prob = torch.sigmoid(logits[0, 0].float()).cpu().numpy()
            total[y0 : y0 + tile, x0 : x0 + tile] += prob
            count[y0 : y0 + tile, x0 : x0 + tile] += 1.0
    return np.asarray(total / np.maximum(count, 1.0), dtype=np.float32)


def _histograms(prob: NDArray[np.float32], target: NDArray[np.uint8]) -> NDArray[np.int64]:
    """(2, _BINS) counts of valid building (row 0) and background (row 1) pixels per probability bin."""
    bins = np.clip((prob * (_BINS - 1)).astype(np.int64), 0, _BINS - 1)
    valid = target[0] != IGNORE
    positive = valid & (target[0] == 1)
    return np.stack(
        [np.bincount(bins[positive], minlength=_BINS), np.bincount(bins[valid & ~positive], minlength=_BINS)]
    ).astype(np.int64)


def _iou(hist: NDArray[np.int64], threshold: float) -> float:
    """Pixel IoU of ``prob >= threshold`` from a (2, _BINS) histogram; 1.0 when both are empty."""
    k = round(threshold * (_BINS - 1))
    tp = float(hist[0, k:].sum())
    fp = float(hist[1, k:].sum())
    fn = float(hist[0, :k].sum())
    union = tp + fp + fn
    return 1.0 if union == 0 else tp / union


def choose_threshold(
    per_source: Mapping[str, NDArray[np.int64]], thresholds: Sequence[float] = THRESHOLDS
) -> tuple[float, dict[str, float]]:
    """The threshold with the best mean-over-sources IoU (ties: closest to 0.5) and the metrics there."""

    def macro(t: float) -> float:
        return float(np.mean([_iou(h, t) for h in per_source.values()]))

    best = max(thresholds, key=lambda t: (round(macro(t), 9), -abs(t - 0.5)))
    pooled = np.sum(list(per_source.values()), axis=0)
    metrics = {"iou": macro(best), "iou_pooled": _iou(pooled, best), "iou_at_0.5": macro(0.5)}
    metrics |= {f"iou_{name}": _iou(h, best) for name, h in sorted(per_source.items())}
    return float(best), metrics


def evaluate(
    model: torch.nn.Module, scenes: Sequence[ValScene], *, device: torch.device, tile: int = 1024
) -> tuple[float, dict[str, float]]:
    """Predict every val scene, then choose the threshold; returns (threshold, metrics)."""
    per_source: dict[str, NDArray[np.int64]] = {}
    for scene in scenes:
        prob = predict_probability(model, scene.image, device=device, tile=tile)
        hist = _histograms(prob, scene.target)
        previous = per_source.get(scene.source)
        per_source[scene.source] = hist if previous is None else previous + hist
    return choose_threshold(per_source)


# --------------------------------------------------------------------------- run state


@dataclass
class _Run:
    """Mutable state of a training run."""

    opts: TrainOptions
    spec: ModelSpec
    model: DeepLabV3
    optimizer: torch.optim.AdamW
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler
    rng: np.random.Generator
    device: torch.device
    step: int = 0
    elapsed_s: float = 0.0
    loss_ema: float = float("nan")
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def wall_time(self) -> float:
        return self.elapsed_s + time.perf_counter() - self.started


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"device {name!r} is not a torch device ({exc}); use auto, cpu or cuda[:N]"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available here; use --device cpu or auto")
    return device


def _warm_start(model: DeepLabV3, spec: ModelSpec, path: Path) -> None:
    """Start from a footprints checkpoint's weights (same encoder and stride) instead of ImageNet.

    Every weight is copied except the final classifier's, which is copied per class *name*: a
    class the checkpoint has keeps its weights, a new one (say ``contact``, added to a
    ``building, boundary`` model) starts from its fresh initialisation. With the same number of
    classes and other names (a boundary model fine-tuned into a contact model) the channels are
    copied by position.
    """
    from pipeline.model.checkpoint import load_checkpoint

    loaded = load_checkpoint(path)
    theirs = (loaded.spec.encoder, loaded.spec.output_stride)
    if theirs != (spec.encoder, spec.output_stride):
        raise ConfigError(
            f"{path}: --init checkpoint is {theirs[0]} at OS {theirs[1]}, not {spec.encoder} at OS "
            f"{spec.output_stride}; pass matching --encoder/--output-stride"
        )
    state = loaded.model.state_dict()
    head = {k: state.pop(k) for k in ("classifier.weight", "classifier.bias")}
    model.load_state_dict(state, strict=False)
    old, new = list(loaded.spec.classes), list(spec.classes)
    by_name = {i: old.index(c) for i, c in enumerate(new) if c in old}
    if len(old) == len(new) and len(by_name) < len(new):
        by_name = {i: i for i in range(len(new))}
    bias = model.classifier.bias
    assert bias is not None  # the classifier is built with a bias (pipeline.model.deeplab)
    with torch.no_grad():
        for i, j in by_name.items():
            model.classifier.weight[i] = head["classifier.weight"][j]
            bias[i] = head["classifier.bias"][j]


def _new_run(opts: TrainOptions, device: torch.device, classes: tuple[str, ...]) -> _Run:
    _seed_everything(opts.seed)
    spec = ModelSpec(
        encoder=opts.encoder,
        encoder_weights=opts.encoder_weights,
        output_stride=opts.output_stride,
        classes=classes,
    )
    model = build_model(spec)
    if opts.init is not None:
        _warm_start(model, spec, Path(opts.init))
    # channels-last: oneDNN (CPU) and cuDNN run this network's convolutions faster in NHWC
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    warmup = round(opts.warmup_fraction * opts.steps)
    scheduler = LambdaLR(optimizer, lambda s: lr_factor(s, total=opts.steps, warmup=warmup))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    rng = np.random.default_rng(opts.seed)
    return _Run(opts, spec, model, optimizer, scheduler, scaler, rng, device)


def _save_state(run: _Run) -> Path:
    path = state_path(run.opts.out)
    state = {
        "format": _STATE_FORMAT,
        "options": asdict(run.opts),
        "step": run.step,
        "elapsed_s": run.wall_time(),
        "loss_ema": run.loss_ema,
        "best": run.best,
        "history": run.history,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "numpy_rng": run.rng.bit_generator.state,
        "python_rng": random.getstate(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        tmp.replace(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write the training state ({exc}); check free space") from exc
    return path


def _check_resumable(saved: Mapping[str, Any], opts: TrainOptions, path: Path) -> None:
    for key in ("encoder", "output_stride"):
        if saved.get(key) != getattr(opts, key):
            raise ConfigError(
                f"{path}: state was trained with {key}={saved.get(key)!r}, not {getattr(opts, key)!r}; "
                f"pass the same {key} or drop --resume to start over"
            )
    changed = [
        k for k in ("data", "seed", "batch_size", "crop", "lr", "steps") if saved.get(k) != getattr(opts, k)
    ]
    if changed:
        warnings.warn(
            f"{path}: resuming with changed {', '.join(changed)} (was "
            f"{', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); the run is no longer reproducible",
            UserWarning,
            stacklevel=3,
        )


def _resume_run(opts: TrainOptions, device: torch.device, classes: tuple[str, ...]) -> _Run:
    path = state_path(opts.out)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no training state to resume; run without --resume to start from scratch"
        )
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # unpickling errors of a truncated or foreign file
        raise CheckpointError(
            f"{path}: unreadable training state ({exc}); delete it and train without --resume"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise CheckpointError(
            f"{path}: not a footprints training state; delete it and train without --resume"
        )
    _check_resumable(state["options"], opts, path)
    run = _new_run(opts, device, classes)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.rng.bit_generator.state = state["numpy_rng"]
    random.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"].cpu())
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    run.step, run.elapsed_s, run.loss_ema = (
        int(state["step"]),
        float(state["elapsed_s"]),
        float(state["loss_ema"]),
    )
    run.best, run.history = state["best"], list(state["history"])
    return run


# --------------------------------------------------------------------------- metadata


def _code_version() -> str:
    """Package version, git commit when there is one, and a hash of the training code."""
    try:
        version = importlib.metadata.version("footprints")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in _CODE_FILES:
        if (here / name).is_file():
            digest.update((here / name).read_bytes())
    version += f"+src.{digest.hexdigest()[:12]}"
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if done.returncode == 0 and done.stdout.strip():
            version += f".git.{done.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def _hardware(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}; {len(os.sched_getaffinity(0))} cores; {torch.get_num_threads()} torch threads"
    if device.type == "cuda":
        text = f"{torch.cuda.get_device_name(device)}; {text}"
    return f"{text}; torch {torch.__version__}"


def _metadata(
    run: _Run, dataset: Dataset, threshold: float, metrics: Mapping[str, float]
) -> CheckpointMetadata:
    opts = run.opts
    train_items, val_items = dataset.describe("train"), dataset.describe("val")
    record = {
        "dataset": str(dataset.path),
        "sha256": file_sha256(dataset.path),
        "root": str(dataset.root),
        "gsd_m": dataset.spec.gsd_m,
        "source_weights": {name: s.weight for name, s in dataset.spec.sources.items()},
        "train_items": train_items,
        "val_items": val_items,
        "run": {
            "steps": run.step,
            "total_steps": opts.steps,
            "wall_time_s": round(run.wall_time(), 1),
            "hardware": _hardware(run.device),
            "device": str(run.device),
            "options": asdict(opts),
            "boundary_px": dataset.spec.boundary_px,
            "contact_px": dataset.spec.contact_px,
            "classes": list(dataset.spec.classes),
            "validation_history": run.history,
        },
    }
    split = (
        f"by whole scene: {len(train_items)} train scenes, {len(val_items)} val scenes "
        f"({', '.join(sorted({i['source'] for i in val_items}))}); lists in training_data"
    )
    return CheckpointMetadata(
        gsd_m=dataset.spec.gsd_m,
        threshold=threshold,
        training_data=json.dumps(record, sort_keys=True),
        split=split,
        validation_metrics=dict(metrics),
        code_version=_code_version(),
    )


def _save_model(run: _Run, dataset: Dataset, threshold: float, metrics: Mapping[str, float]) -> None:
    path = save_checkpoint(
        run.opts.out, model=run.model, spec=run.spec, metadata=_metadata(run, dataset, threshold, metrics)
    )
    size_mb = path.stat().st_size / 1e6
    if size_mb > 40:
        warnings.warn(
            f"{path}: checkpoint is {size_mb:.1f} MB (> 40 MB); use a smaller encoder",
            UserWarning,
            stacklevel=2,
        )


# --------------------------------------------------------------------------- loop


def _train_step(run: _Run, batches: Iterator[tuple[NDArray[np.uint8], NDArray[np.uint8]]]) -> float:
    run.model.train()
    images, targets = next(batches)
    x = _normalize(torch.from_numpy(images), run.device).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(targets).to(run.device, non_blocking=True)
    with torch.autocast("cuda", dtype=torch.float16, enabled=run.device.type == "cuda"):
        logits = run.model(x)
    loss, _ = segmentation_loss(
        logits,
        y,
        boundary_weight=run.opts.boundary_weight,
        boundary_dice=run.opts.boundary_dice,
        loss=run.opts.loss,
    )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return float(loss.detach())


def _validate(run: _Run, dataset: Dataset, scenes: Sequence[ValScene], loss: float) -> dict[str, Any]:
    """Validate, record it, and save the checkpoint when it is the best so far (or there is no val)."""
    started = time.perf_counter()
    if scenes:
        threshold, metrics = evaluate(run.model, scenes, device=run.device, tile=run.opts.val_tile)
    else:
        threshold, metrics = 0.5, {}
    entry = {"step": run.step, "loss": round(loss, 5), "threshold": threshold, "seconds": 0.0, **metrics}
    entry["seconds"] = round(time.perf_counter() - started, 2)
    run.history.append(entry)
    if not scenes or run.best is None or metrics["iou"] > run.best["iou"]:
        run.best = {
            "step": run.step,
            "iou": metrics.get("iou", float("nan")),
            "threshold": threshold,
            "metrics": metrics,
        }
        _save_model(run, dataset, threshold, metrics)
    return entry


@contextmanager
def _progress_bar(total: int, start: int, enabled: bool) -> Iterator[tuple[Callable[..., None], Console]]:
    console = Console(stderr=True)
    columns = (
        TextColumn("[bold]train[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("val IoU {task.fields[iou]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not enabled) as bar:
        task = bar.add_task("train", total=total, completed=start, loss="-", iou="-")

        def update(step: int, **fields: str) -> None:
            bar.update(task, completed=step, **fields)  # type: ignore[arg-type]

        yield update, console


def _summary(run: _Run, train_seconds: float, steps_done: int) -> dict[str, Any]:
    best = run.best or {}
    return {
        "out": str(run.opts.out),
        "state": str(state_path(run.opts.out)),
        "steps": run.step,
        "steps_this_call": steps_done,
        "best_step": best.get("step"),
        "threshold": best.get("threshold"),
        "validation": best.get("metrics", {}),
        "history": run.history,
        "seconds_per_step": round(train_seconds / steps_done, 3) if steps_done else None,
        "wall_time_s": round(run.wall_time(), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": str(run.device),
        "threads": torch.get_num_threads(),
    }


def _loop(
    run: _Run, dataset: Dataset, sampler: CropSampler, val: Sequence[ValScene], progress: bool
) -> dict[str, Any]:
    opts, first, seconds = run.opts, run.step, 0.0
    batches = batch_stream(
        sampler, run.rng, batch_size=opts.batch_size, workers=opts.workers, seed=opts.seed,
        start=run.step, pin_memory=run.device.type == "cuda",
    )  # fmt: skip
    deadline = math.inf if opts.max_minutes is None else run.started + 60.0 * opts.max_minutes
    with _progress_bar(opts.steps, run.step, progress) as (update, console):
        while run.step < opts.steps:
            if time.perf_counter() >= deadline:
                console.print(f"step {run.step}: --max-minutes {opts.max_minutes} reached; stopping")
                break
            started = time.perf_counter()
            loss = _train_step(run, batches)
            seconds += time.perf_counter() - started
            if not math.isfinite(loss):
                raise ConfigError(
                    f"{opts.out}: training loss is {loss} at step {run.step + 1}; lower --lr (now {opts.lr}) "
                    "and --resume from the last state, or start over"
                )
            ema = run.loss_ema = loss if math.isnan(run.loss_ema) else 0.95 * run.loss_ema + 0.05 * loss
            run.step += 1
            update(run.step, loss=f"{ema:.4f}")
            if progress and not console.is_terminal and run.step % PROGRESS_EVERY == 0:
                done = run.step - first
                console.print(f"step {run.step}/{opts.steps}: loss {ema:.4f}, {seconds / done:.2f} s/step")
            if run.step % opts.val_every == 0 or run.step == opts.steps:
                entry = _validate(run, dataset, val, ema)
                iou = f"{entry['iou']:.4f}@{entry['threshold']:.2f}" if "iou" in entry else "-"
                update(run.step, iou=iou)
                console.print(f"step {run.step}: loss {ema:.4f}, val IoU {iou} ({entry['seconds']:.1f} s)")
            if run.step % opts.checkpoint_every == 0 or run.step == opts.steps:
                _save_state(run)
    if run.step < opts.steps:  # stopped by the time budget: validate where it stopped
        _validate(run, dataset, val, run.loss_ema)
        _save_state(run)
    if run.best is None or not Path(opts.out).is_file():
        _validate(run, dataset, val, run.loss_ema)
    return _summary(run, seconds, run.step - first)


def _load_training_data(path: Path) -> Dataset:
    """A DATASET.yaml (read with GDAL) or a datapack (:mod:`pipeline.training.datapack`, torch only)."""
    if path.suffix == ".npz":
        from pipeline.training.datapack import load_pack

        return load_pack(path)
    from pipeline.training.dataset import load_dataset

    return load_dataset(path)


def train(
    *,
    data: Path,
    out: Path,
    resume: bool = False,
    steps: int = 3000,
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 8,
    crop: int = 384,
    encoder: str = "efficientnet-lite0",
    output_stride: int = 16,
    lr: float = 5e-4,
    weight_decay: float = 1e-4,
    warmup_fraction: float = 0.05,
    boundary_weight: float = 0.5,
    boundary_dice: bool = False,
    loss: str = "bce",
    val_every: int = 250,
    checkpoint_every: int = 100,
    val_tile: int = 1024,
    init: Path | None = None,
    threads: int | None = None,
    progress: bool = True,
    workers: int = 0,
    max_minutes: float | None = None,
) -> dict[str, Any]:
    """Train DeepLabV3 on the DATASET.yaml ``data`` and write the checkpoint ``out``.

    Returns a summary: paths, steps, best step, threshold, validation metrics and history,
    seconds per training step, wall time and peak RSS. ``resume=True`` continues from
    ``<out stem>.state.pt`` (model, optimiser, scheduler, step and RNG states). ``init``
    starts a new run from a footprints checkpoint's weights (fine-tuning, e.g. to continue
    training the shipped model in a later session) instead of the ImageNet encoder.
    """
    opts = TrainOptions(
        data=str(data),
        out=str(out),
        steps=steps,
        device=device,
        seed=seed,
        batch_size=batch_size,
        crop=crop,
        encoder=encoder,
        encoder_weights="imagenet" if lite_variant(encoder) is not None else None,
        output_stride=output_stride,
        lr=lr,
        weight_decay=weight_decay,
        warmup_fraction=warmup_fraction,
        boundary_weight=boundary_weight,
        boundary_dice=boundary_dice,
        loss=loss,
        val_every=val_every,
        checkpoint_every=checkpoint_every,
        val_tile=val_tile,
        init=None if init is None else str(init),
        workers=workers,
        max_minutes=max_minutes,
    )
    opts.check()
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    dev = _resolve_device(device)
    dataset = _load_training_data(Path(data))
    sampler = CropSampler.from_dataset(dataset, crop=crop)
    val = list(validation_scenes(dataset))
    classes = dataset.spec.classes
    run = _resume_run(opts, dev, classes) if resume else _new_run(opts, dev, classes)
    check_rates(crop, output_stride, run.spec.rates)
    return _loop(run, dataset, sampler, val, progress)
