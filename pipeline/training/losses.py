"""The training objective: BCE (or focal) + soft Dice per class, no-data pixels excluded."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.training.dataspec import IGNORE

__all__ = ["FOCAL_GAMMA", "FOCAL_WEIGHT", "segmentation_loss"]

FOCAL_GAMMA = 2.0
FOCAL_WEIGHT = 10.0  # cannab's SpaceNet 4 loss: Dice + 10 x focal


def _soft_dice(prob: Tensor, truth: Tensor, weight: Tensor) -> Tensor:
    """1 - soft Dice of ``prob`` against 0/1 ``truth`` over the pixels where ``weight`` is 1."""
    prob = prob * weight
    return 1.0 - (2.0 * (prob * truth).sum() + 1.0) / (prob.sum() + (truth * weight).sum() + 1.0)


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
