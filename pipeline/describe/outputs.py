"""The outputs that describe a scene: ``quicklook.png``, ``report.html`` and ``item.json``.

Made in the staging folder after the data files and before ``run.json``, in this order:
the quicklook (unless ``outputs.quicklook`` is off), the report (which embeds it and a
full-resolution crop), the STAC item (with the checksums of everything before it); then
``run.json`` records the checksums of all of them (see :func:`pipeline.run.publish.publish_scene`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.describe.output_files import OUTPUT_NAMES, fingerprint, staged_names
from pipeline.describe.quicklook import crop_view, jpeg_bytes, overview_view, png_bytes, render
from pipeline.describe.report import ReportData, render_report
from pipeline.describe.stac import item_json, scene_item
from pipeline.describe.summary import SceneStats, model_summary, scene_stats, scene_warnings
from pipeline.io.read import RasterInfo
from pipeline.vectorize.buildings import Buildings


@dataclass(frozen=True)
class Pictures:
    """The quicklook (PNG, written as ``quicklook.png``; JPEG for the report) and the report's crop."""

    quicklook: bytes
    quicklook_jpeg: bytes
    crop: bytes
    crop_window: tuple[int, int, int, int]


def confidence_low(config: PipelineConfig) -> float:
    """The low end of the confidence colour ramp: the delivery threshold (0.5 when there is none)."""
    mc = config.vectorize.min_confidence
    return mc if 0.0 < mc < 1.0 else 0.5


def make_pictures(*, info: RasterInfo, buildings: Buildings, config: PipelineConfig) -> Pictures:
    """The whole scene at most ``outputs.quicklook_px`` across, and a full-resolution crop."""
    oc, low = config.outputs, confidence_low(config)
    grid = info.grid
    whole = overview_view(grid.height, grid.width, max_side=oc.quicklook_px)
    crop = crop_view(grid.height, grid.width, transform=grid.transform, buildings=buildings, side=oc.crop_px)
    picture = render(info, whole, buildings, low=low)
    return Pictures(
        quicklook=png_bytes(picture),
        quicklook_jpeg=jpeg_bytes(picture),
        crop=jpeg_bytes(render(info, crop, buildings, low=low), quality=92),
        crop_window=(crop.col_off, crop.row_off, crop.cols, crop.rows),
    )


def summarize(*, record: dict[str, Any], buildings: Buildings, mask: Path) -> tuple[SceneStats, list[str]]:
    """The scene's figures and warnings (``record`` is its run record so far, ``mask`` its mask raster)."""
    stats = scene_stats(areas_m2=buildings.area_m2, confidence=buildings.confidence, mask_path=mask)
    model = record["model"]
    warnings = scene_warnings(
        stats, gsd_m=float(record["grid"]["input_gsd_m"]), model_gsd_m=model.get("gsd_m"),
        trained=bool(model.get("trained", True)),
    )  # fmt: skip
    return stats, warnings


def describe_scene(
    *,
    record: dict[str, Any],
    buildings: Buildings,
    mask: Path,
    info: RasterInfo,
    config: PipelineConfig,
    workdir: Path,
) -> dict[str, Any]:
    """Write the describing outputs into ``workdir``; the run record with ``summary``,
    ``warnings`` and the ``checksums`` of every staged output but ``run.json``."""
    stats, warnings = summarize(record=record, buildings=buildings, mask=mask)
    record = {**record, "summary": stats.as_dict(), "warnings": warnings}
    pictures = (
        make_pictures(info=info, buildings=buildings, config=config) if config.outputs.quicklook else None
    )
    if pictures is not None:
        (workdir / "quicklook.png").write_bytes(pictures.quicklook)
    report = ReportData(
        record=record, stats=stats, areas_m2=buildings.area_m2, confidence=buildings.confidence,
        warnings=warnings, model=model_summary(record["model"]),
        quicklook_image=pictures.quicklook_jpeg if pictures else None,
        crop_image=pictures.crop if pictures else None,
        crop_window=pictures.crop_window if pictures else None, confidence_low=confidence_low(config),
        outputs=[n for n in OUTPUT_NAMES if n != "report.html" and (n != "quicklook.png" or pictures)],
    )  # fmt: skip
    (workdir / "report.html").write_text(render_report(report), encoding="utf-8")
    checksums = {name: fingerprint(workdir / name) for name in staged_names(workdir)}
    assets = [*checksums, "run.json"]
    item = item_json(scene_item(record, checksums=checksums, outputs=assets))
    (workdir / "item.json").write_text(json.dumps(item, indent=1) + "\n", encoding="utf-8")
    checksums["item.json"] = fingerprint(workdir / "item.json")
    return {**record, "checksums": checksums}
