"""``run.json``: what a published scene records about how it was made.

Besides the config, model, grid, counts, seconds and versions, it carries the run key,
the ``owner`` that marks OUTDIR as this scene's and config's (see :mod:`pipeline.run.outdir`),
the SHA-256 and size of every other output (``checksums``), the footprints version, the
start and end times (UTC), the device the model ran on and the host's CPU and GPU names.
"""

from __future__ import annotations

import importlib.metadata
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline import __version__
from pipeline.run.hardware import host_summary, summarize_devices
from pipeline.run.outdir import owner
from pipeline.run.restart import config_digest

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.run.scene import ModelChoice, ScenePlan, SceneTarget, StitchStats

VERSIONED = (
    "torch", "segmentation-models-pytorch", "timm", "rasterio", "shapely", "geopandas",
    "dask", "distributed", "prefect", "numpy", "pyogrio",
)  # fmt: skip


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def utc_now() -> str:
    """Now, in UTC, to the second: ``2026-12-01T18:09:00Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_record(
    *, plan: ScenePlan, model: ModelChoice, config: PipelineConfig, stats: StitchStats,
    n_buildings: int, seconds: dict[str, float], target: SceneTarget, run_key: str | None = None,
    checksums: dict[str, Any] | None = None, started: str | None = None, finished: str | None = None,
    probability_bands: list[str] | None = None, cpu_seconds: dict[str, float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    info, grid = plan.info, plan.info.grid
    assert grid.crs is not None  # open_raster refuses a raster without one
    return {
        "scene": plan.scene,
        "footprints_version": __version__,
        "started": started,
        "finished": finished or utc_now(),
        **summarize_devices(stats.devices),
        "runtime": ", ".join(stats.runtimes) or None,
        "host": host_summary(),
        "run_key": run_key,
        "owner": owner(scene=target.input.url, config_sha256=config_digest(config)),
        "checksums": checksums or {},
        "input": {"url": target.input.url, "path": info.path, **target.input_identity,
                  "modified": target.input_modified, "crs": grid.crs.to_string(),
                  "transform": list(grid.transform)[:6], "height": grid.height, "width": grid.width,
                  "bands": list(info.bands)},
        "probability_bands": probability_bands or ["building"],
        "config": config.model_dump(mode="json"),
        "model": model.description,
        "grid": {"tile_size": plan.grid.tile_size, "overlap": plan.grid.overlap,
                 "shape": list(plan.grid.shape), "input_gsd_m": round(plan.gsd_m, 4),
                 "scale_to_model": round(plan.scale, 4)},
        "counts": {"tiles": stats.tiles, "tiles_inferred": stats.tiles_inferred,
                   "tiles_skipped": stats.tiles_skipped, "tiles_reused": stats.tiles_reused,
                   "batches": stats.batches,
                   "buildings": n_buildings},
        "seconds": seconds,
        "cpu_seconds": {"client": cpu_seconds or {}, "workers": stats.worker_times},
        "versions": package_versions(),
    }  # fmt: skip
