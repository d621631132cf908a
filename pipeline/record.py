"""``run.json``: what a published scene records about how it was made.

Besides the config, model, grid, counts, seconds and versions, it carries the run key,
the ``owner`` that marks OUTDIR as this scene's and config's (see :mod:`pipeline.outdir`)
and the SHA-256 and size of each data output (``checksums``).
"""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING, Any

from pipeline.outdir import owner
from pipeline.restart import config_digest

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.scene import ModelChoice, ScenePlan, SceneTarget, StitchStats

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


def run_record(
    *, plan: ScenePlan, model: ModelChoice, config: PipelineConfig, stats: StitchStats,
    n_buildings: int, seconds: dict[str, float], target: SceneTarget, run_key: str | None = None,
    checksums: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    info = plan.info
    return {
        "scene": plan.scene,
        "run_key": run_key,
        "owner": owner(scene=target.input.url, config_sha256=config_digest(config)),
        "checksums": checksums or {},
        "input": {"url": target.input.url, "path": info.path, **target.input_identity,
                  "crs": info.crs.to_string(), "height": info.height, "width": info.width,
                  "bands": list(info.bands)},
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
        "versions": package_versions(),
    }  # fmt: skip
