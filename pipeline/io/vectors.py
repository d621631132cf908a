"""The delivered building vectors: one table, three files (an adapter over :class:`Buildings`).

``buildings.gpkg`` and ``buildings.parquet`` (GeoParquet 1.1 with a ``bbox`` covering
column) are in the scene's CRS; ``buildings.geojson`` is RFC 7946 (EPSG:4326). All three
hold the same features: ``id``, ``area_m2``, ``confidence``, ``scene``, ``model``.
:func:`outdir_buildings` vectorizes a published OUTDIR's ``mask.tif`` again, exactly as
the run did (``footprints vectorize OUTDIR/mask.tif``).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio

from pipeline.config import PipelineConfig
from pipeline.core.geo import pixel_size_m
from pipeline.io.write import write_vector
from pipeline.vectorize.buildings import (
    Buildings,
    SceneRegions,
    buildings_from_regions,
    outline_options,
    scene_regions,
)
from pipeline.vectorize.scoring import ScoreContext, Scorer, resolve_scorer

VECTOR_NAMES = ("buildings.geojson", "buildings.gpkg", "buildings.parquet")


def buildings_frame(buildings: Buildings, *, scene: str, model_id: str) -> gpd.GeoDataFrame:
    """The GeoDataFrame adapter around :class:`Buildings` (scene CRS)."""
    return gpd.GeoDataFrame(
        {
            "id": buildings.id.astype(object),
            "area_m2": np.round(buildings.area_m2, 2),
            "confidence": np.round(buildings.confidence, 4),
            "scene": np.full(len(buildings), scene, dtype=object),
            "model": np.full(len(buildings), model_id, dtype=object),
        },
        geometry=gpd.GeoSeries(buildings.geometry, crs=buildings.crs),
    )


def write_buildings(
    frame: gpd.GeoDataFrame, workdir: Path, *, timestamp: str | None = None
) -> tuple[Path, Path, Path]:
    """``buildings.gpkg`` and ``buildings.parquet`` in the scene CRS, ``buildings.geojson`` in 4326:
    their paths.

    ``timestamp`` is the date stamped into the GeoPackage (see :func:`pipeline.io.write.write_vector`).
    """
    gpkg, parquet, geojson = (workdir / f"buildings.{ext}" for ext in ("gpkg", "parquet", "geojson"))
    write_vector(frame, gpkg, driver="GPKG", timestamp=timestamp)
    write_vector(frame, parquet, driver="Parquet")
    write_vector(frame.to_crs(4326), geojson, driver="GeoJSON")
    return gpkg, parquet, geojson


@dataclass(frozen=True)
class PublishedScene:
    """What ``run.json`` of a published OUTDIR says about how its polygons were made."""

    scene: str
    model_id: str
    config: PipelineConfig
    split: bool
    scorer: Scorer | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any], config: PipelineConfig | None = None) -> PublishedScene:
        """``config`` replaces the recorded one (``footprints vectorize --config``)."""
        cfg = config or PipelineConfig.model_validate(record.get("config") or {})
        model = record.get("model") or {}
        classes = set(model.get("classes") or [])
        # runs older than the 2-band probability.tif kept no separator band: their mask is not split
        banded = "probability_bands" in record
        split = cfg.split.enabled and bool({"boundary", "contact"} & classes) and banded
        path, sha = model.get("path"), model.get("sha256")
        scorer = resolve_scorer(cfg.vectorize.scorer, checkpoint=path, sha256=sha)
        scene, model_id = str(record.get("scene")), str(model.get("id"))
        return cls(scene=scene, model_id=model_id, config=cfg, split=split, scorer=scorer)


def outdir_regions(
    *, out_dir: Path, published: PublishedScene, block_size: int | None = None
) -> SceneRegions:
    """The regions of OUTDIR's ``mask.tif``, split as the run did.

    With a boundary or contact class, the regions are rebuilt from ``probability.tif``'s
    second band (:func:`pipeline.vectorize.split.split_from_outputs`); the confidence statistics
    are those of its first band.
    """
    from pipeline.vectorize.split import split_from_outputs

    cfg = published.config
    mask, prob = out_dir / "mask.tif", out_dir / "probability.tif"
    with rasterio.open(mask) as ds:
        b = ds.bounds
        gsd = cfg.input.gsd_m or pixel_size_m(ds.crs, tuple(ds.transform), (b.left, b.bottom, b.right, b.top))
    with tempfile.TemporaryDirectory(prefix="footprints-vectorize-") as tmp:
        values = mask
        if published.split:
            sc = cfg.split
            values = split_from_outputs(
                mask_path=mask, probability_path=prob, workdir=Path(tmp), seed_threshold=sc.seed_threshold,
                boundary_threshold=sc.boundary_threshold,
                min_seed_px=max(1, math.ceil(sc.min_seed_m2 / gsd**2)), grow_px=math.ceil(sc.grow_m / gsd),
            )  # fmt: skip
        return scene_regions(
            values_path=str(values), probability_path=str(prob),
            block_size=block_size or cfg.vectorize.block_size,
        )  # fmt: skip


def outdir_buildings(
    *, out_dir: Path, published: PublishedScene, block_size: int | None = None, features: bool = False
) -> Buildings:
    """The buildings of OUTDIR's ``mask.tif``, split and filtered as the run did
    (:func:`outdir_regions`, then the recorded ``vectorize`` settings and scorer).

    ``features`` computes every building's :mod:`pipeline.vectorize.scoring` features (as its scorer does).
    """
    sr = outdir_regions(out_dir=out_dir, published=published, block_size=block_size)
    prob = str(out_dir / "probability.tif")
    return buildings_from_regions(
        sr.regions, scene=published.scene, bounds=sr.bounds,
        options=outline_options(published.config.vectorize), pixel_m=sr.pixel_m,
        scoring=ScoreContext(prob, published.scorer) if published.scorer or features else None,
    )  # fmt: skip
