"""DATASET.yaml schema and loading, targets, GSD resampling, balanced sampling, augmentation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from numpy.typing import NDArray
from PIL import Image
from pyproj import Transformer
from rasterio.transform import Affine
from scipy import ndimage

from pipeline.core.errors import ConfigError, FootprintsError, InputNotFoundError
from pipeline.training.dataset import (
    IGNORE,
    boundary_target,
    contact_target,
    dataset_files,
    load_dataset,
    make_target,
    parse_dataset,
)
from pipeline.training.sampling import CropSampler, resample_scene, to_grayscale

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "real"
CONFIG = REPO / "configs" / "dataset.yaml"


# --------------------------------------------------------------------------- helpers


def write_tif(
    path: Path,
    data: NDArray[np.uint8],
    *,
    crs: str = "EPSG:32631",
    origin: tuple[float, float] = (500000.0, 5000000.0),
    gsd: float = 1.0,
    nodata: float | None = None,
) -> Path:
    """(H, W) or (C, H, W) uint8 -> GeoTIFF with a north-up transform."""
    bands = data[None] if data.ndim == 2 else data
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": bands.shape[1],
        "width": bands.shape[2],
        "count": bands.shape[0],
        "dtype": "uint8",
        "crs": crs,
        "transform": Affine(gsd, 0.0, origin[0], 0.0, -gsd, origin[1]),
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(bands)
    return path


def square_scene(
    tmp: Path, name: str, *, size: int, box: tuple[int, int, int, int], gsd: float = 1.0
) -> None:
    """A georeferenced RGB image (grey noise) and a 0/255 mask with one rectangle (r0, r1, c0, c1)."""
    rng = np.random.default_rng(len(name))
    image = rng.integers(60, 200, size=(3, size, size), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    r0, r1, c0, c1 = box
    mask[r0:r1, c0:c1] = 255
    (tmp / "img").mkdir(exist_ok=True)
    (tmp / "lab").mkdir(exist_ok=True)
    write_tif(tmp / "img" / f"{name}.tif", image, gsd=gsd)
    write_tif(tmp / "lab" / f"{name}.tif", mask, gsd=gsd)


def write_yaml(path: Path, content: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def item(name: str, split: str = "train", **extra: Any) -> dict[str, Any]:
    return {"image": f"img/{name}.tif", "label": f"lab/{name}.tif", "split": split, **extra}


# --------------------------------------------------------------------------- schema and errors


def test_parse_minimal_yaml_applies_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "d.yaml", {"gsd_m": 0.5, "sources": {"a": {"items": [item("x")]}}})
    spec = parse_dataset(path)
    assert spec.root == "."
    assert spec.boundary_px == 2
    assert spec.building_crop_fraction == pytest.approx(2 / 3)
    source = spec.sources["a"]
    assert source.weight == 1.0 and source.label_color is None and not source.black_is_nodata
    assert source.items[0].split == "train" and source.items[0].weight == 1.0


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ({"gsd_m": 0.5, "sources": {"a": {"items": [item("x", split="test")]}}}, "sources.a.items.0.split"),
        ({"gsd_m": 0.5, "sources": {"a": {"items": [item("x")], "colour": 1}}}, "sources.a.colour"),
        ({"sources": {"a": {"items": [item("x")]}}}, "gsd_m"),
        ({"gsd_m": -1, "sources": {"a": {"items": [item("x")]}}}, "gsd_m"),
        ({"gsd_m": 0.5, "sources": {}}, "sources"),
        ({"gsd_m": 0.5, "sources": {"a": {"label_color": [1, 2, 300], "items": [item("x")]}}}, "label_color"),
        (["not", "a", "mapping"], "top level"),
    ],
)
def test_schema_errors_name_file_and_field(tmp_path: Path, content: Any, needle: str) -> None:
    path = write_yaml(tmp_path / "bad.yaml", content)
    with pytest.raises(ConfigError) as info:
        parse_dataset(path)
    message = str(info.value)
    assert str(path) in message and needle in message and "\n" not in message


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("gsd_m: 0.5\nsources: {a: {items: [{image: x/{name}}]}}\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML") as info:
        parse_dataset(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(InputNotFoundError, match=r"nope\.yaml"):
        parse_dataset(tmp_path / "nope.yaml")


def test_missing_files_are_named(tmp_path: Path) -> None:
    square_scene(tmp_path, "a", size=16, box=(2, 6, 2, 6))
    no_glob = write_yaml(tmp_path / "g.yaml", {"gsd_m": 1, "sources": {"s": {"items": [item("zz*")]}}})
    with pytest.raises(InputNotFoundError, match=r"sources\.s\.items\[0\].*matches no file"):
        load_dataset(no_glob)
    no_label = write_yaml(
        tmp_path / "l.yaml",
        {"gsd_m": 1, "sources": {"s": {"items": [{"image": "img/a.tif", "label": "lab/{stem}_gt.tif"}]}}},
    )
    with pytest.raises(InputNotFoundError, match=r"a_gt\.tif.*not found"):
        load_dataset(no_label)
    no_root = write_yaml(
        tmp_path / "r.yaml", {"root": "elsewhere", "gsd_m": 1, "sources": {"s": {"items": [item("a")]}}}
    )
    with pytest.raises(InputNotFoundError, match="fix 'root'"):
        load_dataset(no_root)


def test_scene_in_train_and_val_is_refused(tmp_path: Path) -> None:
    square_scene(tmp_path, "a", size=16, box=(2, 6, 2, 6))
    path = write_yaml(
        tmp_path / "d.yaml",
        {
            "gsd_m": 1,
            "sources": {
                "s": {"items": [item("a"), {"image": "img/*.tif", "label": "lab/{name}", "split": "val"}]}
            },
        },
    )
    with pytest.raises(ConfigError, match="listed twice"):
        dataset_files(path)


def test_png_without_gsd_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "i.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "m.png")
    path = write_yaml(
        tmp_path / "d.yaml", {"gsd_m": 1, "sources": {"s": {"items": [{"image": "i.png", "label": "m.png"}]}}}
    )
    with pytest.raises(ConfigError, match="not georeferenced; set gsd_m"):
        load_dataset(path)


# --------------------------------------------------------------------------- labels


def test_vector_labels_are_reprojected_and_rasterized_on_the_image_grid(tmp_path: Path) -> None:
    # Image: UTM 31N, 1 m pixels, origin (500000, 5000040), 40 x 40 px.
    origin = (500000.0, 5000040.0)
    write_tif(tmp_path / "img.tif", np.full((3, 40, 40), 100, np.uint8), origin=origin)
    # Two buildings given in pixel rows/cols, written as lon/lat polygons (CRS84, the GeoJSON default).
    boxes = [(5, 13, 3, 10), (20, 31, 22, 37)]
    to_ll = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    features = []
    for r0, r1, c0, c1 in boxes:
        corners = [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]
        ring = [list(to_ll.transform(origin[0] + c, origin[1] - r)) for c, r in corners]
        features.append(
            {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
        )
    (tmp_path / "labels.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    path = write_yaml(
        tmp_path / "d.yaml",
        {"gsd_m": 1.0, "sources": {"v": {"items": [{"image": "img.tif", "label": "labels.geojson"}]}}},
    )
    scene = load_dataset(path).scenes[0]
    expected = np.zeros((40, 40), np.uint8)
    for r0, r1, c0, c1 in boxes:
        expected[r0:r1, c0:c1] = 1
    np.testing.assert_array_equal(scene.label, expected)
    assert scene.gsd_m == pytest.approx(1.0, rel=1e-6)


def test_colour_masks_and_ignore_colours(tmp_path: Path) -> None:
    building, land, unknown = (60, 16, 152), (132, 41, 246), (0, 0, 0)
    mask = np.zeros((6, 6, 3), np.uint8)
    mask[:] = land
    mask[1:3, 1:4] = building
    mask[5, :] = unknown
    Image.fromarray(np.full((6, 6, 3), 90, np.uint8)).save(tmp_path / "i.jpg")
    Image.fromarray(mask).save(tmp_path / "m.png")
    # The same mask as a paletted PNG (like Dubai Tile 2).
    paletted = Image.fromarray(mask).quantize(colors=3, method=Image.Quantize.MEDIANCUT)
    Image.fromarray(np.full((6, 6, 3), 90, np.uint8)).save(tmp_path / "j.jpg")
    paletted.save(tmp_path / "p.png")
    source = {"gsd_m": 1.0, "label_color": list(building), "ignore_colors": [list(unknown)]}
    items = [{"image": "i.jpg", "label": "m.png"}, {"image": "j.jpg", "label": "p.png"}]
    path = write_yaml(tmp_path / "d.yaml", {"gsd_m": 1.0, "sources": {"c": {**source, "items": items}}})
    expected = np.zeros((6, 6), np.uint8)
    expected[1:3, 1:4] = 1
    expected[5, :] = IGNORE
    for scene in load_dataset(path).scenes:
        np.testing.assert_array_equal(scene.label, expected)
        assert scene.image.shape == (6, 6, 3) and scene.gsd_m == 1.0


def test_nodata_black_pixels_alpha_and_label_nodata_tag(tmp_path: Path) -> None:
    image = np.full((3, 8, 8), 120, np.uint8)
    image[:, 0, :] = 0  # a black no-data row
    write_tif(tmp_path / "img.tif", image)
    mask = np.zeros((8, 8), np.uint8)
    mask[4:6, 4:6] = 255
    write_tif(tmp_path / "lab.tif", mask, nodata=0)  # SpaceNet style: background tagged as nodata
    rgba = np.full((8, 8, 4), 100, np.uint8)
    rgba[..., 3] = 255
    rgba[7, :, 3] = 0  # transparent row
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_gt.png")
    items = [{"image": "img.tif", "label": "lab.tif"}, {"image": "a.png", "label": "a_gt.png", "gsd_m": 0.3}]
    path = write_yaml(
        tmp_path / "d.yaml", {"gsd_m": 1.0, "sources": {"s": {"black_is_nodata": True, "items": items}}}
    )
    tif, png = load_dataset(path).scenes
    assert (tif.label[0] == IGNORE).all() and (tif.label[1:4] == 0).all() and (tif.label[4:6, 4:6] == 1).all()
    assert (png.label[7] == IGNORE).all() and (png.label[:7] != IGNORE).all() and png.image.shape == (8, 8, 3)
    assert png.gsd_m == 0.3


# --------------------------------------------------------------------------- targets


def test_boundary_target_separates_buildings_one_pixel_apart() -> None:
    mask = np.zeros((14, 25), bool)
    mask[2:12, 2:12] = True
    mask[2:12, 13:23] = True  # column 12 is the 1 px gap
    boundary = boundary_target(mask, width_px=2)
    interior = mask & ~boundary
    expected = np.zeros_like(mask)
    expected[4:10, 4:10] = True
    expected[4:10, 15:21] = True
    np.testing.assert_array_equal(interior, expected)
    assert ndimage.label(interior)[1] == 2
    assert not (boundary & ~mask).any()


def test_boundary_target_edges_width_and_unknown() -> None:
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # touches the array's left, top and bottom edges
    boundary = boundary_target(mask, width_px=1)
    np.testing.assert_array_equal(np.flatnonzero(boundary.any(axis=0)), [4])  # only next to background
    assert not boundary_target(mask, width_px=0).any()
    assert not boundary_target(np.ones((5, 5), bool), width_px=2).any()
    unknown = np.zeros_like(mask)
    unknown[:, 5:] = True  # no-data beside the building is not an edge
    assert not boundary_target(mask, width_px=2, unknown=unknown).any()


def test_make_target_marks_nodata_in_both_channels() -> None:
    label = np.zeros((8, 8), np.uint8)
    label[2:6, 2:6] = 1
    label[0, :] = IGNORE
    target = make_target(label, boundary_px=1)
    assert target.shape == (2, 8, 8) and target.dtype == np.uint8
    assert (target[:, 0] == IGNORE).all()
    assert target[0, 2:6, 2:6].all() and target[1, 3:5, 3:5].sum() == 0 and target[1, 2, 2] == 1


def test_contact_target_marks_where_two_buildings_meet() -> None:
    mask = np.zeros((12, 30), bool)
    mask[2:10, 2:10] = True  # A
    mask[2:10, 12:20] = True  # B: columns 10-11 are a 2 px gap
    mask[2:10, 27:30] = True  # C: 7 px from B, farther than 2 * width
    contact = contact_target(mask, width_px=2)
    # within 2 px (Chebyshev) of A (cols 2-9): cols <= 11; of B (cols 12-19): cols >= 10;
    # rows 0-11, since the square reaches 2 rows beyond the buildings' rows 2-9
    expected = np.zeros_like(mask)
    expected[0:12, 10:12] = True
    np.testing.assert_array_equal(contact, expected)
    # a mask that merged A and B across the gap is cut back into them by the contact strip
    merged = mask.copy()
    merged[2:10, 10:12] = True
    assert ndimage.label(merged)[1] == 2 and ndimage.label(merged & ~contact)[1] == 3
    touching = np.zeros((8, 12), bool)
    touching[2:6, 0:6] = True
    touching[2:6, 6:12] = True  # one component: no contact within a single building
    assert not contact_target(touching, width_px=2).any()
    assert not contact_target(mask, width_px=0).any()
    single = np.zeros((10, 10), bool)
    single[2:8, 2:8] = True
    assert not contact_target(single, width_px=3).any()
    diagonal = np.zeros((6, 6), bool)
    diagonal[0:3, 0:3] = diagonal[3:6, 3:6] = True  # corner-touching = one 8-connected building
    assert not contact_target(diagonal, width_px=1).any()
    unknown = np.zeros_like(mask)
    unknown[:, 10:12] = True
    np.testing.assert_array_equal(contact_target(mask, width_px=2, unknown=unknown), expected & ~unknown)


def test_make_target_contact_channel() -> None:
    label = np.zeros((12, 30), np.uint8)
    label[2:10, 2:10] = 1
    label[2:10, 12:20] = 1
    label[11, :] = IGNORE
    target = make_target(label, boundary_px=1, contact_px=2)
    assert (target[:, 11] == IGNORE).all()
    np.testing.assert_array_equal(np.flatnonzero(target[1, 5] == 1), [10, 11])
    assert target[1, :11, :10].sum() == 0 and target[1, :11, 12:].sum() == 0


# --------------------------------------------------------------------------- resampling and sampling


def test_crop_is_resampled_to_training_gsd(tmp_path: Path) -> None:
    # 0.25 m scene, 100 x 100 px, a 40 x 40 px (10 m) building -> 20 x 20 px at 0.5 m.
    square_scene(tmp_path, "fine", size=100, box=(30, 70, 20, 60), gsd=0.25)
    path = write_yaml(
        tmp_path / "d.yaml", {"gsd_m": 0.5, "boundary_px": 1, "sources": {"s": {"items": [item("fine")]}}}
    )
    dataset = load_dataset(path)
    assert dataset.scenes[0].gsd_m == pytest.approx(0.25, rel=1e-6)
    sampler = CropSampler.from_dataset(dataset, crop=64, scale_jitter=(1.0, 1.0), augment=False)
    rng = np.random.default_rng(0)
    for _ in range(5):
        crop = sampler.draw(rng)
        building = crop.target[0] == 1
        rows, cols = np.flatnonzero(building.any(axis=1)), np.flatnonzero(building.any(axis=0))
        assert building.sum() == 400 and len(rows) == 20 and len(cols) == 20
        assert (crop.target[0] != IGNORE).sum() == 50 * 50  # the whole scene is 50 x 50 px at 0.5 m
    val = resample_scene(dataset.scenes[0], gsd_m=0.5, boundary_px=1)
    assert val.image.shape == (50, 50, 3) and (val.target[0] == 1).sum() == 400 and val.valid.all()
    assert (val.target[1] == 1).sum() == 400 - 18 * 18


def test_sources_are_balanced_by_weight_not_pixels(tmp_path: Path) -> None:
    square_scene(tmp_path, "big", size=400, box=(10, 60, 10, 60))
    square_scene(tmp_path, "small", size=16, box=(4, 8, 4, 8))
    sources = {
        "big": {"weight": 1.0, "items": [item("big")]},
        "small": {"weight": 3.0, "items": [item("small")]},
    }
    dataset = load_dataset(write_yaml(tmp_path / "d.yaml", {"gsd_m": 1.0, "sources": sources}))
    sampler = CropSampler.from_dataset(dataset, crop=32)
    rng = np.random.default_rng(1)
    counts = Counter(sampler.draw(rng).source for _ in range(1200))
    assert counts["small"] / 1200 == pytest.approx(0.75, abs=0.04)
    picks = Counter(sampler.choose_source(rng) for _ in range(20000))
    assert picks["big"] / 20000 == pytest.approx(0.25, abs=0.015)


def test_crops_favour_buildings(tmp_path: Path) -> None:
    square_scene(tmp_path, "sparse", size=400, box=(300, 316, 100, 116))
    dataset = load_dataset(
        write_yaml(tmp_path / "d.yaml", {"gsd_m": 1.0, "sources": {"s": {"items": [item("sparse")]}}})
    )
    sampler = CropSampler.from_dataset(dataset, crop=32, augment=False)
    rng = np.random.default_rng(2)
    hits = sum(bool((sampler.draw(rng).target[0] == 1).any()) for _ in range(300))
    assert 0.6 < hits / 300 < 0.8  # 2/3 building-centred + a few random hits


def test_augmented_batches_are_deterministic_under_a_seed(tmp_path: Path) -> None:
    square_scene(tmp_path, "a", size=120, box=(30, 70, 20, 60))
    square_scene(tmp_path, "b", size=90, box=(10, 20, 10, 50), gsd=0.5)
    sources = {"a": {"items": [item("a")]}, "b": {"items": [item("b")]}}
    dataset = load_dataset(write_yaml(tmp_path / "d.yaml", {"gsd_m": 1.0, "sources": sources}))
    sampler = CropSampler.from_dataset(dataset, crop=32)
    x1, y1 = sampler.batch(np.random.default_rng(7), 6)
    x2, y2 = sampler.batch(np.random.default_rng(7), 6)
    x3, _ = sampler.batch(np.random.default_rng(8), 6)
    assert x1.shape == (6, 3, 32, 32) and y1.shape == (6, 2, 32, 32)
    assert x1.dtype == np.uint8 and y1.dtype == np.uint8
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert set(np.unique(y1)) <= {0, 1, IGNORE}


def test_make_target_with_both_separators_stacks_boundary_then_contact() -> None:
    label = np.zeros((12, 20), np.uint8)
    label[2:10, 2:9] = 1
    label[2:10, 11:18] = 1
    label[0, 0] = IGNORE
    target = make_target(label, boundary_px=1, contact_px=2, separators=("boundary", "contact"))
    assert target.shape == (3, 12, 20)
    np.testing.assert_array_equal(target[1], make_target(label, boundary_px=1)[1])
    np.testing.assert_array_equal(target[2], make_target(label, boundary_px=1, contact_px=2)[1])
    assert (target[2] == 1).any() and target[:, 0, 0].tolist() == [IGNORE] * 3


def test_separators_need_a_contact_width(tmp_path: Path) -> None:
    spec = {"gsd_m": 1.0, "separators": ["boundary", "contact"], "sources": {"s": {"items": [item("a")]}}}
    with pytest.raises(ConfigError, match="contact_px must be > 0"):
        parse_dataset(write_yaml(tmp_path / "d.yaml", spec))
    parsed = parse_dataset(write_yaml(tmp_path / "d.yaml", {**spec, "contact_px": 2}))
    assert parsed.classes == ("building", "boundary", "contact")


def test_to_grayscale_is_luma_in_three_bands() -> None:
    image = np.array([[[100, 150, 200], [0, 0, 255]]], np.uint8)
    grey = to_grayscale(image)
    # 0.299 * 100 + 0.587 * 150 + 0.114 * 200 = 140.75; 0.114 * 255 = 29.07
    np.testing.assert_array_equal(grey, np.array([[[141] * 3, [29] * 3]], np.uint8))


def test_grayscale_fraction_turns_that_share_of_crops_grey(tmp_path: Path) -> None:
    square_scene(tmp_path, "a", size=120, box=(30, 70, 20, 60))
    spec = {"gsd_m": 1.0, "grayscale_fraction": 0.25, "sources": {"a": {"items": [item("a")]}}}
    dataset = load_dataset(write_yaml(tmp_path / "d.yaml", spec))
    sampler = CropSampler.from_dataset(dataset, crop=32)
    assert sampler.grayscale_fraction == 0.25
    rng = np.random.default_rng(3)
    crops = [sampler.draw(rng).image for _ in range(400)]
    grey = [bool((c[..., 0] == c[..., 1]).all() and (c[..., 1] == c[..., 2]).all()) for c in crops]
    assert sum(grey) / 400 == pytest.approx(0.25, abs=0.06)
    never = CropSampler.from_dataset(dataset, crop=32, grayscale_fraction=0.0)
    assert not any((c.image[..., 0] == c.image[..., 1]).all() for c in (never.draw(rng) for _ in range(50)))


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real is absent")
def test_shipped_dataset_yaml_lists_existing_files_split_by_scene() -> None:
    files = dataset_files(CONFIG)
    for entry in files:
        assert Path(entry["image"]).is_file() and Path(entry["label"]).is_file()
    by_split = Counter(e["split"] for e in files)
    assert by_split == {"train": 113, "val": 37}
    scenes = Counter(e["source"] for e in files)
    with_val = {e["source"] for e in files if e["split"] == "val"}
    assert {s for s, n in scenes.items() if n >= 3} <= with_val  # every source of 3+ scenes validates
    chips = [Path(p) for e in files for p in e.get("images", [e["image"]])]
    assert not any(p.name.endswith("-20.png") for p in chips)  # z20 repeats the z19 ground
    regions = {(e["split"], Path(e["image"]).parent) for e in files if e["source"].startswith("oam_")}
    assert len({folder for _, folder in regions}) == 8
    val = {Path(e["image"]).name for e in files if e["split"] == "val"}
    assert {"aerial_sample.tif", "chicago1_24.png", "austin3_45.png", "38.png"} <= val
    assert not any("img58" in e["image"] for e in files)
    tiles = {(e["split"], Path(e["image"]).parent.parent.name) for e in files if e["source"] == "dubai"}
    assert {t for s, t in tiles if s == "val"} == {"Tile 3"} and ("train", "Tile 3") not in tiles


@pytest.mark.realdata
@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real is absent")
def test_real_tanzania_vector_labels_match_provenance(tmp_path: Path) -> None:
    spec = parse_dataset(CONFIG)
    source = spec.sources["open_ai_tanzania"].model_dump()
    root = str((CONFIG.parent / spec.root).resolve())
    path = write_yaml(tmp_path / "t.yaml", {"root": root, "gsd_m": 0.5, "sources": {"t": source}})
    try:
        scene = load_dataset(path).scenes[0]
    except FootprintsError as exc:  # pragma: no cover - shown in the failure
        pytest.fail(str(exc))
    assert scene.gsd_m == pytest.approx(0.0775, abs=0.001)
    assert (scene.label == 1).mean() == pytest.approx(0.0994, abs=0.002)  # PROVENANCE.md: 0.0994
