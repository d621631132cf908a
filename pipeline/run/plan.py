"""Planning a scene: open and check the input, find its GSD, lay the tile grid over it."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import PipelineConfig
from pipeline.io.read import RasterInfo, open_raster
from pipeline.io.storage import gdal_path
from pipeline.model.arrays import model_scale
from pipeline.run.model_choice import ModelChoice
from pipeline.run.target import scene_id
from pipeline.tiling.grid import TileGrid, model_grid


@dataclass(frozen=True)
class ScenePlan:
    """An opened input, its GSD, and the tile grid over it (in input pixels).

    ``scale`` = input GSD / model GSD: a tile of ``grid.tile_size`` input pixels is
    resampled to about ``tile_size * scale`` model pixels, the configured tile size.
    """

    info: RasterInfo
    grid: TileGrid
    scene: str
    gsd_m: float = 1.0
    scale: float = 1.0


def plan_scene(
    *,
    input_path: str,
    config: PipelineConfig,
    model_gsd_m: float | None = None,
    model_stride: int | None = None,
) -> ScenePlan:
    """Open and validate the input, and lay the tile grid over it.

    When the model was trained at ``model_gsd_m``, tiles are sized in input pixels so
    that, resampled to the model's GSD, they are ``tiling.tile_size`` pixels across.
    With the model's output stride, tiles start on its lattice (see
    :func:`pipeline.tiling.grid.lattice_step`), so that every tile computes on the same
    lattice as a prediction of the whole scene would.
    """
    ic = config.input
    info = open_raster(
        gdal_path(input_path),
        bands=tuple(ic.bands) if ic.bands else None,
        percentiles=ic.percentiles,
        nodata=ic.nodata,
    )
    gsd = ic.gsd_m or info.grid.gsd_m()
    scale = model_scale(gsd, model_gsd_m)
    tc = config.tiling
    grid = model_grid(
        height=info.grid.height,
        width=info.grid.width,
        tile_size=tc.tile_size,
        overlap=tc.overlap,
        scale=scale,
        model_stride=model_stride if tc.align_to_model else None,
        block_shape=info.block_shape if tc.align_to_blocks else None,
    )
    return ScenePlan(info=info, grid=grid, scene=scene_id(input_path), gsd_m=gsd, scale=scale)


def plan_for(model: ModelChoice, *, input_path: str, config: PipelineConfig) -> ScenePlan:
    """:func:`plan_scene` for ``model``: its training GSD and its output stride."""
    return plan_scene(
        input_path=input_path, config=config, model_gsd_m=model.gsd_m, model_stride=model.output_stride
    )
