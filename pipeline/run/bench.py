"""``footprints bench``: model-only, end-to-end and pipeline-only throughput, measured alike.

All three run on one Dask cluster, started once from the config's ``dask`` section, so they
share the process layout, the threads, the grid and the batch size:

* **model-only**: one task on a worker reads the first ``max_tiles`` tiles of the scene's grid
  into memory, runs ``Segmenter.predict`` once to warm up, then times it over them in batches of
  ``tiling.batch_size`` (one stack per tile shape, as a run does). The worker's segmenter is
  the one the runs then use. It runs twice, just before and just after end-to-end, and its rate
  is the two passes pooled: on a shared machine the model's own speed drifts (0.78-1.01 MP/s
  within an hour on the 2-core test machine), and a single pass taken before a run that lasts
  minutes skewed the ratio either way.
* **end-to-end**: the whole job (``segment_scene``: plan, infer and stitch, split, vectorize,
  write, describe, publish) into a temporary OUTDIR.
* **pipeline-only**: the same job with the network replaced by a trivial operator of its output
  shape (:class:`pipeline.model.arrays.CellBrightness`); everything else, the segmenter's
  normalizing and resampling included, runs as in end-to-end. Its MP/s is the pipeline's ceiling,
  what a model that costs nothing (a fast GPU) would leave.

Rates count tile pixels (overlaps included), so end-to-end / model-only is the share of the
model's speed the job delivers. For each run: wall seconds per stage and the client's CPU
seconds per stage (the client process also runs the local cluster's scheduler), the workers'
CPU seconds reading and inferring (summed over tasks) and in all (their processes' CPU time over
the run), and the workers' busy fraction: task seconds over wall seconds times worker threads.
"""

from __future__ import annotations

import dataclasses
import functools
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.io.read import RasterInfo, read_tile
from pipeline.model.infer import ModelSource, cached_segmenter
from pipeline.model.runtimes import PIPELINE_ONLY
from pipeline.model.tiled import predict_by_shape
from pipeline.run.cluster import connect
from pipeline.run.dispatch import PLUGIN_NAME, ModelPlugin, workers_have_gpus
from pipeline.run.model_choice import ModelChoice, choose_model
from pipeline.run.plan import ScenePlan, plan_for
from pipeline.run.scene import segment_scene
from pipeline.tiling.grid import Tile


def time_model(
    info: RasterInfo, tiles: list[Tile], source: ModelSource, scale: float, batch_size: int
) -> dict[str, Any]:
    """Worker task: ``Segmenter.predict`` timed over ``tiles`` already read into memory."""
    pixels = [read_tile(info, t)[0] for t in tiles]
    stacks = [pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size)]
    segmenter = cached_segmenter(source)
    predict_by_shape(segmenter, stacks[0], scale=scale)  # warm-up
    w0, c0, began = time.perf_counter(), time.process_time(), time.time()
    for stack in stacks:
        predict_by_shape(segmenter, stack, scale=scale)
    return {
        "window": [round(began, 3), round(time.time(), 3)],  # epoch seconds (to align GPU samples)
        "seconds": time.perf_counter() - w0,
        "cpu_s": time.process_time() - c0,
        "runtime": str(getattr(segmenter, "runtime", "")),
    }


def _worker_cpu(client: Any) -> float:
    return float(sum(client.run(time.process_time).values()))


def _worker_peak_rss_mb(client: Any) -> float:
    def peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    return round(float(sum(client.run(peak).values())), 1)


def _tile_mpx(tiles: list[Tile]) -> float:
    return sum(t.height * t.width for t in tiles) / 1e6


def model_only(
    client: Any, *, plan: ScenePlan, model: ModelChoice, config: PipelineConfig, max_tiles: int
) -> dict[str, Any]:
    """One model-only pass: :func:`time_model` of the grid's first ``max_tiles`` tiles on a worker."""
    sample = list(plan.grid)[:max_tiles]
    resources = {"GPU": 1} if workers_have_gpus(client) else None
    fut = client.submit(
        time_model,
        plan.info,
        sample,
        model.source,
        plan.scale,
        config.tiling.batch_size,
        resources=resources,
        pure=False,
    )
    timed = fut.result()
    return {
        "window": timed["window"],
        "runtime": timed["runtime"],
        "tiles": len(sample),
        "mps": round(_tile_mpx(sample) / timed["seconds"], 3),
        "seconds": round(timed["seconds"], 3),
        "worker_cpu_s": round(timed["cpu_s"], 3),
    }


