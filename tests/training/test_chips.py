"""Chip sets: XYZ grids from names, JPEG-in-.tif sidecars, per-chip labels, mosaics of touching chips."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from numpy.typing import NDArray
from PIL import Image
from pyproj import Transformer
from rasterio.crs import CRS

from pipeline.core.errors import ConfigError
from pipeline.core.geo import pixel_size_m
from pipeline.training.chips import WEB_MERCATOR, Chip, group_chips, mosaic, xyz_bounds, xyz_from_name
from pipeline.training.dataset import IGNORE, dataset_files, load_dataset, rasterize_vector

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "real"
HALF = math.pi * 6378137.0
requires_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real is absent")


# --------------------------------------------------------------------------- XYZ names


def test_xyz_bounds_follow_the_provenance_formula() -> None:
    assert xyz_bounds(0, 0, 0) == pytest.approx((-HALF, -HALF, HALF, HALF))
    # zoom 1: four quadrants; tile (1, 0) is the north-east one
    assert xyz_bounds(1, 0, 1) == pytest.approx((0.0, 0.0, HALF, HALF), abs=1e-6)
    s = 2 * HALF / 2**19
    minx, miny, maxx, maxy = xyz_bounds(319292, 270960, 19)
    assert (maxx - minx, maxy - miny) == pytest.approx((s, s))
    assert minx == pytest.approx(-HALF + 319292 * s) and maxy == pytest.approx(HALF - 270960 * s)


def test_xyz_from_name_parses_and_refuses() -> None:
    assert xyz_from_name(Path("a/OAM-319292-270960-19.png")) == (319292, 270960, 19)
    with pytest.raises(ConfigError, match=r"OAM-1-2\.png: georef: xyz needs a name ending in -X-Y-Z"):
        xyz_from_name(Path("OAM-1-2.png"))
    with pytest.raises(ConfigError, match="does not exist at zoom 2"):
        xyz_from_name(Path("OAM-4-0-2.png"))


# --------------------------------------------------------------------------- synthetic chips


def _png(path: Path, rgb: NDArray[np.uint8]) -> Path:
    Image.fromarray(rgb).save(path)
    return path


def _chip_pixels(tag: int, size: int = 64) -> NDArray[np.uint8]:
    """(size, size, 3): band 1 = row, band 2 = col, band 3 = the chip's tag."""
    rows, cols = np.mgrid[0:size, 0:size]
    return np.stack([rows, cols, np.full_like(rows, tag)], axis=2).astype(np.uint8)


def _lonlat(x: float, y: float) -> list[float]:
    lon, lat = Transformer.from_crs(3857, 4326, always_xy=True).transform(x, y)
    return [lon, lat]


