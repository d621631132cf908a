"""Compare the CPU runtimes of the shipped model on real validation tiles, side by side in one run.

    .venv/bin/python scripts/bench_runtimes.py [--data configs/dataset.yaml | --images 'GLOB']
        [--model CKPT] [--threads 2] [--runtimes torch,torch-compile,onnxruntime,openvino,openvino-bf16]
        [--timing-tiles 8] [--repeats 3] [--json FILE]

For every runtime (``model.runtime``, plus ``torch.compile`` of the channels-last module, which
is measured only and kept only if it wins, and ``torch-contiguous``, eager PyTorch without
channels-last, the reference):

* **ms per tile** of the network alone (``Forward``: the same input for all, already normalized
  and resampled to the model's GSD) on 512² model-pixel tiles cut from the validation scenes, at
  batch 1 and batch 4. The runtimes take turns, ``--repeats`` rounds of each, and the median round
  counts, so a load that comes and goes on the machine weighs on all of them alike;
* **agreement**: every tile of every validation scene (the pipeline's own grid, tiles read as a
  run reads them) goes through the whole segmenter (:class:`pipeline.model.infer.TorchSegmenter`,
  or :class:`pipeline.model.arrays.ArraySegmenter` for the exported runtimes), and the building
  mask at the checkpoint's threshold is compared with PyTorch fp32 eager's (the module as trained,
  contiguous memory, no autocast): pooled IoU over all tiles and the worst scene's IoU.
  A runtime agrees at IoU >= 0.995 (issue 14). ``torch.compile`` compiles once per input shape
  (with symbolic shapes, Inductor spent over 35 minutes in sympy on this model before we stopped
  it), so it is compared on the 512² timing tiles only: their building masks from its logits
  against the reference's (``agreement`` says ``512² tiles``).

The validation scenes are the DATASET.yaml's ``val`` split, written as GeoTIFFs into a temporary
folder (as ``footprints validate`` writes them), or the images a ``--images`` glob names (e.g. the
``image.tif`` files of a ``footprints validate`` output). Prints one table; ``--json`` writes it too.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.config import PipelineConfig, default_checkpoint
from pipeline.io.read import read_tile
from pipeline.model.arrays import ArraySegmenter, pad_to_stride
from pipeline.model.infer import CheckpointSource, Forward, TorchForward, TorchSegmenter, model_shape
from pipeline.model.runtimes import RUNTIMES
from pipeline.run.model_choice import choose_model
from pipeline.run.plan import plan_for

AGREE_IOU = 0.995
TILE = 512


#: A runtime's segmenter: PyTorch's, or the exported runtimes' on arrays.
Segmenter = TorchSegmenter | ArraySegmenter


def forward_of(seg: Segmenter) -> Forward:
    """The segmenter's forward pass alone, on a normalized tensor (for timing and logit masks)."""
    if isinstance(seg, TorchSegmenter):
        return seg.model
    return _ArrayForward(seg)


class _ArrayForward:
    def __init__(self, seg: ArraySegmenter) -> None:
        self.seg, self.output_stride = seg, seg.output_stride

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        height, width = int(x.shape[-2]), int(x.shape[-1])
        padded = np.ascontiguousarray(pad_to_stride(x.numpy(), self.output_stride))
        return torch.from_numpy(self.seg.run(padded))[..., :height, :width]


@dataclass
class SceneTiles:
    name: str
    pixels: list[np.ndarray]  # uint8 (3, h, w) at the input's GSD
    scale: float


def val_images(args: argparse.Namespace, workdir: Path) -> list[tuple[str, Path]]:
    """(name, GeoTIFF) of every validation scene."""
    if args.images:
        return [(Path(p).parent.name or Path(p).stem, Path(p)) for p in sorted(glob.glob(args.images))]
    from pipeline.evaluation.validation import write_scene
    from pipeline.training.dataset import load_dataset

    scenes = load_dataset(args.data, splits=("val",)).scenes
    out = []
    for i, scene in enumerate(scenes):
        image, _ = write_scene(scene, workdir / f"{i:03d}")
        out.append((f"{scene.source}:{Path(scene.name).name}", image))
    return out


def load_tiles(images: list[tuple[str, Path]], model_path: str, per_scene: int) -> list[SceneTiles]:
    """Each scene's tiles on the pipeline's grid, as a run reads them (all-nodata tiles left out);
    ``per_scene`` > 0 keeps that many, evenly spaced over the grid."""
    config = PipelineConfig()
    model = choose_model(model_path=model_path, config=config)
    scenes = []
    for name, path in images:
        plan = plan_for(model, input_path=str(path), config=config)
        pixels = []
        tiles = list(plan.grid)
        if 0 < per_scene < len(tiles):
            tiles = [tiles[int(i)] for i in np.unique(np.linspace(0, len(tiles) - 1, per_scene).round())]
        for tile in tiles:
            px, valid = read_tile(plan.info, tile)
            if valid.any():
                pixels.append(px)
        scenes.append(SceneTiles(name=name, pixels=pixels, scale=plan.scale))
    return scenes


