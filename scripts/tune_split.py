"""Choose the decision threshold and the touching-building split on the validation scenes.

    python scripts/tune_split.py --model CKPT [--data configs/dataset.yaml]

Predicts every validation scene once (whole scene, resampled to the model's GSD like the
pipeline does), then scores a grid of (threshold, seed threshold, boundary/contact threshold,
grow distance, minimum confidence) with the pipeline's own split
(:func:`pipeline.vectorize.split.split_array`), polygonization and one-to-one object matching.
Counts are pooled per source and the headline is the macro average over sources (each
source weighs the same), as ``footprints validate`` reports it. Prints a Markdown table, best
macro object F1 first. Whole-scene prediction without regularization approximates the
pipeline: confirm the winner with ``footprints validate --config``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.core.geo import MetricFrame
from pipeline.evaluation.evaluate import object_metrics
from pipeline.evaluation.validation import scene_grid
from pipeline.model.header import read_checkpoint_metadata
from pipeline.model.infer import CheckpointSource
from pipeline.training.dataset import IGNORE, load_dataset
from pipeline.vectorize.polygonize import reference_polygons
from pipeline.vectorize.split import split_array

GRID = {
    "threshold": [0.4, 0.5, 0.6],
    "seed": [0.6, 0.7, 0.8],
    "boundary": [0.2, 0.3, 0.4, 0.5],
    "grow_m": [2.0, 4.0, 6.0],
    "confidence": [0.0, 0.7, 0.8],
    "min_seed_m2": [1.0],
}
SPLIT_AXES = ("threshold", "seed", "boundary", "grow_m", "min_seed_m2")


def confident(regions: np.ndarray, building: np.ndarray, minimum: float) -> np.ndarray:
    """``regions`` without the regions whose mean building probability is under ``minimum``."""
    if minimum <= 0:
        return regions
    labels, inverse = np.unique(regions, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=building.ravel().astype(np.float64))
    means = sums / np.bincount(inverse.ravel()) / 255.0
    drop = (means < minimum) & (labels > 0)
    return np.where(drop[inverse].reshape(regions.shape), 0, regions)


def macro(per_source: dict[str, list[int]]) -> tuple[float, float]:
    """Mean over sources of object F1 and pixel IoU (counts tp, fp, fn, ptp, pfp, pfn)."""
    f1 = [2 * c[0] / max(2 * c[0] + c[1] + c[2], 1) for c in per_source.values()]
    iou = [c[3] / max(c[3] + c[4] + c[5], 1) for c in per_source.values()]
    return float(np.mean(f1)), float(np.mean(iou))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="configs/dataset.yaml")
    ap.add_argument("--min-area", type=float, default=8.0)
    ap.add_argument(
        "--grid", action="append", default=[], metavar="NAME=V1,V2",
        help=f"replace one axis of the grid (axes: {', '.join(GRID)})",
    )  # fmt: skip
    args = ap.parse_args()
    grid = dict(GRID)
    for item in args.grid:
        name, _, values = item.partition("=")
        if name not in grid or not values:
            ap.error(f"--grid {item!r}: expected NAME=V1,V2 with NAME one of {', '.join(grid)}")
        grid[name] = [float(v) for v in values.split(",")]
    model_gsd = float(read_checkpoint_metadata(args.model)["gsd_m"])
    seg = CheckpointSource(args.model).load()
    scenes = []
    for scene in load_dataset(args.data, splits=("val",)).scenes:
        sgrid = scene_grid(scene)
        transform = sgrid.transform
        prob = seg.predict(scene.image.transpose(2, 0, 1)[None], scale=scene.gsd_m / model_gsd)[0]
        valid = scene.label != IGNORE
        truth = (scene.label == 1).astype(np.uint8)
        frame = MetricFrame.for_scene(sgrid.crs, sgrid.bounds)
        tpolys = reference_polygons(truth, transform=transform).geometry
        scenes.append((scene, prob, valid, truth, transform, frame, tpolys))
    rows = []
    axes = [name for name in grid if name != "confidence"]  # the split runs once per combination
    for combo in itertools.product(*(grid[name] for name in axes)):
        thr, seed, bnd, grow, min_seed = (dict(zip(axes, combo, strict=True))[k] for k in SPLIT_AXES)
        per_conf: dict[float, dict[str, list[int]]] = {c: {} for c in grid["confidence"]}
        for scene, prob, valid, truth, transform, frame, tpolys in scenes:
            mask = (prob[0] >= round(thr * 255)) & valid
            regions = split_array(
                building=prob[0], boundary=prob[1], mask=mask, seed_threshold=max(seed, thr),
                boundary_threshold=bnd, min_seed_px=max(1, math.ceil(min_seed / scene.gsd_m**2)),
                grow_px=math.ceil(grow / scene.gsd_m),
            )  # fmt: skip
            t = truth.astype(bool) & valid
            pixels = ((mask & t).sum(), (mask & ~t).sum(), (~mask & t).sum())
            for conf, per_source in per_conf.items():
                kept = confident(regions, prob[0], conf)
                polys = reference_polygons(kept, transform=transform).geometry
                om = object_metrics(polys, tpolys, min_area_m2=args.min_area, frame=frame)
                counts = per_source.setdefault(scene.source, [0] * 6)
                for i, v in enumerate((om["tp"], om["fp"], om["fn"], *pixels)):
                    counts[i] += int(v)
        for conf, per_source in per_conf.items():
            f1, iou = macro(per_source)
            tp, fp, fn = (sum(c[i] for c in per_source.values()) for i in range(3))
            rows.append((f1, iou, thr, seed, bnd, grow, conf, min_seed, tp, fp, fn))
            print(f"{len(rows)}: F1 {f1:.4f} IoU {iou:.4f} {rows[-1][2:]}", file=sys.stderr, flush=True)
    rows.sort(reverse=True)
    print(
        "| macro obj F1 | macro px IoU | threshold | seed | boundary | grow (m) | confidence"
        " | min seed (m²) | TP | FP | FN |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for f1, iou, thr, seed, bnd, grow, conf, min_seed, tp, fp, fn in rows[:15]:
        print(
            f"| {f1:.3f} | {iou:.3f} | {thr} | {seed} | {bnd} | {grow} | {conf} | {min_seed}"
            f" | {tp} | {fp} | {fn} |"
        )


if __name__ == "__main__":
    from pipeline.io.gdal_env import configure_process

    configure_process()  # GDAL's block cache and S3, as the CLI sets them for itself
    main()
