"""STAC: each scene's item.json and a bucket's collection validate offline (core and our schemas)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pystac
import pytest

from pipeline.describe.stac import bucket_collection, footprint, item_json, multihash, scene_item
from tests.conftest import ORIGIN, UTM_CRS, requires_real
from tests.stacschemas import validate

EXTENSIONS = {"projection/v2.0.0", "raster/v1.1.0", "file/v2.1.0"}


def record(scene: str = "s1", modified: str = "2026-01-02T03:04:05.000Z") -> dict[str, Any]:
    return {
        "scene": scene, "footprints_version": "0.1.0", "started": "2026-02-01T10:00:00Z",
        "finished": "2026-02-01T10:01:00Z",
        "input": {"url": f"/data/{scene}.tif", "crs": UTM_CRS, "transform": list(ORIGIN)[:6], "height": 600,
                  "width": 700, "modified": modified},
        "grid": {"input_gsd_m": 0.5}, "counts": {"buildings": 12}, "model": {"id": "m"},
        "probability_bands": ["building", "boundary"],
    }  # fmt: skip


def checksums(names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"sha256": hashlib.sha256(n.encode()).hexdigest(), "size": len(n)} for n in names}


NAMES = ["probability.tif", "mask.tif", "buildings.geojson", "buildings.gpkg", "buildings.parquet",
         "quicklook.png", "report.html"]  # fmt: skip


def test_scene_item_validates_offline_with_its_extensions() -> None:
    item = item_json(scene_item(record(), checksums=checksums(NAMES), outputs=[*NAMES, "run.json"]))
    checked = validate(item)
    assert {
        u.split("stac-extensions.github.io/")[-1].removesuffix("/schema.json") for u in checked[1:]
    } == EXTENSIONS
    assets = item["assets"]
    assert set(assets) == {"probability", "mask", "geojson", "gpkg", "parquet", "quicklook", "report", "run"}
    assert (
        assets["probability"]["href"] == "./probability.tif"
        and "cloud-optimized" in assets["probability"]["type"]
    )
    assert assets["mask"]["file:checksum"] == "1220" + hashlib.sha256(b"mask.tif").hexdigest()
    assert "file:checksum" not in assets["run"]  # run.json records the others, not itself
    bands = assets["probability"]["raster:bands"]
    assert [b["name"] for b in bands] == ["building", "boundary"] and bands[0]["scale"] == pytest.approx(
        1 / 255
    )
    assert assets["mask"]["raster:bands"][0]["nodata"] == 255
    props = item["properties"]
    assert props["proj:code"] == "EPSG:32614" and props["proj:shape"] == [600, 700] and props["gsd"] == 0.5
    assert props["datetime"] == "2026-01-02T03:04:05Z" and props["created"] == "2026-02-01T10:00:00Z"


def test_validation_is_real() -> None:
    item = item_json(scene_item(record(), checksums=checksums(NAMES), outputs=NAMES))
    item["assets"]["mask"]["raster:bands"][0]["data_type"] = "uint7"
    with pytest.raises(pystac.errors.STACValidationError):
        validate(item)


def test_footprint_follows_the_grid() -> None:
    geom = footprint(pystac_crs(), list(ORIGIN)[:6], 600, 700)
    ring = geom["coordinates"][0]
    assert len(ring) == 5 and ring[0] == ring[-1]
    assert -100 < ring[0][0] < -90 and 29 < ring[0][1] < 31  # UTM 14N near 30° N


def pystac_crs() -> Any:
    from rasterio.crs import CRS

    return CRS.from_user_input(UTM_CRS)


def test_multihash() -> None:
    assert multihash("ab" * 32) == "1220" + "ab" * 32


def test_bucket_collection_validates_and_links_every_item() -> None:
    items = [
        (f"./{s}/item.json", item_json(scene_item(record(s, m), checksums=checksums(NAMES), outputs=NAMES)))
        for s, m in [("a", "2025-05-01T00:00:00.000Z"), ("b", "2026-03-01T00:00:00.000Z")]
    ]
    collection = bucket_collection(collection_id="footprints-out", description="d", items=items)
    validate(collection)
    links = [link for link in collection["links"] if link["rel"] == "item"]
    assert [link["href"] for link in links] == ["./a/item.json", "./b/item.json"]
    assert collection["extent"]["temporal"]["interval"] == [["2025-05-01T00:00:00Z", "2026-03-01T00:00:00Z"]]
    assert collection["extent"]["spatial"]["bbox"][0] == items[0][1]["bbox"]


@requires_real
@pytest.mark.realdata
def test_the_demo_item_validates_and_its_checksums_are_the_files(demo_run: Path) -> None:
    item = json.loads((demo_run / "item.json").read_text())
    validate(item)
    for asset in item["assets"].values():
        path = demo_run / asset["href"]
        assert path.is_file()
        if "file:checksum" in asset:
            data = path.read_bytes()
            assert asset["file:checksum"] == multihash(hashlib.sha256(data).hexdigest())
            assert asset["file:size"] == len(data)
