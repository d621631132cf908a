"""Capacity or data? A checkpoint's pixel IoU on training ground against validation ground.

    python scripts/train_val_gap.py CKPT [--data configs/dataset.yaml] [--threads 1]

Runs training's own validation (whole scenes at the training GSD, tiles of 1024 px, the
threshold chosen per split, macro over sources) twice: on the validation scenes, and on
training scenes taken per source in dataset order until they cover as many pixels as that
source's validation scenes (sources without validation scenes are left out). Train far above
val: the model learnt its training scenes and does not carry them over (data). Both alike and
low: it fits the training scenes no better (capacity, or label noise). Prints one JSON line per
split. Needs the fp32 training state's weights (``--out`` of ``footprints train``) or any
checkpoint; about 35 minutes on one thread for the 37 validation scenes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.model.checkpoint import load_checkpoint
from pipeline.training.dataset import load_dataset
from pipeline.training.sampling import ValScene, validation_scenes
from pipeline.training.validation import evaluate


def pixels(scene: ValScene) -> int:
    return int(scene.target.shape[-2] * scene.target.shape[-1])


def matched_training_scenes(data: str, budget: dict[str, int]) -> list[ValScene]:
    """Training scenes per source, in dataset order, until each covers its ``budget`` pixels."""
    taken: dict[str, int] = {}
    scenes = []
    for scene in validation_scenes(load_dataset(data, splits=("train",)), split="train"):
        if scene.source not in budget or taken.get(scene.source, 0) >= budget[scene.source]:
            continue
        taken[scene.source] = taken.get(scene.source, 0) + pixels(scene)
        scenes.append(scene)
    return scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default="configs/dataset.yaml")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint).model.eval()
    val = list(validation_scenes(load_dataset(args.data, splits=("val",)), split="val"))
    budget: dict[str, int] = {}
    for scene in val:
        budget[scene.source] = budget.get(scene.source, 0) + pixels(scene)
    for name, scenes in (("train", matched_training_scenes(args.data, budget)), ("val", val)):
        started = time.time()
        threshold, metrics = evaluate(model, scenes, device=torch.device("cpu"), tile=1024)
        line = {"split": name, "scenes": len(scenes), "threshold": threshold}
        line |= {k: round(v, 4) for k, v in metrics.items()} | {"seconds": round(time.time() - started)}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
