"""Training DeepLabV3 on a DATASET.yaml (see :mod:`pipeline.training.dataset`): the loop.

* Options: :class:`pipeline.training.options.TrainOptions`, declared once.
* Data: balanced, augmented crops at the dataset's training GSD
  (:class:`pipeline.training.sampling.CropSampler`);
  validation on whole val scenes resampled to that GSD.
* Loss (:mod:`pipeline.training.losses`): BCE + soft Dice on the building channel, plus
  ``boundary_weight`` (0.5) x BCE on each separator channel (boundary, contact), with a soft Dice
  term there too when ``boundary_dice``; pixels labelled 255 (no-data) are excluded from every
  term. The model runs channels-last (NHWC), which oneDNN and cuDNN convolve faster.
* Optimiser (:mod:`pipeline.training.state`): AdamW (weight decay 1e-4), linear warm-up over
  ``warmup_fraction`` of the steps, then cosine decay to 1 % of ``lr``. Mixed precision (fp16
  autocast + GradScaler) on CUDA only.
* Validation (:mod:`pipeline.training.validation`) every ``val_every`` steps and at the end: the
  product's tiled inference on each val scene (``val_tile`` px tiles), pixel IoU at thresholds
  0.30-0.70 per source; the selection metric ``iou`` is the mean over sources (each source counts
  once, as in sampling) at the best threshold, which becomes the checkpoint's decision threshold.
* Outputs: ``out`` (safetensors, :mod:`pipeline.training.record`) holds the model of the best
  validation step (the last step when there are no val scenes); ``<out stem>.state.pt`` holds the
  training state, written every ``checkpoint_every`` steps and at the end, for ``resume=True``.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
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

from pipeline.core.errors import ConfigError
from pipeline.model.deeplab import check_rates
from pipeline.model.encoders import IMAGENET_LITE_MEAN, IMAGENET_LITE_STD
from pipeline.model.infer import normalize, resolve_device
from pipeline.training.dataspec import Dataset
from pipeline.training.losses import segmentation_loss
from pipeline.training.options import TrainOptions
from pipeline.training.record import save_model
from pipeline.training.sampling import CropSampler, ValScene, batch_stream, validation_scenes
from pipeline.training.state import Run, new_run, resume_run, save_state, state_path
from pipeline.training.validation import evaluate

__all__ = ["train"]

PROGRESS_EVERY = 25
"""Without a terminal (nohup, CI) a plain progress line is printed every this many steps."""


def _train_step(run: Run, batches: Iterator[tuple[NDArray[np.uint8], NDArray[np.uint8]]]) -> float:
    run.model.train()
    images, targets = next(batches)
    x = normalize(images, mean=IMAGENET_LITE_MEAN, std=IMAGENET_LITE_STD, device=run.device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(targets).to(run.device, non_blocking=True)
    with torch.autocast("cuda", dtype=torch.float16, enabled=run.device.type == "cuda"):
        logits = run.model(x)
    opts = run.opts
    loss, _ = segmentation_loss(
        logits, y, boundary_weight=opts.boundary_weight, boundary_dice=opts.boundary_dice, loss=opts.loss
    )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return float(loss.detach())


def _validate(run: Run, dataset: Dataset, scenes: Sequence[ValScene], loss: float) -> dict[str, Any]:
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
        save_model(run, dataset, threshold, metrics)
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


def _summary(run: Run, train_seconds: float, steps_done: int) -> dict[str, Any]:
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


def _step(run: Run, batches: Iterator[tuple[NDArray[np.uint8], NDArray[np.uint8]]]) -> float:
    """One optimiser step; returns its seconds. A loss that is not finite stops the run."""
    started = time.perf_counter()
    loss = _train_step(run, batches)
    seconds = time.perf_counter() - started
    if not math.isfinite(loss):
        raise ConfigError(
            f"{run.opts.out}: training loss is {loss} at step {run.step + 1}; lower --lr (now {run.opts.lr}) "
            "and --resume from the last state, or start over"
        )
    run.loss_ema = loss if math.isnan(run.loss_ema) else 0.95 * run.loss_ema + 0.05 * loss
    run.step += 1
    return seconds


def _loop(
    run: Run, dataset: Dataset, sampler: CropSampler, val: Sequence[ValScene], progress: bool
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
            seconds += _step(run, batches)
            ema = run.loss_ema
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
                save_state(run)
    if run.step < opts.steps:  # stopped by the time budget: validate where it stopped
        _validate(run, dataset, val, run.loss_ema)
        save_state(run)
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
    opts: TrainOptions, *, resume: bool = False, threads: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train DeepLabV3 on the DATASET.yaml ``opts.data`` and write the checkpoint ``opts.out``.

    Returns a summary: paths, steps, best step, threshold, validation metrics and history,
    seconds per training step, wall time and peak RSS. ``resume=True`` continues from
    ``<out stem>.state.pt`` (model, optimiser, scheduler, step and RNG states). ``opts.init``
    starts a new run from a footprints checkpoint's weights (fine-tuning, e.g. to continue
    training the shipped model in a later session) instead of the ImageNet encoder.
    ``threads`` sets torch's CPU threads (default: every core this process may use).
    """
    opts.check()
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    device = resolve_device(opts.device)
    dataset = _load_training_data(Path(opts.data))
    sampler = CropSampler.from_dataset(dataset, crop=opts.crop)
    val = list(validation_scenes(dataset))
    classes = dataset.spec.classes
    run = resume_run(opts, device, classes) if resume else new_run(opts, device, classes)
    check_rates(opts.crop, opts.output_stride, run.spec.rates)
    return _loop(run, dataset, sampler, val, progress)
