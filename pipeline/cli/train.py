"""``footprints train``: the training command, registered on the main typer app by :func:`register`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pipeline.cli.console import friendly_errors
from pipeline.core.errors import FootprintsError

__all__ = ["register"]

_err = Console(stderr=True)


def _show_warnings() -> None:
    def show(
        message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        _err.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    warnings.showwarning = show


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""

    @app.command("train")
    def train_command(
        data: Annotated[Path, typer.Option("--data", help="DATASET.yaml (see configs/dataset.yaml).")],
        out: Annotated[Path, typer.Option("--out", help="Checkpoint to write (.safetensors).")],
        resume: Annotated[bool, typer.Option("--resume", help="Continue from <out stem>.state.pt.")] = False,
        steps: Annotated[int, typer.Option("--steps", help="Total optimiser steps.")] = 3000,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
        batch_size: Annotated[int, typer.Option("--batch-size", help="Crops per step (>= 2).")] = 8,
        crop: Annotated[int, typer.Option("--crop", help="Crop side in px at the training GSD.")] = 384,
        seed: Annotated[int, typer.Option("--seed", help="Seed of torch, numpy and random.")] = 0,
        val_every: Annotated[int, typer.Option("--val-every", help="Validate every N steps.")] = 250,
        checkpoint_every: Annotated[
            int, typer.Option("--checkpoint-every", help="Write the resume state every N steps.")
        ] = 100,
        encoder: Annotated[str, typer.Option("--encoder", help="efficientnet-lite0/1/2 or an smp name.")] = (
            "efficientnet-lite0"
        ),
        output_stride: Annotated[int, typer.Option("--output-stride", help="16 or 8.")] = 16,
        lr: Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate.")] = 5e-4,
        init: Annotated[
            Path | None, typer.Option("--init", help="Start from this checkpoint's weights (fine-tune).")
        ] = None,
        boundary_weight: Annotated[
            float, typer.Option("--boundary-weight", help="Weight of the second class's loss.")
        ] = 0.5,
        boundary_dice: Annotated[
            bool, typer.Option("--boundary-dice", help="Add soft Dice to the second class (rare classes).")
        ] = False,
        loss: Annotated[
            str, typer.Option("--loss", help="Pixel loss beside Dice: bce, or focal (10 x focal, gamma 2).")
        ] = "bce",
        workers: Annotated[
            int, typer.Option("--workers", help="Processes cropping batches (0: in the trainer, resumable).")
        ] = 0,
        max_minutes: Annotated[
            float | None, typer.Option("--max-minutes", help="Stop, validate and save after this long.")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    ) -> None:
        """Train DeepLabV3 on DATA and write the best checkpoint to OUT."""
        from pipeline.training.train import train

        _show_warnings()
        try:
            summary = train(
                data=data,
                out=out,
                resume=resume,
                steps=steps,
                device=device,
                seed=seed,
                batch_size=batch_size,
                crop=crop,
                encoder=encoder,
                output_stride=output_stride,
                lr=lr,
                init=init,
                boundary_weight=boundary_weight,
                boundary_dice=boundary_dice,
                loss=loss,
                val_every=val_every,
                checkpoint_every=checkpoint_every,
                workers=workers,
                max_minutes=max_minutes,
            )
        except FootprintsError as exc:
            with friendly_errors(_err):
                raise exc from None
        if as_json:
            typer.echo(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
            return
        iou = summary["validation"].get("iou", float("nan"))
        _err.print(
            f"{summary['steps']} steps -> {summary['out']} (best step {summary['best_step']}, "
            f"val IoU {iou:.4f} at threshold {summary['threshold']}, {summary['seconds_per_step']} s/step)",
            highlight=False,
        )
