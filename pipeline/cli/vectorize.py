"""``footprints vectorize``: polygons of a building mask or instance raster, block by block.

The lead CLI calls :func:`register` on its typer app. The raster is polygonized in bands
of ``--block-size`` rows by :func:`pipeline.vectorize.polygonize.polygonize_blocks` (pixel-exact,
bounded memory); polygons under ``vectorize.min_area_m2`` are dropped *after* the seams
are merged, then simplified by ``vectorize.simplify_m`` metres (0 keeps them pixel-exact).
With ``--stats PROB.tif`` each polygon gets its mean probability and those under
``vectorize.min_confidence`` are dropped too; without it there is nothing to judge them by.
The output format follows the extension: ``.geojson`` (RFC 7946: EPSG:4326 lon/lat,
counter-clockwise exteriors, 7 decimals), ``.gpkg`` or ``.parquet`` (GeoParquet 1.1, raster
CRS). Files are written under a temporary name in the destination folder, then renamed into place.

The ``mask.tif`` of a ``footprints segment`` OUTDIR (``run.json`` and ``probability.tif``
beside it) is vectorized as the run did it: with the recorded config (``--config`` and the
overrides replace it), touching buildings split again from ``probability.tif``'s second band,
confidence from its first, and the same columns (``id``, ``area_m2``, ``confidence``,
``scene``, ``model``): the same features as ``buildings.geojson``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.console import Console

from pipeline.cli.console import friendly_errors
from pipeline.core.errors import BandMappingError, ConfigError, MissingCRSError
from pipeline.io.write import write_vector

if TYPE_CHECKING:
    from pipeline.config import VectorizeConfig
    from pipeline.vectorize.polygonize import Regions

DRIVERS = {".geojson": "GeoJSON", ".gpkg": "GPKG", ".parquet": "Parquet"}

MaskArg = Annotated[Path, typer.Argument(metavar="MASK.tif", help="Raster of regions (0/1 mask or labels).")]
OutOpt = Annotated[Path, typer.Option("--out", metavar="FILE", help="Output .geojson, .gpkg or .parquet.")]
BlockOpt = Annotated[
    int, typer.Option("--block-size", min=1, help="Rows per band read (memory ~ width x N).")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config with a vectorize: section.")]
StatsOpt = Annotated[
    Path | None, typer.Option("--stats", metavar="PROB.tif", help="Raster to average per polygon.")
]
MinAreaOpt = Annotated[float | None, typer.Option("--min-area", metavar="M2", help="Override min_area_m2.")]
SimplifyOpt = Annotated[float | None, typer.Option("--simplify", metavar="M", help="Override simplify_m.")]
ExactOpt = Annotated[
    bool, typer.Option("--exact", help="Pixel-exact outlines: no simplification, squaring or hole filling.")
]
SceneOpt = Annotated[str | None, typer.Option("--scene", help="Id prefix (default: the raster's stem).")]


def output_driver(path: Path) -> str:
    """The OGR driver for ``path``'s extension, or a :class:`ConfigError`."""
    driver = DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise ConfigError(
            f"{path}: unsupported output extension {path.suffix!r}; use .geojson, .gpkg or .parquet"
        )
    return driver


def _check_values(path: Path) -> tuple[float, float, float, float]:
    """Bounds of a valid values raster ``path``: one band, with a CRS."""
    from pipeline.vectorize.polygonize import open_values

    with open_values(str(path)) as ds:
        if ds.count > 1:
            raise BandMappingError(
                f"{path}: has {ds.count} bands, so it looks like an image, not a mask; pass a one-band "
                "mask or region raster, e.g. OUTDIR/mask.tif of `footprints segment` (which takes images)"
            )
        if ds.crs is None:
            raise MissingCRSError(
                f"{path}: raster has no CRS, so areas in m² are unknown; assign one with "
                "`gdal_edit.py -a_srs EPSG:XXXX FILE`"
            )
        left, bottom, right, top = ds.bounds
        return (float(left), float(bottom), float(right), float(top))


def _stats_scale(path: Path | None) -> float:
    """255 for a uint8 probability raster (mean_probability in 0-1), else 1."""
    import rasterio

    if path is None:
        return 1.0
    with rasterio.open(path) as ds:
        return 255.0 if ds.dtypes[0] == "uint8" else 1.0


