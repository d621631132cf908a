"""What a checkpoint records of its training run, and writing it.

:class:`pipeline.model.checkpoint.CheckpointMetadata` has no fields for the run itself, so
``training_data`` is a JSON string: the DATASET.yaml path and sha256, source weights, the train and
val scene lists and a ``run`` object (steps, best step, wall time, hardware, options).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from pipeline.core.digest import file_sha256
from pipeline.model.checkpoint import CheckpointMetadata, save_checkpoint
from pipeline.training.dataspec import Dataset
from pipeline.training.state import Run

__all__ = ["save_model"]

_PACKAGE = Path(__file__).resolve().parents[1]
#: The code a checkpoint's ``code_version`` hashes: the training package and the model it trains.
_MODEL_FILES = ("deeplab.py", "encoders.py", "checkpoint.py")


def _code_version() -> str:
    """Package version, git commit when there is one, and a hash of the training code."""
    try:
        version = importlib.metadata.version("footprints")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    digest = hashlib.sha256()
    files = [*sorted((_PACKAGE / "training").glob("*.py")), *(_PACKAGE / "model" / n for n in _MODEL_FILES)]
    for path in files:
        if path.is_file():
            digest.update(path.read_bytes())
    version += f"+src.{digest.hexdigest()[:12]}"
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=_PACKAGE, capture_output=True, text=True, timeout=5
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
    run: Run, dataset: Dataset, threshold: float, metrics: Mapping[str, float]
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
            "options": opts.record(),
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


def save_model(run: Run, dataset: Dataset, threshold: float, metrics: Mapping[str, float]) -> None:
    """Write the run's model to ``opts.out`` with its metadata (warning above 40 MB)."""
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
