"""``footprints bench``: model-only against end-to-end throughput on the same tiles."""

from __future__ import annotations

import resource
import tempfile
import time
from typing import Any

import numpy as np

from pipeline.config import PipelineConfig
from pipeline.dispatch import PLUGIN_NAME, ModelPlugin, connect
from pipeline.read import read_tile
from pipeline.scene import choose_model, plan_for, segment_scene


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process and of its finished children, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"client": round(own, 1), "workers": round(children, 1)}


def run_bench(
    *, input_path: str, config: PipelineConfig, model_path: str | None, max_tiles: int
) -> dict[str, Any]:
    """Time the model on tiles already in memory, then the whole job on the same grid.

    Both rates count the same tile pixels (overlaps included), so their ratio is the
    share of the model's speed that the pipeline delivers end to end. The Dask cluster
    is started (and the model loaded on its workers) before the end-to-end clock starts;
    that start-up is reported on its own.
    """
    model = choose_model(model_path=model_path, config=config)
    plan = plan_for(model, input_path=input_path, config=config)
    tiles = list(plan.grid)
    sample = [read_tile(plan.info, t)[0] for t in tiles[:max_tiles]]
    bs = config.tiling.batch_size
    batches = [np.stack(sample[i : i + bs]) for i in range(0, len(sample), bs)]
    segmenter = model.source.load()
    segmenter.predict(batches[0], scale=plan.scale)  # warm-up
    t0 = time.perf_counter()
    for b in batches:
        segmenter.predict(b, scale=plan.scale)
    model_s = time.perf_counter() - t0
    tile_px = tiles[0].height * tiles[0].width
    model_mps = len(sample) * tile_px / model_s / 1e6
    del segmenter
    dc = config.dask
    t0 = time.perf_counter()
    with (
        connect(
            scheduler=dc.scheduler, n_workers=dc.n_workers, threads_per_worker=dc.threads_per_worker
        ) as client,
        tempfile.TemporaryDirectory(prefix="footprints-bench-") as tmp,
    ):
        client.register_plugin(ModelPlugin(model.source), name=PLUGIN_NAME)
        startup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = segment_scene(
            input_path=input_path, out_dir=tmp, config=config, model_path=model_path, client=client
        )
        e2e_s = time.perf_counter() - t0
    e2e_mps = len(tiles) * tile_px / e2e_s / 1e6
    return {
        "tiles": len(tiles),
        "tile_shape": [tiles[0].height, tiles[0].width],
        "batch_size": bs,
        "model_only_mps": round(model_mps, 3),
        "end_to_end_mps": round(e2e_mps, 3),
        "ratio": round(e2e_mps / model_mps, 3),
        "scene_mps": round(plan.info.height * plan.info.width / e2e_s / 1e6, 3),
        "cluster_startup_s": round(startup_s, 2),
        "seconds": result.record["seconds"],
        "peak_rss_mb": peak_rss_mb(),
    }