def model_inputs(scenes: list[SceneTiles], segmenter: TorchSegmenter, count: int) -> list[torch.Tensor]:
    """Up to ``count`` normalized 512² model-pixel tiles, taken in turn from the scenes that have them."""
    pools: list[list[torch.Tensor]] = []
    for s in scenes:
        pool = []
        for px in s.pixels:
            size = model_shape(px.shape[1], px.shape[2], s.scale)
            if min(size) < TILE:
                continue
            x = segmenter.normalize(px[None])
            if size != tuple(x.shape[-2:]):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            pool.append(x[..., :TILE, :TILE].contiguous())
        if pool:
            pools.append(pool)
    picked: list[torch.Tensor] = []
    for i in range(max((len(p) for p in pools), default=0)):
        picked += [p[i] for p in pools if i < len(p)]
    return picked[:count]


def plain_reference(model_path: str, threads: int) -> TorchSegmenter:
    """PyTorch fp32 eager, the module as trained (no channels-last): the reference masks."""
    from pipeline.model.checkpoint import load_checkpoint

    seg = CheckpointSource(model_path, device="cpu", threads=threads, runtime="torch").load()
    assert isinstance(seg, TorchSegmenter)
    seg.model = _Plain(load_checkpoint(model_path).model.eval())
    return seg


class _Plain:
    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.output_stride = module, int(module.spec.output_stride)  # type: ignore[union-attr]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.module(x.contiguous())
        return out


