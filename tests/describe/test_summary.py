"""The headline figures and warnings of a scene, and the model card in brief."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.describe.summary import (
    FEW_BUILDINGS,
    SceneStats,
    card_status,
    mask_shares,
    model_summary,
    scene_stats,
    scene_warnings,
)
from tests.conftest import write_tif

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "deeplabv3-lite0-buildings.safetensors"


def _mask(tmp_path: Path) -> Path:
    mask = np.zeros((100, 200), np.uint8)
    mask[:, 150:] = 255  # a quarter nodata
    mask[:50, :30] = 1  # 1500 building pixels of 15000 valid
    return write_tif(tmp_path / "mask.tif", mask, nodata=255)


def test_mask_shares(tmp_path: Path) -> None:
    nodata, built = mask_shares(_mask(tmp_path))
    assert nodata == pytest.approx(0.25) and built == pytest.approx(0.1)


def test_scene_stats(tmp_path: Path) -> None:
    stats = scene_stats(areas_m2=np.array([10.0, 20.0, 60.0]), confidence=np.array([0.8, 0.9, np.nan]),
                        mask_path=_mask(tmp_path))  # fmt: skip
    assert (stats.buildings, stats.total_area_m2, stats.median_area_m2) == (3, 90.0, 20.0)
    assert stats.mean_confidence == pytest.approx(0.85) and stats.as_dict()["nodata_share"] == 0.25


def _stats(buildings: int = 50, nodata: float = 0.0) -> SceneStats:
    return SceneStats(buildings, 1000.0, 80.0, 0.9, nodata, 0.1)


def test_no_warning_for_an_ordinary_scene() -> None:
    assert scene_warnings(_stats(), gsd_m=0.3, model_gsd_m=0.35) == []


@pytest.mark.parametrize(
    ("stats", "gsd", "trained", "phrase"),
    [
        (_stats(nodata=0.6), 0.3, True, "60% of the scene is nodata"),
        (_stats(), 1.0, True, "2.9x the model's"),
        (_stats(), 0.1, True, "0.3x the model's"),
        (_stats(buildings=FEW_BUILDINGS - 1), 0.3, True, f"only {FEW_BUILDINGS - 1} buildings"),
        (_stats(buildings=1), 0.3, True, "only 1 building found"),
        (_stats(), 0.3, False, "UNTRAINED"),
    ],
)
def test_warnings(stats: SceneStats, gsd: float, trained: bool, phrase: str) -> None:
    (warning,) = scene_warnings(stats, gsd_m=gsd, model_gsd_m=0.35, trained=trained)
    assert phrase in warning


def test_model_summary_reads_the_header_and_the_card() -> None:
    summary = model_summary(
        {"id": "m", "path": str(SHIPPED), "classes": ["building", "boundary"], "gsd_m": 0.35}
    )
    assert summary["id"] == "m" and "deeplabv3 / efficientnet-lite0" in summary["architecture"]
    assert summary["bands"] == ["red", "green", "blue"] and summary["status"].startswith("Status:")
    assert model_summary({"id": "untrained", "path": None}) == {
        "id": "untrained", "sha256": None, "classes": None, "gsd_m": None, "threshold": None
    }  # fmt: skip


def test_card_status(tmp_path: Path) -> None:
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# Card\n\n**Status: fine.** More\nwords.\n\nRest.\n")
    assert card_status(card) == "Status: fine. More words."
    assert card_status(tmp_path / "none.md") is None
