"""Block-wise polygonization equals whole-raster polygonization, pixel for pixel."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import typer
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray
from pyproj import Transformer
from rasterio.features import shapes
from typer.testing import CliRunner

from pipeline.cli.vectorize import register
from pipeline.core.errors import (
    BandMappingError,
    ConfigError,
    InputNotFoundError,
    NotARasterError,
    RasterReadError,
)
from pipeline.vectorize.pieces import band_rows
from pipeline.vectorize.polygonize import (
    Regions,
    polygonize_array,
    polygonize_blocks,
    reference_polygons,
    to_world,
)
from tests.conftest import DEMO_LABELS, ORIGIN, requires_real, write_tif
from tests.masks import NODATA, SEAM_BLOCKS, feature_mask, label_raster, write_big_mask
from tests.rss import run_with_peak_rss

GEOGRAPHIC = Affine(8.983e-6 * 1.37, 0.0, -43.2123456789, 0.0, -8.983e-6 * 1.11, -22.9123456789)
ROTATED = Affine(0.31, 0.02, 612345.678, -0.015, -0.29, 3301234.5678)


def assert_same_regions(got: Regions, ref: Regions) -> None:
    """Same count, first pixels, values and pixel counts; zero symmetric difference per pair."""
    assert len(got) == len(ref)
    np.testing.assert_array_equal(got.first_row, ref.first_row)
    np.testing.assert_array_equal(got.first_col, ref.first_col)
    np.testing.assert_array_equal(got.value, ref.value)
    np.testing.assert_array_equal(got.pixel_count, ref.pixel_count)
    assert shapely.is_valid(got.geometry).all() and shapely.is_valid(ref.geometry).all()
    assert (shapely.get_type_id(got.geometry) == shapely.GeometryType.POLYGON).all()
    diff = shapely.area(shapely.symmetric_difference(got.geometry, ref.geometry))
    assert (diff == 0).all(), f"{int((diff > 0).sum())} polygons differ, max {diff.max()}"
    same = shapely.equals_exact(shapely.normalize(got.geometry), shapely.normalize(ref.geometry), 0)
    assert same.all()  # even the vertices are GDAL's
    order = np.lexsort((got.first_col, got.first_row))
    np.testing.assert_array_equal(order, np.arange(len(got)))


def assert_no_overlaps(regions: Regions) -> None:
    geoms = regions.geometry
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    pairs = left < right
    overlap = shapely.area(shapely.intersection(geoms[left[pairs]], geoms[right[pairs]]))
    assert (overlap == 0).all()
    assert shapely.area(shapely.union_all(geoms)) == pytest.approx(shapely.area(geoms).sum(), rel=1e-12)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("block_size", [*SEAM_BLOCKS, 1, 7])
def test_feature_mask_blockwise_equals_whole(block_size: int) -> None:
    mask = feature_mask()
    ref = reference_polygons(mask, transform=ORIGIN, nodata=NODATA)
    got = polygonize_array(mask, transform=ORIGIN, block_size=block_size, nodata=NODATA)
    assert_same_regions(got, ref)
    assert_no_overlaps(got)
    assert got.pieces.max() >= 3  # the snake spans several bands
    assert (got.pieces > 1).sum() >= 20
    assert np.array_equal(np.unique(got.value), [1])


def test_regions_are_handed_over_in_groups_as_the_merge_finishes_them(tmp_path: Path) -> None:
    """``on_regions`` sees every region once, band by band as the merge closes it (a snake open
    over all bands comes last), each group sorted and in the CRS: together, the returned regions."""
    mask = feature_mask()
    path = write_tif(tmp_path / "m.tif", mask, crs="EPSG:32614", transform=ROTATED, nodata=NODATA)
    groups: list[Regions] = []
    got = polygonize_blocks(str(path), block_size=64, on_regions=groups.append)
    assert len(groups) >= 5 and all(len(g) for g in groups)
    assert all(g.crs == got.crs for g in groups)
    for g in groups:
        assert np.all(np.diff(g.first_row * mask.shape[1] + g.first_col) > 0)
    rows = np.concatenate([g.first_row for g in groups])
    cols = np.concatenate([g.first_col for g in groups])
    order = np.lexsort((cols, rows))
    assert np.array_equal(rows[order], got.first_row) and np.array_equal(cols[order], got.first_col)
    geoms = np.concatenate([g.geometry for g in groups])[order]
    assert shapely.to_wkb(geoms).tolist() == shapely.to_wkb(got.geometry).tolist()
    assert np.array_equal(np.concatenate([g.pixel_count for g in groups])[order], got.pixel_count)
    assert groups[-1].pieces.max() == got.pieces.max()  # the snake: open until the last band


@pytest.mark.parametrize("block_size", SEAM_BLOCKS)
def test_label_raster_blockwise_equals_whole(block_size: int) -> None:
    labels = label_raster()
    ref = reference_polygons(labels, transform=GEOGRAPHIC)
    got = polygonize_array(labels, transform=GEOGRAPHIC, block_size=block_size)
    assert_same_regions(got, ref)
    assert_no_overlaps(got)
    assert (got.pieces > 1).any()
    assert got.value.max() > 2**31  # values beyond int32 survive
    touching = shapely.STRtree(got.geometry).query(got.geometry, predicate="touches")
    assert touching.shape[1] > 100  # touching regions stayed separate polygons


def test_diagonal_contacts_are_separate_regions() -> None:
    a = np.zeros((6, 6), np.uint8)
    a[2, 2] = a[3, 3] = a[2, 4] = a[3, 1] = 1  # the seam of block size 3 runs between rows 2 and 3
    got = polygonize_array(a, transform=ORIGIN, block_size=3)
    assert len(got) == 4 and (got.pieces == 1).all()
    assert_same_regions(got, reference_polygons(a, transform=ORIGIN))


def test_hole_cut_by_seams_stays_one_polygon_with_one_hole() -> None:
    a = np.ones((9, 9), np.uint8)
    a[2:7, 2:7] = 0
    got = polygonize_array(a, transform=Affine.identity(), block_size=2)
    assert len(got) == 1 and got.pieces[0] == 7  # 1 + 2 + 2 + 1 + 1 pieces
    assert shapely.get_num_interior_rings(got.geometry[0]) == 1
    assert shapely.area(got.geometry[0]) == 81 - 25


def test_to_world_reproduces_gdal_coordinates_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    a = (rng.random((120, 90)) < 0.5).astype(np.uint8)
    for transform in (ORIGIN, GEOGRAPHIC, ROTATED):
        gdal = [shapely.geometry.shape(g) for g, _ in shapes(a, mask=a > 0, transform=transform)]
        pixel = [shapely.geometry.shape(g) for g, _ in shapes(a, mask=a > 0)]
        mapped = to_world(np.asarray(pixel, dtype=object), transform)
        assert shapely.equals_exact(mapped, np.asarray(gdal, dtype=object), tolerance=0).all()


def test_rotated_transform_and_block_size_above_height() -> None:
    mask = feature_mask(200, 260)
    ref = reference_polygons(mask, transform=ROTATED, nodata=NODATA)
    for block in (37, 1000):
        assert_same_regions(polygonize_array(mask, transform=ROTATED, block_size=block, nodata=NODATA), ref)


def test_empty_and_full_rasters() -> None:
    empty = polygonize_array(np.zeros((20, 30), np.uint8), transform=ORIGIN, block_size=7)
    assert len(empty) == 0 and empty.geometry.dtype == object
    full = polygonize_array(np.ones((20, 30), np.uint8), transform=Affine.identity(), block_size=7)
    assert len(full) == 1 and full.pieces[0] == 3 and shapely.area(full.geometry[0]) == 600


masks = arrays(np.uint8, st.tuples(st.integers(1, 60), st.integers(1, 60)), elements=st.integers(0, 1))
labels = arrays(np.uint8, st.tuples(st.integers(1, 60), st.integers(1, 60)), elements=st.integers(0, 3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.one_of(masks, labels), block_size=st.integers(1, 70), use_nodata=st.booleans())
def test_property_blockwise_equals_whole(
    values: NDArray[np.uint8], block_size: int, use_nodata: bool
) -> None:
    nodata = 3 if use_nodata else None
    ref = reference_polygons(values, transform=ORIGIN, nodata=nodata)
    got = polygonize_array(values, transform=ORIGIN, block_size=block_size, nodata=nodata)
    assert_same_regions(got, ref)


@settings(max_examples=60, deadline=None)
@given(
    values=arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=st.integers(0, 2)),
    block_size=st.integers(1, 45),
    seed=st.integers(0, 2**16),
)
def test_property_dense_random_masks(values: NDArray[np.uint8], block_size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random(values.shape) < 0.6, values, 0).astype(np.uint8)
    ref = reference_polygons(dense, transform=GEOGRAPHIC)
    assert_same_regions(polygonize_array(dense, transform=GEOGRAPHIC, block_size=block_size), ref)


@requires_real
@pytest.mark.realdata
def test_real_building_labels_blockwise_equal_whole() -> None:
    with rasterio.open(DEMO_LABELS) as ds:
        mask, transform = ds.read(1), ds.transform
    ref = reference_polygons(mask, transform=transform)
    assert len(ref) > 50
    for block in SEAM_BLOCKS:
        got = polygonize_blocks(str(DEMO_LABELS), block_size=block)
        assert_same_regions(got, ref)
        assert (got.pieces > 1).any()


# --------------------------------------------------------------------------- statistics and files


def test_mean_statistics_equal_whole_array() -> None:
    mask = feature_mask(300, 400)
    prob = np.random.default_rng(5).integers(0, 256, mask.shape).astype(np.uint8)
    ref = reference_polygons(mask, transform=ORIGIN, stats=prob, nodata=NODATA)
    got = polygonize_array(mask, transform=ORIGIN, block_size=64, stats=prob, nodata=NODATA)
    assert got.mean is not None and ref.mean is not None
    np.testing.assert_allclose(got.mean, ref.mean, rtol=1e-12)
    first = ref.first_row[0], ref.first_col[0]
    assert ref.pixel_count[0] >= 1 and 0 <= got.mean[0] <= 255 and mask[first] == 1


def test_geotiff_blocks_equal_whole(tmp_path: Path) -> None:
    mask = feature_mask()
    prob = np.random.default_rng(6).integers(0, 256, mask.shape).astype(np.uint8)
    path = write_tif(tmp_path / "mask.tif", mask, nodata=NODATA, tiled=True, block=128)
    prob_path = write_tif(tmp_path / "prob.tif", prob)
    ref = reference_polygons(mask, transform=ORIGIN, stats=prob, nodata=NODATA)
    for block in SEAM_BLOCKS:
        got = polygonize_blocks(str(path), block_size=block, stats_path=str(prob_path))
        assert_same_regions(got, ref)
        assert got.crs == rasterio.crs.CRS.from_string("EPSG:32614")
        assert got.mean is not None and ref.mean is not None
        np.testing.assert_allclose(got.mean, ref.mean, rtol=1e-12)


def test_internal_mask_is_background(tmp_path: Path) -> None:
    labels = label_raster()
    valid = np.ones(labels.shape, bool)
    valid[100:140, 30:200] = False
    path = tmp_path / "labels.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        write_tif(path, labels, crs="EPSG:4326", transform=GEOGRAPHIC)
        with rasterio.open(path, "r+") as ds:
            ds.write_mask(np.where(valid, 255, 0).astype(np.uint8))
    ref = reference_polygons(np.where(valid, labels, 0), transform=GEOGRAPHIC)
    assert_same_regions(polygonize_blocks(str(path), block_size=64), ref)


def test_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match=r"missing\.tif: file not found"):
        polygonize_blocks(str(tmp_path / "missing.tif"))
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    with pytest.raises(NotARasterError, match=r"junk\.tif"):
        polygonize_blocks(str(junk))
    floats = write_tif(tmp_path / "float.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(RasterReadError, match="float32, not integer"):
        polygonize_blocks(str(floats))
    good = write_tif(tmp_path / "good.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(BandMappingError, match="band 2"):
        polygonize_blocks(str(good), band=2)
    with pytest.raises(ConfigError, match="block_size=0"):
        polygonize_blocks(str(good), block_size=0)
    other = write_tif(tmp_path / "other.tif", np.zeros((5, 4), np.uint8))
    with pytest.raises(RasterReadError, match="same grid"):
        polygonize_blocks(str(good), stats_path=str(other))


# --------------------------------------------------------------------------- CLI


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Test app."""

    register(app)
    return app


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli(), ["vectorize", *args])


