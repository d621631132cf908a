"""``footprints bench`` on a lent GPU: the 8192² scene with CUDA workers at batch 8, 16 and 32.

Run through ``scripts/gpu_bench.sh`` (which installs the wheels that ``gpu_prepare.py --bench``
packed); ``--dry-run`` runs the same path on the CPU on a small scene, in the test suite.

For each batch size, ``pipeline.run.bench.run_bench`` measures model-only, end-to-end and
pipeline-only on one Dask ``LocalCluster`` (one worker on the GPU: channels-last, fp16 autocast,
pixels through pinned host memory; see ``pipeline.model.infer.TorchSegmenter``), and a thread samples
the GPU's utilization through NVML every 0.1 s, so each mode gets its GPU busy %: the mean of
the samples inside its time window. Results go to ``$OUT/gpu_bench.json`` (and a table on
stdout). Batch sizes that would start after ``--budget`` seconds are skipped and recorded so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

MODES = ("model_only", "end_to_end", "pipeline_only")


class GpuSampler:
    """GPU utilization (%) sampled through NVML in a thread; empty without a GPU or pynvml."""

    def __init__(self, period: float = 0.1) -> None:
        self.samples: list[tuple[float, float]] = []
        self.period, self._stop = period, threading.Event()
        self._thread: threading.Thread | None = None
        self.error = ""
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml: Any = pynvml
        except Exception as exc:  # no NVIDIA driver here (the dry run)
            self.error = f"{type(exc).__name__}: {exc}"

    def __enter__(self) -> GpuSampler:
        if not self.error:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            self.samples.append((time.time(), float(util)))

    def busy(self, windows: list[list[float]]) -> float | None:
        """Mean utilization (%) of the samples inside the ``[start, end]`` windows (None without samples)."""
        inside = [u for t, u in self.samples if any(w[0] <= t <= w[1] for w in windows)]
        return round(sum(inside) / len(inside), 1) if inside else None


def make_scene(args: argparse.Namespace) -> Path:
    from peak_rss import write_mosaic

    scene = args.work / f"mosaic{args.size}.tif"
    if not scene.exists():
        args.work.mkdir(parents=True, exist_ok=True)
        write_mosaic(args.source, scene, args.size)
    return scene


def bench_batch(scene: Path, batch: int, args: argparse.Namespace, sampler: GpuSampler) -> dict[str, Any]:
    from pipeline.config import load_config
    from pipeline.run.bench import run_bench

    overrides = {"tiling.batch_size": batch, "model.device": args.device, "model.runtime": "torch"}
    config = load_config(REPO / "configs" / "gpu.yaml", **overrides)
    tiles = args.max_tiles or 2 * batch
    report = run_bench(input_path=str(scene), config=config, model_path=args.model, max_tiles=tiles)
    row: dict[str, Any] = {"batch_size": batch}
    for mode in MODES:
        r = report[mode]
        row[mode] = {"mps": r["mps"], "gpu_busy_pct": sampler.busy(r.get("windows") or [r["window"]])}
    row["scene_mps_end_to_end"] = report["end_to_end"]["scene_mps"]
    row["ratio"] = report["ratio"]
    row["report"] = report
    return row


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, a 1024² scene, batches 1 and 2")
    ap.add_argument("--source", type=Path, default=None, help="scene to mirror (default: the demo scene)")
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped one in models/)")
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--batches", default="8,16,32")
    ap.add_argument("--max-tiles", type=int, default=0, help="model-only tiles (default: 2 batches)")
    ap.add_argument("--budget", type=float, default=480.0, help="no batch size starts after this (s)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/footprints-gpu-bench"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/gpu-bench")))
    args = ap.parse_args()
    args.device = "cuda"
    if args.source is None:
        from peak_rss import DEMO

        carried = REPO / ".gpu" / "bench" / DEMO.name  # gpu_prepare.py --bench copies it there
        args.source = carried if carried.exists() else DEMO
    if args.dry_run:
        args.device, args.size, args.batches = "cpu", 1024, "1,2"
    return args


def main() -> None:
    args = parse()
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    scene = make_scene(args)
    rows: list[dict[str, Any]] = []
    with GpuSampler() as sampler:
        for batch in (int(b) for b in args.batches.split(",")):
            if time.perf_counter() - t0 > args.budget:
                rows.append({"batch_size": batch, "skipped": f"over the {args.budget:.0f} s budget"})
                continue
            rows.append(bench_batch(scene, batch, args, sampler))
            print(line(rows[-1]), flush=True)
    result = {
        "device": args.device, "scene": [args.size, args.size], "dry_run": args.dry_run,
        "autocast": "float16" if args.device == "cuda" else None, "channels_last": True,
        "pinned_memory": args.device == "cuda", "gpu_sampling": sampler.error or "nvml, 0.1 s",
        "seconds": round(time.perf_counter() - t0, 1), "rows": rows,
    }  # fmt: skip
    (args.out / "gpu_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / 'gpu_bench.json'} in {result['seconds']} s")


def line(row: dict[str, Any]) -> str:
    parts = [f"batch {row['batch_size']:>3}:"]
    for mode in MODES:
        busy = row[mode]["gpu_busy_pct"]
        parts.append(f"{mode} {row[mode]['mps']:.2f} MP/s (GPU {'-' if busy is None else busy} %)")
    parts.append(f"e2e/model {row['ratio']['end_to_end_over_model_only']:.3f}")
    return "; ".join(parts)


if __name__ == "__main__":
    main()
