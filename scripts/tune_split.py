"""Choose the decision threshold and the touching-building split on the validation scenes.

    python scripts/tune_split.py --model CKPT [--data configs/dataset.yaml]

Predicts every validation scene once (whole scene, resampled to the model's GSD like the
pipeline does), then scores a grid of (threshold, seed threshold, boundary/contact threshold,
grow distance) with the pipeline's own split (:func:`pipeline.regions.split_array`),
polygonization and one-to-one object matching; counts are pooled over all scenes. Prints
a Markdown table, best object F1 first.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.dataset import IGNORE, load_dataset
from pipeline.evaluate import object_metrics
from pipeline.files import read_checkpoint_metadata
from pipeline.geo import MetricFrame
from pipeline.infer import CheckpointSource
from pipeline.polygonize import reference_polygons
from pipeline.regions import split_array
from pipeline.validate import scene_grid

GRID = {
    "threshold": [0.4, 0.5, 0.6],
    "seed": [0.6, 0.7, 0.8],
    "boundary": [0.2, 0.3, 0.4, 0.5],
    "grow_m": [2.0, 4.0, 6.0],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="configs/dataset.yaml")
    ap.add_argument("--min-area", type=float, default=8.0)
    args = ap.parse_args()
    model_gsd = float(read_checkpoint_metadata(args.model)["gsd_m"])
    seg = CheckpointSource(args.model).load()
    scenes = []
    for scene in load_dataset(args.data, splits=("val",)).scenes:
        crs, transform = scene_grid(scene)
        prob = seg.predict(scene.image.transpose(2, 0, 1)[None], scale=scene.gsd_m / model_gsd)[0]
        valid = scene.label != IGNORE
        truth = (scene.label == 1).astype(np.uint8)
        h, w = truth.shape
        bounds = (transform.c, transform.f + h * transform.e, transform.c + w * transform.a, transform.f)
        frame = MetricFrame.for_scene(crs, bounds)
        tpolys = reference_polygons(truth, transform=transform).geometry
        scenes.append((scene, prob, valid, truth, transform, frame, tpolys))
    rows = []
    for thr, seed, bnd, grow in itertools.product(*GRID.values()):
        tp = fp = fn = ptp = pfp = pfn = 0
        for scene, prob, valid, truth, transform, frame, tpolys in scenes:
            mask = (prob[0] >= round(thr * 255)) & valid
            regions = split_array(
                building=prob[0], boundary=prob[1], mask=mask, seed_threshold=max(seed, thr),
                boundary_threshold=bnd, min_seed_px=max(1, math.ceil(1.0 / scene.gsd_m**2)),
                grow_px=math.ceil(grow / scene.gsd_m),
            )  # fmt: skip
            polys = reference_polygons(regions, transform=transform).geometry
            om = object_metrics(polys, tpolys, min_area_m2=args.min_area, frame=frame)
            tp, fp, fn = tp + om["tp"], fp + om["fp"], fn + om["fn"]
            t = truth.astype(bool) & valid
            ptp += int((mask & t).sum())
            pfp += int((mask & ~t & valid).sum())
            pfn += int((~mask & t).sum())
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        iou = ptp / max(ptp + pfp + pfn, 1)
        rows.append((f1, iou, thr, seed, bnd, grow, tp, fp, fn))
    rows.sort(reverse=True)
    print("| object F1 | pixel IoU | threshold | seed | boundary | grow (m) | TP | FP | FN |")
    print("|---|---|---|---|---|---|---|---|---|")
    for f1, iou, thr, seed, bnd, grow, tp, fp, fn in rows[:15]:
        print(f"| {f1:.3f} | {iou:.3f} | {thr} | {seed} | {bnd} | {grow} | {tp} | {fp} | {fn} |")


if __name__ == "__main__":
    main()