def test_cli_geojson_is_rfc7946(tmp_path: Path) -> None:
    mask = feature_mask()
    path = write_tif(tmp_path / "mask.tif", mask, nodata=NODATA)
    prob = write_tif(tmp_path / "prob.tif", np.full(mask.shape, 204, np.uint8))
    out = tmp_path / "out" / "regions.geojson"
    result = run_cli(str(path), "--out", str(out), "--block-size", "64", "--stats", str(prob), "--exact")
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert not re.search(r"\d\.\d{8,}", text)  # <= 7 decimals
    doc = json.loads(text)
    assert "crs" not in doc  # RFC 7946: WGS 84 lon/lat implied
    feats = doc["features"]
    ref = reference_polygons(mask, transform=ORIGIN, nodata=NODATA)
    big = ref.pixel_count * 0.25 >= 8.0  # min_area_m2 = 8 drops the small ones (after merging)
    expected = [f"mask-{r}-{c}" for r, c in zip(ref.first_row[big], ref.first_col[big], strict=True)]
    assert 0 < len(feats) < len(ref)
    assert [f["properties"]["id"] for f in feats] == expected
    assert [f["properties"]["area_m2"] for f in feats] == (ref.pixel_count[big] * 0.25).tolist()
    assert all(f["properties"]["mean_probability"] == pytest.approx(0.8) for f in feats)
    geoms = shapely.from_geojson([json.dumps(f["geometry"]) for f in feats])
    assert shapely.is_ccw(shapely.get_exterior_ring(geoms)).all()
    with rasterio.open(path) as ds:
        left, bottom, right, top = ds.bounds
    to_ll = Transformer.from_crs("EPSG:32614", "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform([left, right, left, right], [bottom, bottom, top, top])
    xy = shapely.get_coordinates(geoms)
    assert (xy[:, 0] >= min(lon) - 1e-6).all() and (xy[:, 0] <= max(lon) + 1e-6).all()
    assert (xy[:, 1] >= min(lat) - 1e-6).all() and (xy[:, 1] <= max(lat) + 1e-6).all()
    assert not list(out.parent.glob(".*tmp*"))


def test_cli_min_area_applies_after_merging(tmp_path: Path) -> None:
    a = np.zeros((64, 20), np.uint8)
    a[2:58, 3:6] = 1  # 3 x 56 px = 42 m² in 8 pieces of at most 3 x 8 px = 6 m²
    a[10:12, 12:14] = 1  # 4 px = 1 m²
    path = write_tif(tmp_path / "tall.tif", a)
    config = tmp_path / "cfg.yaml"
    config.write_text("vectorize:\n  min_area_m2: 8\n  simplify_m: 0\n  regularize: false\n")
    out = tmp_path / "tall.gpkg"
    result = run_cli(str(path), "--out", str(out), "--block-size", "8", "--config", str(config))
    assert result.exit_code == 0, result.output
    frame = gpd.read_file(out)
    assert len(frame) == 1 and frame.crs.to_epsg() == 32614
    assert frame["area_m2"].iloc[0] == pytest.approx(42.0) and frame["pieces"].iloc[0] == 8
    assert frame.geometry.iloc[0].area == pytest.approx(42.0)


def test_cli_parquet_keeps_raster_crs_and_exact_polygons(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    labels = label_raster()
    path = write_tif(tmp_path / "inst.tif", labels)
    out = tmp_path / "inst.parquet"
    result = run_cli(str(path), "--out", str(out), "--block-size", "64", "--min-area", "0", "--exact")
    assert result.exit_code == 0, result.output
    frame = gpd.read_parquet(out)
    ref = reference_polygons(labels, transform=ORIGIN)
    assert len(frame) == len(ref) and frame.crs.to_epsg() == 32614
    diff = shapely.area(shapely.symmetric_difference(frame.geometry.to_numpy(), ref.geometry))
    assert (diff == 0).all()
    assert frame["value"].to_numpy().tolist() == ref.value.tolist()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.tif", "--out", "x.geojson"], "file not found"),
        (["mask.tif", "--out", "x.shp"], "unsupported output extension"),
        (["nocrs.tif", "--out", "x.geojson"], "no CRS"),
        (["mask.tif", "--out", "x.geojson", "--config", "missing.yaml"], "config file not found"),
    ],
)
def test_cli_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    write_tif(tmp_path / "mask.tif", np.ones((4, 4), np.uint8))
    write_tif(tmp_path / "nocrs.tif", np.ones((4, 4), np.uint8), crs=None)
    args = [str(tmp_path / a) if a.endswith((".tif", ".yaml", ".geojson", ".shp")) else a for a in args]
    result = run_cli(*args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "error:" in lines[0]


# --------------------------------------------------------------------------- 20k x 20k


CHILD = """
import json, sys, time
import numpy as np, shapely
from pipeline.vectorize.polygonize import polygonize_blocks
start = time.perf_counter()
r = polygonize_blocks(sys.argv[1], block_size=int(sys.argv[3]))
seconds = time.perf_counter() - start
valid = bool(shapely.is_valid(r.geometry).all())
area = shapely.area(r.geometry)
np.savez(sys.argv[2], first_row=r.first_row, first_col=r.first_col, pixels=r.pixel_count,
         pieces=r.pieces, area=area)
print(json.dumps({"n": len(r), "seconds": seconds, "valid": valid}), file=sys.stderr)
"""


@pytest.mark.slow
def test_20k_mask_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    start = time.perf_counter()
    plan = write_big_mask(path, size=20_000)
    generated = time.perf_counter() - start
    assert plan.buildings >= 100_000
    out = tmp_path / "result.npz"
    rc, peak, err = run_with_peak_rss([sys.executable, "-c", CHILD, str(path), str(out), "1024"])
    assert rc == 0, err[-3000:]
    info = json.loads(err.strip().splitlines()[-1])
    print(
        f"\n20000x20000 mask: generated in {generated:.1f} s; {info['n']} polygons in "
        f"{info['seconds']:.1f} s ({info['n'] / info['seconds']:.0f} polygons/s), "
        f"peak RSS {peak / 2**20:.0f} MiB"
    )
    assert peak < 1.5e9
    assert info["valid"]
    got = np.load(out)
    rows, cols, pixels = plan.expected()
    np.testing.assert_array_equal(got["first_row"], rows)
    np.testing.assert_array_equal(got["first_col"], cols)
    np.testing.assert_array_equal(got["pixels"], pixels)
    np.testing.assert_allclose(got["area"], pixels * 0.09, rtol=1e-9)
    assert (got["pieces"] > 1).sum() > 1000  # many buildings crossed band edges
    assert (got["pieces"] >= 3).sum() >= 40  # the towers span 3+ bands


def test_band_rows_shrink_with_the_width_beyond_8192() -> None:
    assert band_rows(1024, 640) == band_rows(1024, 8192) == 1024
    assert band_rows(1024, 16384) == 512  # the same pixels per band as 1024 rows at 8192
    assert band_rows(1024, 12000) == 640  # 699 rounded down to whole 128-row steps
    assert band_rows(1024, 50_000) == 128  # never under 128 rows ...
    assert band_rows(16, 9000) == 16  # ... nor over block_size


def test_wide_raster_blockwise_equals_whole(tmp_path: Path) -> None:
    labels = label_raster(width=9000)
    path = write_tif(tmp_path / "wide.tif", labels)
    got = polygonize_blocks(str(path), block_size=384)  # 256-row bands at this width: two
    assert_same_regions(got, reference_polygons(labels, transform=ORIGIN))
    assert (got.pieces > 1).sum() >= 300  # the rectangles cut by the seam at row 256
