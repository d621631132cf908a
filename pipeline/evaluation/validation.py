"""``footprints validate``: run the whole pipeline on a DATASET.yaml's validation scenes.

Each validation scene is written as a GeoTIFF (keeping its georeference, or, for images
without one, a local UTM grid at the scene's GSD), segmented with the same code as
``footprints segment``, and scored with :func:`pipeline.evaluation.evaluate.evaluate` against its
label (pixel metrics, one-to-one object matching at IoU >= 0.5 and polygon metrics).
Pixels that are no-data in the image or unlabelled in the truth are left out on both
sides. Each scene carries its source; the report's headline is ``macro``, the average
over sources of each source's pooled figures (each source weighs the same), then
``overall`` (pooled over all scenes) and ``sources`` (pooled per source). ``reliability``
tabulates precision against the buildings' ``confidence`` (:mod:`pipeline.evaluation.reliability`), from
each scene's buildings vectorized again without the confidence filter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from pipeline.config import PipelineConfig
from pipeline.core.raster import RasterGrid
from pipeline.evaluation import reliability
from pipeline.evaluation.evaluate import confidence_matches, evaluate
from pipeline.io.vectors import PublishedScene, outdir_buildings
from pipeline.run.cluster import connect
from pipeline.run.scene import segment_scene
from pipeline.training.dataset import IGNORE, Scene, load_dataset
from pipeline.training.sampling import to_grayscale

#: Grid for images without a georeference: UTM 31N near the equator, GSD from the yaml.
LOCAL_CRS = CRS.from_epsg(32631)


def scene_grid(scene: Scene) -> RasterGrid:
    """The scene's grid, or a local UTM grid at its GSD when it has no CRS."""
    grid = scene.grid
    if grid.crs is not None:
        return grid
    h, gsd = grid.height, scene.gsd_m
    return RasterGrid(
        LOCAL_CRS, Affine(gsd, 0, 500000.0, 0, -gsd, 100000.0 + h * gsd), grid.height, grid.width
    )


def write_scene(scene: Scene, folder: Path, *, grayscale: bool = False) -> tuple[Path, Path]:
    """The scene's image (nodata masked) and its label (0/1, nodata 255) as GeoTIFFs.

    ``grayscale`` writes the image as one band, its luma (as a panchromatic sensor would see
    it), which the pipeline repeats to RGB like any 1-band input.
    """
    folder.mkdir(parents=True, exist_ok=True)
    grid = scene_grid(scene)
    common = {
        "driver": "GTiff",
        "height": grid.height,
        "width": grid.width,
        "crs": grid.crs,
        "transform": grid.transform,
    }
    image_path, label_path = folder / "image.tif", folder / "truth.tif"
    bands = to_grayscale(scene.image)[:, :, :1] if grayscale else scene.image
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        image_path, "w", count=bands.shape[2], dtype="uint8", **common
    ) as ds:  # fmt: skip
        ds.write(bands.transpose(2, 0, 1))
        ds.write_mask(np.where(scene.label == IGNORE, 0, 255).astype(np.uint8))
    with rasterio.open(label_path, "w", count=1, dtype="uint8", nodata=IGNORE, **common) as ds:
        ds.write(scene.label, 1)
    return image_path, label_path


def scene_slug(scene: Scene) -> str:
    stem = Path(scene.name).with_suffix("").as_posix().replace("/", "_").replace(" ", "_")
    return f"{scene.source}-{stem}"


def validate(
    *,
    data: Path,
    out_dir: Path,
    config: PipelineConfig,
    model_path: str | None,
    min_area_m2: float,
    grayscale: bool = False,
) -> dict[str, Any]:
    """Segment every validation scene into ``out_dir/<scene>/out`` and score them all."""
    dataset = load_dataset(data, splits=("val",))
    pairs: list[tuple[Path, Path]] = []
    sources: list[str] = []
    dc = config.dask
    with connect(
        scheduler=dc.scheduler, n_workers=dc.n_workers, threads_per_worker=dc.threads_per_worker
    ) as c:
        for scene in dataset.scenes:
            folder = out_dir / scene_slug(scene)
            image, truth = write_scene(scene, folder, grayscale=grayscale)
            segment_scene(
                input_path=os.fspath(image), out_dir=folder / "out", config=config,
                model_path=model_path, client=c,
            )  # fmt: skip
            pairs.append((folder / "out", truth))
            sources.append(scene.source)
    report = evaluate(pairs=pairs, sources=sources, min_area_m2=min_area_m2)
    for entry, scene, (out, truth) in zip(report["scenes"], dataset.scenes, pairs, strict=True):
        entry["scene"] = scene_slug(scene)
        entry["reliability"] = scene_reliability(out, truth, config=config, min_area_m2=min_area_m2)
    report["reliability"] = {
        "min_confidence": config.vectorize.min_confidence,
        "bins": reliability.pool([entry["reliability"] for entry in report["scenes"]]),
    }
    return report


def scene_reliability(
    out: Path, truth: Path, *, config: PipelineConfig, min_area_m2: float
) -> list[dict[str, Any]]:
    """Precision per confidence bin of a scene's buildings, vectorized *without* the confidence
    filter (every other setting as published), matched as ``evaluate`` matches."""
    record = json.loads((out / "run.json").read_text())
    vc = config.vectorize.model_copy(update={"min_confidence": 0.0})
    unfiltered = config.model_copy(update={"vectorize": vc})
    buildings = outdir_buildings(out_dir=out, published=PublishedScene.from_record(record, unfiltered))
    conf, matched = confidence_matches(
        pred_dir=out, truth_path=truth, polygons=buildings.geometry, confidence=buildings.confidence,
        min_area_m2=min_area_m2,
    )  # fmt: skip
    return reliability.reliability(conf, matched)
