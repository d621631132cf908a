"""RasterGrid: one immutable grid value; open_checked: one friendly way to open a raster."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import array_bounds
from rasterio.windows import Window

from pipeline.core.errors import EmptyRasterError, EvaluationInputError, InputNotFoundError, NotARasterError
from pipeline.core.raster import RasterGrid, open_checked
from pipeline.tiling.grid import TileGrid
from tests.conftest import ORIGIN, UTM_CRS, coordinate_image, write_tif

UTM = CRS.from_string(UTM_CRS)


def test_a_grid_is_an_immutable_value_that_pickles_and_hashes() -> None:
    grid = RasterGrid(crs=UTM, transform=ORIGIN, height=300, width=200)
    twin = RasterGrid(crs=CRS.from_epsg(32614), transform=Affine(*ORIGIN[:6]), height=300, width=200)
    assert grid == twin and hash(grid) == hash(twin) and grid.shape == (300, 200)
    assert pickle.loads(pickle.dumps(grid)) == grid
    assert grid != RasterGrid(crs=UTM, transform=ORIGIN, height=200, width=300)
    with pytest.raises(AttributeError):
        grid.height = 1  # type: ignore[misc]


def test_the_grid_of_a_file_and_its_windows_agree_with_rasterio(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "a.tif", coordinate_image(300, 200))
    with rasterio.open(path) as ds:
        grid = RasterGrid.of(ds)
        assert grid == RasterGrid(crs=ds.crs, transform=ds.transform, height=300, width=200)
        assert grid.bounds == tuple(ds.bounds) == array_bounds(300, 200, ds.transform)
        for tile in TileGrid(height=300, width=200, tile_size=128, overlap=16):
            window = Window.from_slices(*tile.window)
            assert tile.transform(grid) == grid.window_transform(window)
            assert tile.transform(grid).almost_equals(ds.window_transform(window), precision=1e-9)
            with rasterio.open(path) as again:  # the tile's transform places its pixels
                x, y = tile.transform(grid) @ (0.5, 0.5)
                assert again.index(x, y) == (tile.row_off, tile.col_off)


def test_bounds_are_left_bottom_right_top_whatever_the_axes_direction() -> None:
    south_up = RasterGrid(crs=UTM, transform=Affine(0.5, 0, 100.0, 0, 0.5, 200.0), height=10, width=20)
    assert south_up.bounds == (100.0, 200.0, 110.0, 205.0)
    rotated = RasterGrid(crs=UTM, transform=Affine.rotation(90) @ Affine.scale(1, -1), height=2, width=3)
    left, bottom, right, top = rotated.bounds
    assert (left, right) == pytest.approx((0.0, 2.0)) and (bottom, top) == pytest.approx((0.0, 3.0))


def test_gsd_and_tolerant_comparison() -> None:
    grid = RasterGrid(crs=UTM, transform=ORIGIN, height=64, width=64)
    assert grid.gsd_m() == pytest.approx(0.5, rel=1e-6)
    nudged = RasterGrid(crs=UTM, transform=ORIGIN @ Affine.translation(0.001, 0), height=64, width=64)
    moved = RasterGrid(crs=UTM, transform=ORIGIN @ Affine.translation(0.5, 0), height=64, width=64)
    assert grid.same_as(nudged) and not grid.same_as(moved) and grid != nudged
    plain = RasterGrid(crs=None, transform=Affine.identity(), height=4, width=5)
    assert not plain.georeferenced
    with pytest.raises(ValueError, match="without a CRS"):
        plain.gsd_m()


def test_open_checked_names_the_file_the_problem_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match=r"^\S*gone\.tif: label not found; fix the path$"):
        open_checked(tmp_path / "gone.tif", what="label", missing="fix the path", unreadable="-")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(EmptyRasterError, match=r"empty\.tif: file is empty \(0 bytes\); re-download"):
        open_checked(tmp_path / "empty.tif", unreadable="-")
    (tmp_path / "notes.tif").write_text("not a raster")
    with pytest.raises(
        NotARasterError, match=r"notes\.tif: not a raster GDAL can read \(.+\); pass a GeoTIFF$"
    ):
        open_checked(tmp_path / "notes.tif", unreadable="pass a GeoTIFF")
    with pytest.raises(EvaluationInputError, match=r"notes\.tif: not a raster GDAL can read"):
        open_checked(tmp_path / "notes.tif", unreadable="-", error=EvaluationInputError)
    (tmp_path / "zero.vrt").write_text(
        '<VRTDataset rasterXSize="0" rasterYSize="0"><VRTRasterBand dataType="Byte" band="1"/></VRTDataset>'
    )
    with pytest.raises(EmptyRasterError, match=r"zero\.vrt: raster has zero size .*re-export it"):
        open_checked(tmp_path / "zero.vrt", unreadable="-")
    good = write_tif(tmp_path / "good.tif", np.zeros((4, 6), np.uint8))
    with open_checked(good, missing="-", unreadable="-") as ds:
        assert RasterGrid.of(ds).shape == (4, 6)
