"""``footprints validate``: every val scene through the whole pipeline, then scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli.main import app
from tests.conftest import coordinate_image, write_tif

pytestmark = pytest.mark.slow


def test_validate_scores_each_val_scene(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    image = coordinate_image(300, 260).transpose(1, 2, 0)
    label = np.zeros((300, 260), np.uint8)
    label[40:120, 50:150] = 255
    Image.fromarray(image).save(data / "a.png")
    Image.fromarray(label).save(data / "a_gt.png")
    write_tif(data / "b.tif", coordinate_image(200, 240))
    write_tif(data / "b_gt.tif", (label[:200, :240] > 0).astype(np.uint8))
    (tmp_path / "ds.yaml").write_text(
        "root: data\ngsd_m: 0.5\nsources:\n"
        "  png: {gsd_m: 0.5, items: [{image: a.png, label: a_gt.png, split: val}]}\n"
        "  tif: {items: [{image: b.tif, label: b_gt.tif, split: val}]}\n"
    )
    out = tmp_path / "val"
    result = CliRunner().invoke(app, ["validate", "--data", str(tmp_path / "ds.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "validation.json").read_text())
    assert [s["source"] for s in report["scenes"]] == ["png", "tif"]
    for scene in report["scenes"]:
        assert (out / scene["scene"] / "out" / "buildings.geojson").exists()
        assert 0 <= scene["pixel"]["iou"] <= 1 and scene["pixel"]["tp"] + scene["pixel"]["fn"] > 0
    overall = report["overall"]["pixel"]
    assert overall["tp"] == sum(s["pixel"]["tp"] for s in report["scenes"])
    # One scene per source: each source's pooled figures are its scene's, macro is their mean.
    sources, macro = report["sources"], report["macro"]
    assert list(sources) == ["png", "tif"] and macro["sources"] == 2
    for scene in report["scenes"]:
        assert sources[scene["source"]]["pixel"] == scene["pixel"]
    for kind, key in (("pixel", "iou"), ("object", "f1"), ("object_iou25", "f1")):
        assert macro[kind][key] == pytest.approx(sum(s[kind][key] for s in report["scenes"]) / 2)
    assert {"c_iou", "polis_m", "max_tangent_deg", "rotation_deg"} <= set(macro["polygon"])
    # Reliability of confidence: every scene's unfiltered buildings, in bins, pooled over scenes.
    rel = report["reliability"]
    assert rel["min_confidence"] == 0.8 and len(rel["bins"]) == 11
    for i, row in enumerate(rel["bins"]):
        assert row["count"] == sum(s["reliability"][i]["count"] for s in report["scenes"])
        assert 0 <= row["matched"] <= row["count"]
    delivered = sum(s["object"]["tp"] + s["object"]["fp"] for s in report["scenes"])
    assert sum(r["count"] for r in rel["bins"]) >= delivered  # the filter only removes
    text = result.stdout
    assert text.index("macro") < text.index("pooled") < text.index("per source") < text.index("png-a")
    assert text.index("png-a") < text.index("reliability")


def test_grayscale_writes_one_band_of_luma(tmp_path: Path) -> None:
    import rasterio
    from affine import Affine

    from pipeline.core.raster import RasterGrid
    from pipeline.evaluation.validation import write_scene
    from pipeline.training.dataset import Scene

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 150, 200
    label = np.zeros((4, 5), np.uint8)
    label[0, 0] = 255
    grid = RasterGrid(crs=None, transform=Affine.identity(), height=4, width=5)
    scene = Scene("s", "a.png", "val", 0.5, 1.0, rgb, label, Path("a.png"), Path("a_gt.png"), grid)
    image, _ = write_scene(scene, tmp_path / "grey", grayscale=True)
    with rasterio.open(image) as ds:
        assert ds.count == 1 and (ds.read(1) == 141).all()  # 0.299*100 + 0.587*150 + 0.114*200
        assert ds.read_masks(1)[0, 0] == 0 and ds.read_masks(1)[1, 1] == 255
    image, _ = write_scene(scene, tmp_path / "rgb")
    with rasterio.open(image) as ds:
        assert ds.count == 3
