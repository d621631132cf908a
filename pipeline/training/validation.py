"""Training-time validation: the product's tiled inference on whole val scenes, then the threshold.

Each val scene (already at the training GSD) is predicted the way ``footprints segment`` predicts
a scene: tiles of ``val_tile`` px with the product's overlap on the model's output-stride lattice
(:func:`pipeline.tiling.grid.model_grid`), the product's segmenter around the model being trained
(normalization, fp16 autocast on CUDA, sigmoid, uint8 quantization) and its stitcher's smooth
blending (:func:`pipeline.model.tiled.predict_array`). The pixel IoU at each candidate threshold
counts a pixel as building where its uint8 probability reaches ``threshold_u8(t)``, the test the
product's mask applies, so the chosen threshold is the one the product will apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from pipeline.config import TilingConfig
from pipeline.model.encoders import IMAGENET_LITE_MEAN, IMAGENET_LITE_STD
from pipeline.model.infer import TorchSegmenter, output_stride, torch_forward
from pipeline.model.tiled import predict_array
from pipeline.tiling.grid import model_grid
from pipeline.tiling.stitch import threshold_u8
from pipeline.training.dataspec import IGNORE
from pipeline.training.sampling import ValScene

__all__ = ["THRESHOLDS", "VAL_OVERLAP", "choose_threshold", "evaluate", "scene_probability", "segmenter_for"]

THRESHOLDS: tuple[float, ...] = tuple(round(0.3 + 0.05 * i, 2) for i in range(9))
"""Candidate decision thresholds on the building probability (0.30 ... 0.70)."""

VAL_OVERLAP: int = TilingConfig.model_fields["overlap"].default
"""Overlap of the validation tiles: the product's default ``tiling.overlap``."""

VAL_BATCH = 4
"""Tiles per forward pass in validation."""

_LEVELS = 256  # histogram bins: one per uint8 probability, as the product writes them


def segmenter_for(model: torch.nn.Module, device: torch.device) -> TorchSegmenter:
    """The product's segmenter around ``model`` (put in eval mode), normalizing as the checkpoint
    will record (:class:`pipeline.model.checkpoint.CheckpointMetadata`'s default mean and std)."""
    return TorchSegmenter(
        model=torch_forward(model, device), mean=IMAGENET_LITE_MEAN, std=IMAGENET_LITE_STD, device=device
    )


def scene_probability(segmenter: TorchSegmenter, scene: ValScene, *, tile: int) -> NDArray[np.uint8]:
    """uint8 building probability (H, W) of a whole val scene, tiled and blended as the product does."""
    height, width = scene.image.shape[:2]
    grid = model_grid(
        height=height, width=width, tile_size=tile, overlap=VAL_OVERLAP,
        model_stride=output_stride(segmenter.model),
    )  # fmt: skip
    pixels = scene.image.transpose(2, 0, 1)
    prob = predict_array(pixels, segmenter=segmenter, grid=grid, valid=scene.valid, batch_size=VAL_BATCH)
    building: NDArray[np.uint8] = prob[0]
    return building


def _histograms(prob: NDArray[np.uint8], target: NDArray[np.uint8]) -> NDArray[np.int64]:
    """(2, 256) counts of valid building (row 0) and background (row 1) pixels per uint8 probability."""
    valid = target[0] != IGNORE
    positive = valid & (target[0] == 1)
    return np.stack(
        [
            np.bincount(prob[positive], minlength=_LEVELS),
            np.bincount(prob[valid & ~positive], minlength=_LEVELS),
        ]
    ).astype(np.int64)


def _iou(hist: NDArray[np.int64], threshold: float) -> float:
    """Pixel IoU of the product's mask at ``threshold`` from a (2, 256) histogram; 1.0 when both are empty."""
    k = threshold_u8(threshold)
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
    segmenter = segmenter_for(model, device)
    per_source: dict[str, NDArray[np.int64]] = {}
    for scene in scenes:
        hist = _histograms(scene_probability(segmenter, scene, tile=tile), scene.target)
        previous = per_source.get(scene.source)
        per_source[scene.source] = hist if previous is None else previous + hist
    return choose_threshold(per_source)