def pooled(passes: list[dict[str, Any]], *, tile_mpx: float) -> dict[str, Any]:
    """Model-only passes over the same ``tile_mpx`` megapixels as one: their tiles over their
    seconds, each pass's rate kept in ``passes`` and its time window in ``windows``."""
    seconds = sum(p["seconds"] for p in passes)
    return {
        "runtime": passes[0]["runtime"],
        "tiles": passes[0]["tiles"],
        "mps": round(len(passes) * tile_mpx / seconds, 3),
        "seconds": round(seconds, 3),
        "worker_cpu_s": round(sum(p["worker_cpu_s"] for p in passes), 3),
        "windows": [p["window"] for p in passes],
        "passes": [p["mps"] for p in passes],
    }


def timed_run(
    *,
    client: Any,
    input_path: str,
    out_dir: Path,
    model: ModelChoice,
    config: PipelineConfig,
    plan: ScenePlan,
    threads: int,
) -> dict[str, Any]:
    """One whole job on ``client``; its rates, stages, CPU seconds and the workers' busy share."""
    cpu0, t0, began = _worker_cpu(client), time.perf_counter(), time.time()
    result = segment_scene(
        input_path=input_path, out_dir=out_dir, config=config, model=model, client=client, force=True
    )
    wall = time.perf_counter() - t0
    worker_total = _worker_cpu(client) - cpu0
    rec = result.record
    times = rec["cpu_seconds"]["workers"]
    return {
        "window": [round(began, 3), round(began + wall, 3)],  # epoch seconds (to align GPU samples)
        "runtime": rec.get("runtime"),
        "mps": round(_tile_mpx(list(plan.grid)) / wall, 3),
        "scene_mps": round(plan.info.grid.height * plan.info.grid.width / wall / 1e6, 3),
        "seconds": round(wall, 3),
        "stages_s": rec["seconds"],
        "client_cpu_s": rec["cpu_seconds"]["client"],
        "worker_cpu_s": {
            "read": times["read_cpu_s"],
            "infer": times["infer_cpu_s"],
            "other": round(worker_total - times["read_cpu_s"] - times["infer_cpu_s"], 3),
            "total": round(worker_total, 3),
        },
        "worker_busy": round(times["task_s"] / (wall * threads), 3),
        "buildings": rec["counts"]["buildings"],
        "tiles_inferred": rec["counts"]["tiles_inferred"],
    }


def run_bench(
    *, input_path: str, config: PipelineConfig, model_path: str | None, max_tiles: int
) -> dict[str, Any]:
    """Model-only, end-to-end and pipeline-only on one cluster (see the module's docstring)."""
    model = choose_model(model_path=model_path, config=config)
    plan = plan_for(model, input_path=input_path, config=config)
    source: Any = model.source
    stand_in = dataclasses.replace(model, source=dataclasses.replace(source, runtime=PIPELINE_ONLY))
    dc = config.dask
    t0 = time.perf_counter()
    with (
        connect(
            scheduler=dc.scheduler, n_workers=dc.n_workers, threads_per_worker=dc.threads_per_worker
        ) as c,
        tempfile.TemporaryDirectory(prefix="footprints-bench-") as tmp,
    ):
        c.register_plugin(ModelPlugin(model.source), name=PLUGIN_NAME)
        startup_s = time.perf_counter() - t0
        nthreads: dict[str, int] = c.nthreads()  # type: ignore[no-untyped-call]
        threads = sum(nthreads.values())
        common: dict[str, Any] = {
            "client": c,
            "input_path": input_path,
            "config": config,
            "plan": plan,
            "threads": threads,
        }
        layout = _layout(
            plan=plan,
            config=config,
            workers=len(nthreads),
            threads=threads,
            threads_per_model=getattr(source, "threads", None),
        )
        one_pass = functools.partial(
            model_only, c, plan=plan, model=model, config=config, max_tiles=max_tiles
        )
        before = one_pass()
        end_to_end = timed_run(out_dir=Path(tmp) / "end-to-end", model=model, **common)
        after = one_pass()  # before and after: the model's rate over the same span
        report: dict[str, Any] = {
            "layout": layout,
            "model_only": pooled([before, after], tile_mpx=_tile_mpx(list(plan.grid)[:max_tiles])),
            "end_to_end": end_to_end,
            "pipeline_only": timed_run(out_dir=Path(tmp) / "pipeline-only", model=stand_in, **common),
            "cluster_startup_s": round(startup_s, 2),
        }
        worker_rss = _worker_peak_rss_mb(c)
    m, e, p = (report[k]["mps"] for k in ("model_only", "end_to_end", "pipeline_only"))
    report["ratio"] = {
        "end_to_end_over_model_only": round(e / m, 3),
        "pipeline_only_over_model_only": round(p / m, 3),
    }
    own = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    report["peak_rss_mb"] = {"client": own, "workers": worker_rss, "sum": round(own + worker_rss, 1)}
    return report


