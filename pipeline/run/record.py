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
    from pipeline.run.context import SceneContext, StitchStats

VERSIONED = (
    "torch",
    "segmentation-models-pytorch",
    "timm",
    "rasterio",
    "shapely",
    "geopandas",
    "dask",
    "distributed",
    "prefect",
    "numpy",
    "pyogrio",
)


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
    ctx: SceneContext, *, stats: StitchStats, n_buildings: int, probability_bands: list[str] | None = None
) -> dict[str, Any]:
    """``run.json`` of the scene job ``ctx`` so far (its ``checksums`` still empty)."""
    info, plan, target, state = ctx.plan.info, ctx.plan, ctx.target, ctx.state
    raster = info.grid
    assert raster.crs is not None  # open_raster refuses a raster without one
    source = {
        "url": target.input.url,
        "path": info.path,
        **target.input_identity,
        "modified": target.input_modified,
        "crs": raster.crs.to_string(),
        "transform": list(raster.transform)[:6],
        "height": raster.height,
        "width": raster.width,
        "bands": list(info.bands),
    }
    grid = {
        "tile_size": plan.grid.tile_size,
        "overlap": plan.grid.overlap,
        "shape": list(plan.grid.shape),
        "input_gsd_m": round(plan.gsd_m, 4),
        "scale_to_model": round(plan.scale, 4),
    }
    counts = {
        "tiles": stats.tiles,
        "tiles_inferred": stats.tiles_inferred,
        "tiles_skipped": stats.tiles_skipped,
        "tiles_reused": stats.tiles_reused,
        "batches": stats.batches,
        "buildings": n_buildings,
    }
    return {
        "scene": plan.scene,
        "footprints_version": __version__,
        "started": ctx.started,
        "finished": utc_now(),
        **summarize_devices(stats.devices),
        "runtime": ", ".join(stats.runtimes) or None,
        "host": host_summary(),
        "run_key": state.key if state is not None else None,
        "owner": owner(scene=target.input.url, config_sha256=config_digest(ctx.config)),
        "checksums": {},
        "input": source,
        "probability_bands": probability_bands or ["building"],
        "config": ctx.config.model_dump(mode="json"),
        "model": ctx.model.record,
        "grid": grid,
        "counts": counts,
        "seconds": dict(ctx.timer.seconds),
        "cpu_seconds": {"client": dict(ctx.timer.cpu), "workers": stats.worker_times},
        "versions": package_versions(),
    }
