"""How much of the stitched-vs-one-pass gap is context, with resampling taken out.

    python scripts/tile_context.py [--model CKPT] [--scene TIF] [--tiles 448 512 640]
                                   [--overlap 64] [--flips 0|1|3]

Resamples the scene once to the model's GSD (as the pipeline's worker does, bilinear with
antialiasing), predicts that tensor whole, then cuts tiles from the *same* tensor on the exact
output-stride lattice (the last tile of an axis starts on the lattice and is shorter), blends
them with linear ramps over the overlap and prints the IoU of the two building masks at the
checkpoint's threshold. Inputs are identical and aligned, so whatever disagreement is left
comes from the tile edges cutting the model's context. ``--flips`` averages the prediction
over 0, 1 or 3 flipped copies exactly as the pipeline's ``model.flips`` does
(:meth:`pipeline.model.infer.TorchSegmenter.probabilities`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.config import default_checkpoint
from pipeline.core.geo import pixel_size_m
from pipeline.model.arrays import FLIP_AXES, model_shape
from pipeline.model.header import read_checkpoint_metadata
from pipeline.model.infer import CheckpointSource, TorchSegmenter

DEMO = Path(__file__).resolve().parents[2] / "shared/data/real/inria_austin/images/aerial_sample.tif"


def predict(seg: TorchSegmenter, x: torch.Tensor) -> np.ndarray:
    """Building probability of the normalized ``x`` (1, 3, h, w), averaged over the flips."""
    with torch.inference_mode():
        return seg.probabilities(x)[0, 0].numpy()


def starts(n: int, tile: int, overlap: int, stride: int) -> list[int]:
    out = [0]
    while out[-1] + tile < n:
        out.append(min(out[-1] + tile - overlap, -(-(n - tile) // stride) * stride))
    return out


def ramp(n: int, overlap: int) -> np.ndarray:
    w = np.ones(n)
    r = np.arange(1, overlap + 1) / (overlap + 1)
    w[:overlap], w[n - overlap :] = r, r[::-1]
    return w


def stitched(seg: TorchSegmenter, x: torch.Tensor, tile: int, overlap: int, stride: int) -> np.ndarray:
    height, width = x.shape[-2:]
    acc, wsum = np.zeros((height, width)), np.zeros((height, width))
    for r0 in starts(height, tile, overlap, stride):
        for c0 in starts(width, tile, overlap, stride):
            p = predict(seg, x[..., r0 : r0 + tile, c0 : c0 + tile])
            wt = np.outer(ramp(p.shape[0], overlap), ramp(p.shape[1], overlap))
            acc[r0 : r0 + p.shape[0], c0 : c0 + p.shape[1]] += p * wt
            wsum[r0 : r0 + p.shape[0], c0 : c0 + p.shape[1]] += wt
    result: np.ndarray = acc / wsum
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--scene", default=str(DEMO))
    ap.add_argument("--tiles", type=int, nargs="+", default=[448, 512, 640])
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--flips", type=int, choices=sorted(FLIP_AXES), default=0)
    args = ap.parse_args()
    path = str(args.model or default_checkpoint())
    meta = read_checkpoint_metadata(path)
    threshold, stride = float(meta["threshold"]), int(meta["output_stride"])
    seg = CheckpointSource(path, device="cpu", threads=2, flips=args.flips).load()
    assert isinstance(seg, TorchSegmenter)
    with rasterio.open(args.scene) as src:
        pixels = src.read([1, 2, 3])
        gsd = pixel_size_m(src.crs, tuple(src.transform), src.bounds)
    size = model_shape(pixels.shape[1], pixels.shape[2], gsd / float(meta["gsd_m"]))
    x = seg.normalize(pixels[None])
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    whole = predict(seg, x) >= threshold
    print(f"model space {size[0]} x {size[1]} px, threshold {threshold}, flips {args.flips}")
    for tile in args.tiles:
        tiled = stitched(seg, x, tile, args.overlap, stride) >= threshold
        iou = (whole & tiled).sum() / max((whole | tiled).sum(), 1)
        print(f"tile {tile} overlap {args.overlap}: stitched vs whole IoU {iou:.4f}")


if __name__ == "__main__":
    from pipeline.io.gdal_env import configure_process

    configure_process()  # GDAL's block cache and S3, as the CLI sets them for itself
    main()
