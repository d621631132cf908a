"""A training run's mutable state: built fresh (or warm-started), saved, and resumed.

``<out stem>.state.pt`` holds the model, optimiser, scheduler, scaler, step and RNG states. It is
our own and never shipped, so it uses ``torch.save``; it is read back with ``weights_only=True``
(plain containers and tensors only: the options are stored as a dict of strings and numbers).
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from pipeline.core.errors import CheckpointError, ConfigError
from pipeline.model.deeplab import DeepLabV3, ModelSpec, build_model
from pipeline.training.options import TrainOptions

__all__ = ["Run", "lr_factor", "new_run", "resume_run", "save_state", "state_path"]

_STATE_FORMAT = 1


def state_path(out: str | os.PathLike[str]) -> Path:
    """The resume-state file beside a checkpoint: ``model.safetensors`` -> ``model.state.pt``."""
    return Path(out).with_suffix(".state.pt")


@dataclass
class Run:
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


def lr_factor(step: int, *, total: int, warmup: int, floor: float = 0.01) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up, then cosine decay to ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


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


def new_run(opts: TrainOptions, device: torch.device, classes: tuple[str, ...]) -> Run:
    """A fresh run: seeded, the model from ImageNet (or ``opts.init``), AdamW with its schedule."""
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
    return Run(opts, spec, model, optimizer, scheduler, scaler, rng, device)


def save_state(run: Run) -> Path:
    """Write the resume state atomically (a temporary file renamed into place)."""
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


def _read_state(path: Path, device: torch.device) -> dict[str, Any]:
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
    return state


def resume_run(opts: TrainOptions, device: torch.device, classes: tuple[str, ...]) -> Run:
    """The run saved beside ``opts.out``, at the step, RNG states and history it was saved with."""
    path = state_path(opts.out)
    state = _read_state(path, device)
    _check_resumable(state["options"], opts, path)
    run = new_run(opts, device, classes)
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