def _chip_folder(tmp: Path) -> Path:
    """Three touching 64 px z18 chips (an L) and one far away, plus a GeoJSON over a seam."""
    folder = tmp / "chips"
    folder.mkdir()
    for tag, (x, y) in enumerate([(1000, 2000), (1001, 2000), (1000, 2001), (1010, 2000)], start=1):
        _png(folder / f"OAM-{x}-{y}-18.png", _chip_pixels(tag))
    # a building across the seam between (1000, 2000) and (1001, 2000): chip pixels rows 10-19,
    # columns 54-63 of the first and 0-9 of the second (polygon corners on pixel edges)
    minx, _, _, maxy = xyz_bounds(1000, 2000, 18)
    px = (xyz_bounds(1000, 2000, 18)[2] - minx) / 64
    ring = [(54, 10), (74, 10), (74, 20), (54, 20), (54, 10)]
    coords = [_lonlat(minx + c * px, maxy - r * px) for c, r in ring]
    feature = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [coords]}}
    (folder / "labels.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return folder


def test_touching_chips_form_one_group_and_a_far_chip_another(tmp_path: Path) -> None:
    folder = _chip_folder(tmp_path)
    chips = [Chip.open(p, georef="xyz") for p in sorted(folder.glob("*.png"))]
    assert all(c.grid.crs == WEB_MERCATOR and c.grid.shape == (64, 64) for c in chips)
    groups = group_chips(chips)
    assert [[c.path.name for c in g] for g in groups] == [
        ["OAM-1000-2000-18.png", "OAM-1000-2001-18.png", "OAM-1001-2000-18.png"],
        ["OAM-1010-2000-18.png"],
    ]


def test_mosaic_pastes_chips_exactly_and_leaves_gaps_invalid(tmp_path: Path) -> None:
    folder = _chip_folder(tmp_path)
    group = group_chips([Chip.open(p, georef="xyz") for p in sorted(folder.glob("*.png"))])[0]
    bands, valid, grid = mosaic(group)
    transform = grid.transform
    assert grid.crs == WEB_MERCATOR and bands.shape == (3, 128, 128)
    assert transform.c == pytest.approx(xyz_bounds(1000, 2000, 18)[0])
    assert transform.f == pytest.approx(xyz_bounds(1000, 2000, 18)[3])
    np.testing.assert_array_equal(bands[:, :64, :64], _chip_pixels(1).transpose(2, 0, 1))
    np.testing.assert_array_equal(bands[:, :64, 64:], _chip_pixels(2).transpose(2, 0, 1))
    np.testing.assert_array_equal(bands[:, 64:, :64], _chip_pixels(3).transpose(2, 0, 1))
    assert valid[:64].all() and valid[64:, :64].all() and not valid[64:, 64:].any()


def _yaml(path: Path, content: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def test_dataset_mosaic_scene_with_region_labels_across_a_seam(tmp_path: Path) -> None:
    _chip_folder(tmp_path)
    item = {"image": "chips/OAM-*.png", "label": "chips/labels.geojson", "mosaic": True, "georef": "xyz"}
    spec = {"root": ".", "gsd_m": 0.5, "sources": {"oam": {"weight_by_area": True, "items": [item]}}}
    data = _yaml(tmp_path / "d.yaml", spec)
    files = dataset_files(data)
    assert len(files) == 2 and len(files[0]["images"]) == 3 and "images" not in files[1]
    big, small = load_dataset(data).scenes
    assert (big.chips, small.chips) == (3, 1)
    assert big.label.shape == (128, 128) and big.grid.crs == WEB_MERCATOR
    expected = np.zeros((128, 128), np.uint8)
    expected[10:20, 54:74] = 1
    expected[64:, 64:] = IGNORE  # the gap of the L
    np.testing.assert_array_equal(big.label, expected)
    assert big.describe(tmp_path)["chips"] == 3
    # weight_by_area: three chips of valid ground against one
    assert big.weight / small.weight == pytest.approx(3.0, rel=1e-3)


def test_mosaic_refuses_raster_labels_and_chips_without_georeference(tmp_path: Path) -> None:
    folder = _chip_folder(tmp_path)
    _png(folder / "mask.png", np.zeros((64, 64, 3), np.uint8))
    item = {"image": "chips/OAM-*.png", "label": "chips/mask.png", "mosaic": True, "georef": "xyz"}
    data = _yaml(tmp_path / "d.yaml", {"gsd_m": 0.5, "sources": {"s": {"items": [item]}}})
    with pytest.raises(ConfigError, match=r"mosaic: true needs vector labels, not mask\.png"):
        load_dataset(data)
    item = {"image": "chips/OAM-*.png", "label": "chips/labels.geojson", "mosaic": True}
    data = _yaml(tmp_path / "d.yaml", {"gsd_m": 0.5, "sources": {"s": {"items": [item]}}})
    with pytest.raises(ConfigError, match=r"chip has no georeference; give a \.aux\.xml sidecar"):
        load_dataset(data)


def test_web_mercator_gsd_is_ground_metres_not_projected_metres() -> None:
    # Banepa, 27.6 N: a z19 pixel is 0.2986 projected metres but 0.2986 * cos(27.6) on the ground
    minx, miny, maxx, maxy = xyz_bounds(386718, 220252, 19)
    res = (maxx - minx) / 256
    lat = Transformer.from_crs(3857, 4326, always_xy=True).transform(minx, (miny + maxy) / 2)[1]
    gsd = pixel_size_m(CRS.from_epsg(3857), (res, 0, minx, 0, -res, maxy), (minx, miny, maxx, maxy))
    assert gsd == pytest.approx(res * math.cos(math.radians(lat)), rel=3e-3)  # UTM scale: 0.2 %
    assert gsd == pytest.approx(0.265, abs=0.002)  # PROVENANCE.md: true GSD z19 0.265 m


# --------------------------------------------------------------------------- real chips


@pytest.mark.realdata
@requires_real
@pytest.mark.parametrize(
    ("region", "fraction"), [("1", 0.10), ("2", 0.29), ("3", 0.19), ("4", 0.21), ("5", 0.30)]
)
def test_real_xyz_png_chips_with_region_osm_labels(region: str, fraction: float) -> None:
    """Building fraction of each region's z19 chips, as PROVENANCE.md measured it."""
    folder = REAL / "hotosm_fair_utilities" / "data" / region
    fractions = []
    for path in sorted(folder.glob("OAM-*-19.png")):
        chip = Chip.open(path, georef="xyz")
        grid = chip.grid
        fractions.append(rasterize_vector(folder / "labels.geojson", grid).mean())
    assert float(np.mean(fractions)) == pytest.approx(fraction, abs=0.01)


@pytest.mark.realdata
@requires_real
def test_real_jpeg_in_tif_reads_its_aux_xml_georeference() -> None:
    path = REAL / "hotosm_fair_models_banepa" / "train" / "oam" / "OAM-386690-220241-19.tif"
    chip = Chip.open(path, georef="file")  # GDAL's S3 no-listing default must not hide the sidecar
    assert chip.grid.crs == CRS.from_epsg(4326) and chip.grid.shape == (512, 512)
    assert (chip.grid.transform.a, -chip.grid.transform.e) == pytest.approx((1.341e-6, 1.188e-6), rel=0.01)
    left, bottom, right, top = chip.grid.bounds
    assert 85.518 <= left < right <= 85.524 and 27.628 <= bottom < top <= 27.635  # PROVENANCE.md
    grid = chip.grid
    assert grid.gsd_m() == pytest.approx(0.132, abs=0.005)


@pytest.mark.realdata
@requires_real
def test_real_per_chip_labels_in_web_mercator() -> None:
    folder = REAL / "kshitij_swinv2_mask2former" / "stage2_sample"
    fractions = []
    for path in sorted((folder / "source").glob("OAM-*.tif")):
        chip = Chip.open(path, georef="file")
        assert chip.grid.crs == WEB_MERCATOR
        grid = chip.grid
        fractions.append(rasterize_vector(folder / "labels" / f"{path.stem}.geojson", grid).mean())
    assert len(fractions) == 8 and float(np.mean(fractions)) == pytest.approx(0.59, abs=0.01)


@pytest.mark.realdata
@requires_real
def test_shipped_chip_scenes_never_share_ground_between_train_and_val() -> None:
    """Every chip scene's footprint (in lon/lat) is disjoint from every scene of the other split."""
    import shapely
    from rasterio.warp import transform_bounds

    boxes: dict[str, list[Any]] = {"train": [], "val": []}
    for entry in dataset_files(REPO / "configs" / "dataset.yaml"):
        if not entry["source"].startswith("oam_"):
            continue
        georef = "xyz" if entry["image"].endswith(".png") else "file"
        for path in entry.get("images", [entry["image"]]):
            chip = Chip.open(Path(path), georef=georef)
            box = shapely.box(*transform_bounds(chip.grid.crs, "EPSG:4326", *chip.grid.bounds))
            boxes[entry["split"]].append(box.buffer(-1e-7))  # touching edges are not shared ground
    train, val = shapely.union_all(boxes["train"]), shapely.union_all(boxes["val"])
    assert len(boxes["val"]) >= 4 and not train.intersects(val)


def test_off_lattice_chips_are_warped_into_their_own_window(tmp_path: Path) -> None:
    import rasterio
    from rasterio.transform import Affine

    def chip(name: str, value: int, transform: Affine) -> Path:
        path = tmp_path / name
        profile = {"driver": "GTiff", "height": 64, "width": 64, "count": 3, "dtype": "uint8",
                   "crs": "EPSG:32631", "transform": transform}  # fmt: skip
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(np.full((3, 64, 64), value, np.uint8))
        return path

    a = chip("a.tif", 100, Affine(1.0, 0, 500000, 0, -1.0, 100064))
    b = chip("b.tif", 200, Affine(0.9, 0, 500064, 0, -0.9, 100064))  # finer pixels: off the lattice
    group = group_chips([Chip.open(p, georef="file") for p in (a, b)])[0]
    bands, valid, grid = mosaic(group)
    transform = grid.transform
    assert transform.a == pytest.approx(0.9) and bands.shape == (3, round(64 / 0.9), round(121.6 / 0.9))
    cols_a = slice(2, round(62 / 0.9))  # a's interior, resampled onto the 0.9 m grid
    cols_b = slice(round(66 / 0.9), round(120 / 0.9))
    assert (bands[:, 5:60, cols_a] == 100).all() and (bands[:, 5:60, cols_b] == 200).all()
    assert valid[5:60, cols_a].all() and valid[5:60, cols_b].all()
    assert not valid[round(60 / 0.9) :, cols_b].any()  # below b (57.6 m tall): a gap