def _layout(
    *, plan: ScenePlan, config: PipelineConfig, workers: int, threads: int, threads_per_model: int | None
) -> dict[str, Any]:
    tiles, bs = list(plan.grid), config.tiling.batch_size
    same = (
        "model-only (before and after end-to-end), end-to-end and pipeline-only ran on the same Dask "
        f"cluster ({workers} worker process(es), {threads} task thread(s) in all, "
        f"{threads_per_model} thread(s) per model), "
        f"on the same grid ({len(tiles)} tiles of up to {tiles[0].height}x{tiles[0].width} px) and "
        f"batch size {bs}; model-only timed the first tiles of that grid, already read into the "
        "worker's memory, with the segmenter the runs used"
    )
    return {
        "statement": same,
        "scene": list(plan.info.grid.shape),
        "tiles": len(tiles),
        "tile_shape": [tiles[0].height, tiles[0].width],
        "batch_size": bs,
        "workers": workers,
        "threads_per_worker": config.dask.threads_per_worker,
        "model_threads": threads_per_model,
        "runtime_config": config.model.runtime,
    }


MODES = (("model_only", "model-only"), ("end_to_end", "end-to-end"), ("pipeline_only", "pipeline-only"))


def format_report(report: dict[str, Any]) -> str:
    """The report as text: the layout sentence, one row per mode, then stages and ratios."""
    lines = [report["layout"]["statement"] + ".", ""]
    lines.append(f"{'mode':<15}{'runtime':<15}{'MP/s':>8}{'wall s':>9}{'busy':>7}  worker CPU s")
    for key, name in MODES:
        r = report[key]
        cpu = r["worker_cpu_s"]
        cpu_text = (
            f"{cpu}"
            if not isinstance(cpu, dict)
            else f"read {cpu['read']}, infer {cpu['infer']}, other {cpu['other']}, total {cpu['total']}"
        )
        if "passes" in r:
            cpu_text += (
                f" (passes before and after end-to-end: {', '.join(f'{m:.3f}' for m in r['passes'])} MP/s)"
            )
        busy = f"{r['worker_busy']:.2f}" if "worker_busy" in r else "-"
        runtime = r["runtime"] or "-"
        lines.append(f"{name:<15}{runtime:<15}{r['mps']:>8.3f}{r['seconds']:>9.1f}{busy:>7}  {cpu_text}")
    head = f"{'stage':<15}{'e2e wall s':>11}{'client CPU s':>13}{'p-only wall s':>14}{'client CPU s':>13}"
    lines += ["", head]
    e2e, pipe = report["end_to_end"], report["pipeline_only"]
    for stage in e2e["stages_s"]:
        lines.append(
            f"{stage:<15}{e2e['stages_s'][stage]:>11.2f}{e2e['client_cpu_s'].get(stage, 0.0):>13.2f}"
            f"{pipe['stages_s'].get(stage, 0.0):>14.2f}{pipe['client_cpu_s'].get(stage, 0.0):>13.2f}"
        )
    ratio, rss = report["ratio"], report["peak_rss_mb"]
    lines += [
        "",
        f"end-to-end / model-only: {ratio['end_to_end_over_model_only']:.3f}; "
        f"pipeline-only / model-only: {ratio['pipeline_only_over_model_only']:.3f}",
        f"scene MP/s end-to-end {e2e['scene_mps']:.3f}, pipeline-only {pipe['scene_mps']:.3f}; "
        f"buildings {e2e['buildings']} and {pipe['buildings']}",
        f"peak RSS MB: client {rss['client']}, workers {rss['workers']}, sum {rss['sum']}; "
        f"cluster start {report['cluster_startup_s']} s",
    ]
    return "\n".join(lines)
