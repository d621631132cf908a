"""The final training stage on one GPU, inside a fixed time budget (run by ``scripts/gpu_train.sh``).

1. A short probe run measures seconds per step at the chosen batch and crop (mixed precision,
   channels-last and ``--workers`` cropping processes are what ``footprints train`` does on CUDA).
2. The real run gets as many steps as fit the budget, so its cosine schedule ends on time;
   ``--max-minutes`` still stops it, validated and saved, if the estimate was optimistic.
3. The best checkpoint is re-saved in fp16 (under the 16 MiB a device file may have) beside a
   ``summary.json`` with the figures to compare against the CPU model.

``--dry-run`` runs the same three steps on this CPU with a tiny batch, crop and step count.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHIPPED = "deeplabv3-lite0-buildings.safetensors"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / ".gpu" / "dataset.npz")
    parser.add_argument(
        "--init",
        type=Path,
        default=REPO / "models" / "deeplabv3-lite0-buildings-os16.safetensors",
        help="start from this checkpoint (default: stage 3, as the CPU's final stage did)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for model.safetensors and summary.json"
    )
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/footprints-gpu"), help="fp32 checkpoints, state"
    )
    parser.add_argument(
        "--minutes", type=float, default=6.5, help="budget of the real run, validation included"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument(
        "--output-stride",
        type=int,
        choices=(8, 16),
        default=8,
        help="the stage's stride; an --init at another stride is converted first (same weights)",
    )
    parser.add_argument("--dry-run", action="store_true", help="tiny run on the CPU")
    return parser.parse_args()


def _at_stride(init: Path, output_stride: int, work: Path) -> Path:
    """``init``, or a copy of it converted to ``output_stride`` in ``work`` (same weights)."""
    from pipeline.model.checkpoint import at_output_stride, load_checkpoint, save_checkpoint

    loaded = load_checkpoint(init)
    if loaded.spec.output_stride == output_stride:
        return init
    model, spec = at_output_stride(loaded, output_stride)
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"init-os{output_stride}.safetensors"
    return save_checkpoint(out, model=model, spec=spec, metadata=loaded.info)


def main() -> None:
    args = _arguments()
    from pipeline.model.checkpoint import load_checkpoint, save_checkpoint
    from pipeline.training.options import TrainOptions
    from pipeline.training.train import train

    device = "cpu" if args.dry_run else "cuda"
    args.init = _at_stride(args.init, args.output_stride, args.work)
    common: dict[str, Any] = {
        "data": str(args.data), "init": str(args.init), "device": device, "crop": args.crop,
        "batch_size": args.batch_size, "workers": args.workers, "lr": args.lr,
        "output_stride": args.output_stride, "boundary_dice": True,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    probe_steps = 3 if args.dry_run else 40
    started = time.perf_counter()
    probe = train(
        TrainOptions(
            out=str(args.work / "probe.safetensors"), steps=probe_steps, val_every=10**6,
            checkpoint_every=10**6, **common,
        )
    )  # fmt: skip
    per_step = float(probe["seconds_per_step"])
    validation_s = float(probe["history"][-1]["seconds"]) if probe["history"] else 0.0
    budget_s = 60.0 * args.minutes - 2.0 * validation_s - 30.0  # two validations and the saves
    steps = probe_steps if args.dry_run else max(100, math.floor(budget_s / per_step))
    val_every = max(1, steps // 4)
    work = args.work / "model.safetensors"
    summary = train(
        TrainOptions(
            out=str(work), steps=steps, val_every=val_every, checkpoint_every=val_every,
            max_minutes=args.minutes, **common,
        )
    )  # fmt: skip
    loaded = load_checkpoint(work)
    out = args.out / "model.safetensors"
    save_checkpoint(out, model=loaded.model, spec=loaded.spec, metadata=loaded.info, half=True)
    record = {
        "probe_seconds_per_step": per_step,
        "probe_validation_seconds": validation_s,
        "planned_steps": steps,
        "total_seconds": round(time.perf_counter() - started, 1),
        "checkpoint_mb": round(out.stat().st_size / 1e6, 2),
        **{k: v for k, v in summary.items() if k not in ("out", "state")},
    }
    (args.out / "summary.json").write_text(json.dumps(record, indent=2, default=str))
    print(
        json.dumps({k: record[k] for k in ("planned_steps", "steps", "best_step", "validation")}, default=str)
    )


if __name__ == "__main__":
    main()