def regions_frame(
    regions: Regions,
    *,
    scene: str,
    bounds: tuple[float, float, float, float],
    vectorize: VectorizeConfig,
    stats_scale: float = 1.0,
) -> Any:
    """A GeoDataFrame (raster CRS) of the regions kept by ``min_area_m2``, post-processed in metres."""
    import geopandas as gpd

    from pipeline.vectorize.buildings import buildings_from_regions, outline_options

    b = buildings_from_regions(
        regions, scene=scene, bounds=bounds, options=outline_options(vectorize), stats_scale=stats_scale
    )
    data: dict[str, Any] = {
        "id": b.id.astype(object),
        "value": regions.value[b.keep],
        "area_m2": np.round(b.area_m2, 3),
        "pixels": regions.pixel_count[b.keep],
        "pieces": regions.pieces[b.keep],
    }
    if regions.mean is not None:
        data["mean_probability"] = np.round(b.confidence, 4)
    return gpd.GeoDataFrame(data, geometry=list(b.geometry), crs=b.crs.to_wkt())


def vectorize_command(
    mask: MaskArg,
    out: OutOpt,
    block_size: BlockOpt = 1024,
    config: ConfigOpt = None,
    stats: StatsOpt = None,
    min_area: MinAreaOpt = None,
    simplify: SimplifyOpt = None,
    scene: SceneOpt = None,
    exact: ExactOpt = False,
) -> None:
    """Polygonize MASK.tif band by band (seam-exact, bounded memory) and write polygons to --out.

    Post-processing follows the config's vectorize: section; --exact keeps the pixel outlines.
    """
    from pipeline.config import load_config
    from pipeline.vectorize.polygonize import polygonize_blocks

    err = Console(stderr=True)
    start = time.perf_counter()
    with friendly_errors(err):
        driver = output_driver(out)
        overrides: dict[str, Any] = {"vectorize.min_area_m2": min_area, "vectorize.simplify_m": simplify}
        if exact:
            overrides.update(
                {"vectorize.simplify_m": 0.0, "vectorize.regularize": False, "vectorize.fill_holes_m2": 0.0}
            )
        if (record := _published_record(mask, stats)) is not None:
            n = _vectorize_published(mask, out, driver=driver, record=record, config=config,
                                     overrides=overrides, block_size=block_size)  # fmt: skip
            err.print(
                f"{n} polygons (as published in {mask.parent}/buildings.*) -> {out} "
                f"({time.perf_counter() - start:.1f} s)",
                highlight=False, soft_wrap=True,
            )  # fmt: skip
            return
        cfg = load_config(config, **overrides)
        stats_path = None if stats is None else str(stats)
        bounds = _check_values(mask)
        regions = polygonize_blocks(str(mask), block_size=block_size, stats_path=stats_path)
        frame = regions_frame(
            regions,
            scene=scene or mask.stem,
            bounds=bounds,
            vectorize=cfg.vectorize,
            stats_scale=_stats_scale(stats),
        )
        write_vector(frame, out, driver=driver, layer=out.stem)
    merged = int((regions.pieces > 1).sum())
    err.print(
        f"{len(frame)} polygons ({len(regions)} regions, {merged} joined across bands) -> {out} "
        f"({time.perf_counter() - start:.1f} s)",
        highlight=False,
        soft_wrap=True,
    )


def _published_record(mask: Path, stats: Path | None) -> dict[str, Any] | None:
    """``run.json`` beside ``mask``, when it is the mask.tif of a ``segment`` OUTDIR (and no
    other ``--stats`` raster than its probability.tif is asked for)."""
    import json

    folder = mask.parent
    if mask.name != "mask.tif" or not (folder / "probability.tif").is_file():
        return None
    if stats is not None and stats.resolve() != (folder / "probability.tif").resolve():
        return None
    try:
        record = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("model"), dict):
        return None
    return record if "probability_bands" in record else None  # older runs kept no split band


def _vectorize_published(
    mask: Path, out: Path, *, driver: str, record: dict[str, Any], config: Path | None,
    overrides: dict[str, Any], block_size: int,
) -> int:  # fmt: skip
    """Vectorize an OUTDIR's mask as its run did (see the module docstring); the feature count."""
    from pipeline.config import PipelineConfig, load_config
    from pipeline.io.vectors import PublishedScene, buildings_frame, outdir_buildings

    base = load_config(config) if config is not None else PipelineConfig.model_validate(record["config"])
    changed = {k.split(".", 1)[1]: v for k, v in overrides.items() if v is not None}
    cfg = base.model_copy(update={"vectorize": base.vectorize.model_copy(update=changed)})
    published = PublishedScene.from_record(record, cfg)
    buildings = outdir_buildings(out_dir=mask.parent, published=published, block_size=block_size)
    frame = buildings_frame(buildings, scene=published.scene, model_id=published.model_id)
    write_vector(frame.to_crs(4326) if driver == "GeoJSON" else frame, out, driver=driver, layer=out.stem)
    return len(frame)


def register(app: typer.Typer) -> None:
    """Add the ``vectorize`` command to ``app``."""
    app.command("vectorize")(vectorize_command)
