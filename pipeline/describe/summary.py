"""What a scene's outputs say at a glance: counts, areas, nodata share, warnings, the model.

The typed core behind ``report.html``, the STAC item, ``run.json``'s ``summary`` and the
Prefect artifacts. The nodata share is measured on a decimated read of ``mask.tif``
(its overviews), so it costs the same for any scene size.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from pipeline.tiling.stitch import MASK_NODATA

#: Longest side of the read of mask.tif that measures the nodata and building shares.
SHARE_READ_SIDE = 1024
#: Warn when more of the scene than this is nodata.
NODATA_WARN_SHARE = 0.25
#: Warn when the input's GSD differs from the model's by more than this factor.
GSD_WARN_FACTOR = 1.5
#: Warn when fewer buildings than this were found.
FEW_BUILDINGS = 10


@dataclass(frozen=True)
class SceneStats:
    """The headline figures of one published scene (areas in m², shares in 0-1)."""

    buildings: int
    total_area_m2: float
    median_area_m2: float
    mean_confidence: float
    nodata_share: float
    building_share: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def mask_shares(mask_path: Path) -> tuple[float, float]:
    """(nodata share, building share of the valid pixels) from a decimated read of ``mask.tif``."""
    with rasterio.open(mask_path) as ds:
        scale = min(1.0, SHARE_READ_SIDE / max(ds.height, ds.width))
        shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
        mask = ds.read(1, out_shape=shape)
    valid = mask != MASK_NODATA
    n_valid = int(valid.sum())
    return 1.0 - n_valid / mask.size, float((mask[valid] == 1).sum() / n_valid) if n_valid else 0.0


def scene_stats(
    *, areas_m2: np.ndarray[Any, Any], confidence: np.ndarray[Any, Any], mask_path: Path
) -> SceneStats:
    """The figures of :class:`SceneStats` for the delivered buildings and the scene's mask."""
    nodata, built = mask_shares(mask_path)
    conf = confidence[np.isfinite(confidence)]
    return SceneStats(
        buildings=int(areas_m2.size),
        total_area_m2=float(areas_m2.sum()) if areas_m2.size else 0.0,
        median_area_m2=float(np.median(areas_m2)) if areas_m2.size else 0.0,
        mean_confidence=float(conf.mean()) if conf.size else math.nan,
        nodata_share=nodata,
        building_share=built,
    )


def scene_warnings(
    stats: SceneStats, *, gsd_m: float, model_gsd_m: float | None, trained: bool = True
) -> list[str]:
    """Plain-language warnings about a result a user should look at twice."""
    out = []
    if not trained:
        out.append("the model is UNTRAINED (no checkpoint was found): the buildings are meaningless")
    if stats.nodata_share > NODATA_WARN_SHARE:
        out.append(f"{stats.nodata_share:.0%} of the scene is nodata: buildings there cannot be found")
    if model_gsd_m and max(gsd_m / model_gsd_m, model_gsd_m / gsd_m) > GSD_WARN_FACTOR:
        out.append(
            f"the scene's GSD ({gsd_m:.2f} m) is {gsd_m / model_gsd_m:.1f}x the model's "
            f"({model_gsd_m:.2f} m): "
            "tiles are resampled to the model's, and small buildings may be lost or merged"
        )
    if stats.buildings < FEW_BUILDINGS:
        out.append(
            f"only {stats.buildings} building{'s' if stats.buildings != 1 else ''} found: check that the "
            "scene shows buildings, and its nodata and GSD"
        )
    return out


def model_summary(description: dict[str, Any]) -> dict[str, Any]:
    """The model card in brief: id, architecture, classes, GSD, threshold and validation figures.

    Read from the checkpoint's header (never its weights) and, when a ``MODEL_CARD.md`` lies
    beside the checkpoint, its ``**Status:**`` line.
    """
    out: dict[str, Any] = {k: description.get(k) for k in ("id", "sha256", "classes", "gsd_m", "threshold")}
    path = description.get("path")
    if not path or not Path(path).is_file():
        return out
    from pipeline.model.header import read_checkpoint_metadata

    meta = read_checkpoint_metadata(path)
    out.update(
        architecture=f"{meta.get('architecture', '?')} / {meta.get('encoder', '?')}, output stride "
        f"{meta.get('output_stride', '?')}",
        bands=meta.get("bands"),
        normalization=meta.get("normalization"),
        created=meta.get("created"),
        validation=_metrics(meta.get("validation_metrics")),
    )
    if status := card_status(Path(path).with_name("MODEL_CARD.md")):
        out["status"] = status
    return out


def _metrics(value: Any) -> dict[str, float]:
    if isinstance(value, str):
        value = json.loads(value or "{}")
    if not isinstance(value, dict):
        return {}
    return {str(k): round(float(v), 4) for k, v in value.items() if isinstance(v, int | float)}


def card_status(card: Path) -> str | None:
    """The model card's ``**Status: ...**`` sentence, without the markdown."""
    try:
        text = card.read_text()
    except OSError:
        return None
    for para in text.split("\n\n"):
        if para.lstrip().startswith("**Status"):
            return " ".join(para.replace("**", "").split())
    return None