def segmenters(model_path: str, names: list[str], threads: int) -> dict[str, Segmenter | str]:
    """Each runtime's segmenter, or the reason it could not be built."""
    out: dict[str, Segmenter | str] = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            if name == "torch-contiguous":  # the reference itself: eager without channels-last
                seg = plain_reference(model_path, threads)
            elif name == "torch-compile":
                seg = CheckpointSource(model_path, device="cpu", threads=threads, runtime="torch").load()
                assert isinstance(seg, TorchSegmenter) and isinstance(seg.model, TorchForward)
                compiled = torch.compile(seg.model.module, dynamic=False)
                seg.model = TorchForward(module=compiled, output_stride=seg.model.output_stride)  # type: ignore[arg-type]
            else:
                seg = CheckpointSource(model_path, device="cpu", threads=threads, runtime=name).load()
            assert isinstance(seg, TorchSegmenter | ArraySegmenter)
            out[name] = seg
        except Exception as exc:  # a runtime that is not installed or fails: say why, go on
            out[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        print(f"  {name}: ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def masks(seg: Segmenter, scene: SceneTiles, threshold: float) -> list[np.ndarray]:
    return [seg.predict(px[None], scale=scene.scale)[0, 0] >= threshold * 255 for px in scene.pixels]


def agreement(
    seg: Segmenter, scenes: list[SceneTiles], reference: list[list[np.ndarray]], threshold: float
) -> dict[str, Any]:
    inter = union = 0
    worst, worst_name = 1.0, ""
    for scene, ref in zip(scenes, reference, strict=True):
        si = su = 0
        for got, want in zip(masks(seg, scene, threshold), ref, strict=True):
            si += int(np.count_nonzero(got & want))
            su += int(np.count_nonzero(got | want))
        iou = si / su if su else 1.0
        if iou < worst:
            worst, worst_name = iou, scene.name
        inter, union = inter + si, union + su
    pooled = inter / union if union else 1.0
    return {"iou": round(pooled, 5), "worst_scene_iou": round(worst, 5), "worst_scene": worst_name,
            "agrees": pooled >= AGREE_IOU and worst >= AGREE_IOU}  # fmt: skip


def logit_agreement(
    seg: Segmenter, ref: TorchSegmenter, tiles: list[torch.Tensor], threshold: float
) -> dict[str, Any]:
    """Building masks (sigmoid >= threshold, i.e. logit >= logit(threshold)) of the forwards
    alone, on the 512² timing tiles."""
    cut = math.log(threshold / (1 - threshold))
    inter = union = 0
    with torch.inference_mode():
        for x in tiles:
            got, want = forward_of(seg)(x)[:, 0] >= cut, ref.model(x)[:, 0] >= cut
            inter += int((got & want).sum())
            union += int((got | want).sum())
    iou = inter / union if union else 1.0
    return {"iou": round(iou, 5), "worst_scene_iou": None, "worst_scene": "", "agreement": "512² tiles",
            "agrees": iou >= AGREE_IOU}  # fmt: skip


def one_round(forward: Forward, tiles: list[torch.Tensor], batch: int) -> float:
    """Seconds per tile for one pass over ``tiles`` in batches of ``batch``."""
    stacks = [torch.cat(tiles[i : i + batch]) for i in range(0, len(tiles) - batch + 1, batch)]
    with torch.inference_mode():
        t0 = time.perf_counter()
        for x in stacks:
            forward(x)
        return (time.perf_counter() - t0) / (len(stacks) * batch)


def timings(
    segs: dict[str, Segmenter], tiles: list[torch.Tensor], repeats: int, threads: int
) -> dict[str, dict[int, float]]:
    """Median ms per tile at batch 1 and 4; the runtimes take turns in every round."""
    rounds: dict[str, dict[int, list[float]]] = {n: {1: [], 4: []} for n in segs}
    for batch in (1, 4):
        for seg in segs.values():  # warm-up (and, for torch.compile, the compilation)
            torch.set_num_threads(threads)
            one_round(forward_of(seg), tiles[:batch], batch)
        for _ in range(repeats):
            for name, seg in segs.items():
                torch.set_num_threads(threads)
                rounds[name][batch].append(one_round(forward_of(seg), tiles, batch))
    return {n: {b: round(statistics.median(v) * 1000, 1) for b, v in r.items()} for n, r in rounds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("configs/dataset.yaml"))
    ap.add_argument("--images", help="glob of validation GeoTIFFs instead of --data")
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--runtimes", default=",".join(("torch-contiguous", "torch", "torch-compile", *RUNTIMES[1:]))
    )
    ap.add_argument("--timing-tiles", type=int, default=8, help="512² tiles per round (multiple of 4)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiles-per-scene", type=int, default=0, help="agreement tiles per scene (0: all)")
    ap.add_argument("--timing-only", action="store_true", help="skip the agreement pass")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    model_path = str(args.model or default_checkpoint())
    names = [n.strip() for n in args.runtimes.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as tmp:
        images = val_images(args, Path(tmp))
        scenes = load_tiles(images, model_path, args.tiles_per_scene)
    n_tiles = sum(len(s.pixels) for s in scenes)
    print(f"{len(scenes)} validation scenes, {n_tiles} tiles; threads {args.threads}", file=sys.stderr)
    threshold = choose_model(model_path=model_path, config=PipelineConfig()).threshold
    reference = plain_reference(model_path, args.threads)
    ref_masks = [] if args.timing_only else [masks(reference, s, threshold) for s in scenes]
    print("  reference masks done", file=sys.stderr, flush=True)
    segs = segmenters(model_path, names, args.threads)
    ready = {n: s for n, s in segs.items() if not isinstance(s, str)}
    tiles = model_inputs(scenes, reference, args.timing_tiles)
    times = timings(ready, tiles, args.repeats, args.threads)
    print(f"  timings (ms per tile): {times}", file=sys.stderr, flush=True)
    rows = []
    for name, seg in segs.items():
        if isinstance(seg, str):
            rows.append({"runtime": name, "error": seg})
            continue
        row = {"runtime": name, "ms_per_tile_b1": times[name][1], "ms_per_tile_b4": times[name][4]}
        if args.timing_only:
            row |= {"iou": None, "worst_scene_iou": None, "agrees": None, "agreement": "not measured"}
        elif name == "torch-compile":
            row |= logit_agreement(seg, reference, tiles, threshold)
        else:
            row |= agreement(seg, scenes, ref_masks, threshold) | {"agreement": "all tiles"}
        print(f"  {name}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    report = {"model": model_path, "threads": args.threads, "scenes": len(scenes), "tiles": n_tiles,
              "tiles_per_scene": args.tiles_per_scene or "all",
              "timing_tiles": len(tiles), "repeats": args.repeats, "rows": rows}  # fmt: skip
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def print_table(report: dict[str, Any]) -> None:
    print(
        f"{report['scenes']} validation scenes, {report['tiles']} tiles for agreement; "
        f"{report['timing_tiles']} tiles of {TILE}² timed, {report['threads']} threads"
    )
    print(f"{'runtime':<15}{'ms/tile b1':>11}{'ms/tile b4':>11}{'IoU':>9}{'worst':>9}  agrees (over)")
    for r in report["rows"]:
        if "error" in r:
            print(f"{r['runtime']:<15}  not run: {r['error']}")
            continue
        iou, worst = (("-" if v is None else f"{v:.5f}") for v in (r["iou"], r["worst_scene_iou"]))
        agrees = {True: "yes", False: "no", None: "-"}[r["agrees"]]
        print(
            f"{r['runtime']:<15}{r['ms_per_tile_b1']:>11.1f}{r['ms_per_tile_b4']:>11.1f}{iou:>9}"
            f"{worst:>9}  {agrees} ({r['agreement']})"
        )


if __name__ == "__main__":
    from pipeline.io.gdal_env import configure_process

    configure_process()  # GDAL's block cache and S3, as the CLI sets them for itself
    main()
