from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from pipeline.core.errors import (
    BandMappingError,
    EmptyRasterError,
    FootprintsError,
    InputNotFoundError,
    MissingCRSError,
    NotARasterError,
)
from pipeline.io.read import STATS_MAX_SIDE, open_raster, read_tile
from pipeline.tiling.grid import TileGrid
from tests.conftest import coordinate_image


def test_rgb_uint8_reads_exact_windows(make_tif: Any) -> None:
    image = coordinate_image(300, 400)
    info = open_raster(make_tif(image))
    assert info.bands == (1, 2, 3) and info.scaling == ()
    for tile in TileGrid(height=300, width=400, tile_size=128, overlap=16):
        px, valid = read_tile(info, tile)
        np.testing.assert_array_equal(px, image[:, tile.row_off : tile.row_end, tile.col_off : tile.col_end])
        assert valid.all()


def test_single_band_is_replicated(make_tif: Any) -> None:
    image = coordinate_image(64, 80, bands=1)
    info = open_raster(make_tif(image))
    assert info.bands == (1, 1, 1)
    tile = next(iter(TileGrid(height=64, width=80, tile_size=64, overlap=0)))
    px, _ = read_tile(info, tile)
    assert np.array_equal(px[0], px[1]) and np.array_equal(px[0], image[0, :, :64])


def test_multiband_uses_configured_bands(make_tif: Any) -> None:
    image = coordinate_image(64, 64, bands=5)
    image[3] = 200
    info = open_raster(make_tif(image), bands=(4, 2, 1))
    tile = next(iter(TileGrid(height=64, width=64, tile_size=64, overlap=0)))
    px, _ = read_tile(info, tile)
    assert (px[0] == 200).all() and np.array_equal(px[1], image[1]) and np.array_equal(px[2], image[0])


def test_uint16_is_scaled_by_percentiles_of_a_decimated_read(make_tif: Any, monkeypatch: Any) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(1000, 3000, size=(3, 2500, 300)).astype(np.uint16)
    path = make_tif(image)
    shapes: list[Any] = []
    original = rasterio.io.DatasetReader.read

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        shapes.append(kwargs.get("out_shape"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    info = open_raster(path)
    assert shapes and all(s is not None and max(s[1:]) <= STATS_MAX_SIDE for s in shapes)
    lo, hi = info.scaling[0].low, info.scaling[0].high
    assert 1000 <= lo < 1100 and 2900 < hi <= 3000
    tile = next(iter(TileGrid(height=2500, width=300, tile_size=256, overlap=0)))
    px, _ = read_tile(info, tile)
    assert px.dtype == np.uint8 and px.min() == 0 and px.max() == 255


def test_float_input_with_nan_nodata(make_tif: Any) -> None:
    image = np.linspace(0, 1, 3 * 100 * 100, dtype=np.float32).reshape(3, 100, 100)
    image[:, :10] = np.nan
    info = open_raster(make_tif(image, nodata=float("nan")))
    tile = next(iter(TileGrid(height=100, width=100, tile_size=100, overlap=0)))
    px, valid = read_tile(info, tile)
    assert not valid[:10].any() and valid[10:].all()
    assert (px[:, :10] == 0).all()


def _non_finite_strips(image: np.ndarray) -> np.ndarray:
    image[:, 10:20] = np.nan  # every band
    image[0, 30:40] = np.inf  # one band only
    image[2, 50:55] = -np.inf
    return image


@pytest.mark.parametrize("nodata", [None, -9999.0, "override"])
def test_non_finite_floats_are_nodata_whatever_is_declared(make_tif: Any, nodata: Any) -> None:
    """NaN and ±inf are nodata: with no nodata tag, another tag, or a config override."""
    image = np.linspace(0, 1, 3 * 100 * 100, dtype=np.float32).reshape(3, 100, 100)
    image[:, :, 90:] = -9999.0  # the declared nodata value, in columns 90-99
    image = _non_finite_strips(image)
    path = make_tif(image, nodata=None if nodata is None else -9999.0)
    info = open_raster(path, nodata=-9999.0 if nodata == "override" else None)
    tile = next(iter(TileGrid(height=100, width=100, tile_size=100, overlap=0)))
    px, valid = read_tile(info, tile)
    for rows in (slice(10, 20), slice(30, 40), slice(50, 55)):
        assert not valid[rows].any() and (px[:, rows] == 0).all()
    finite = np.ones(100, bool)
    finite[10:20] = finite[30:40] = finite[50:55] = False
    assert valid[finite][:, :90].all()
    assert valid[finite][:, 90:].all() == (nodata is None)


def test_non_finite_floats_do_not_poison_the_percentiles(make_tif: Any) -> None:
    rng = np.random.default_rng(1)
    image = _non_finite_strips(rng.uniform(1000, 3000, size=(3, 2100, 300)).astype(np.float32))
    image[:, 1000:1400] = np.inf  # a wide strip, also in the decimated read
    info = open_raster(make_tif(image))
    for s in info.scaling:
        assert np.isfinite([s.low, s.high]).all()
        assert 1000 <= s.low < 1100 and 2900 < s.high <= 3000


def test_nodata_from_mask_band(tmp_path: Path) -> None:
    image = coordinate_image(64, 64)
    path = tmp_path / "masked.tif"
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(
            path, "w", driver="GTiff", height=64, width=64, count=3, dtype="uint8",
            crs="EPSG:32614", transform=rasterio.transform.from_origin(0, 64, 1, 1),
        ) as ds,
    ):  # fmt: skip
        ds.write(image)
        mask = np.full((64, 64), 255, np.uint8)
        mask[:, 40:] = 0
        ds.write_mask(mask)
    info = open_raster(path)
    tile = next(iter(TileGrid(height=64, width=64, tile_size=64, overlap=0)))
    _, valid = read_tile(info, tile)
    assert valid[:, :40].all() and not valid[:, 40:].any()


def test_block_shape_is_recorded(make_tif: Any) -> None:
    info = open_raster(make_tif(coordinate_image(512, 512), tiled=True, block=128))
    assert info.block_shape == (128, 128)
    assert open_raster(make_tif(coordinate_image(64, 64))).block_shape is None


def assert_one_line(exc: FootprintsError, path: Path) -> None:
    msg = str(exc)
    assert "\n" not in msg and str(path) in msg and ";" in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError) as e:
        open_raster(tmp_path / "nope.tif")
    assert_one_line(e.value, tmp_path / "nope.tif")
    assert isinstance(e.value, FileNotFoundError)


def test_not_a_raster(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("hello, not a GeoTIFF\n")
    with pytest.raises(NotARasterError) as e:
        open_raster(path)
    assert_one_line(e.value, path)
    assert isinstance(e.value, OSError)


def test_missing_crs(make_tif: Any, tmp_path: Path) -> None:
    path = make_tif(coordinate_image(32, 32), crs=None)
    with pytest.raises(MissingCRSError) as e:
        open_raster(path)
    assert_one_line(e.value, path)


@pytest.mark.parametrize("kind", ["empty-file", "zero-dimensions"])
def test_zero_size(tmp_path: Path, kind: str) -> None:
    if kind == "empty-file":
        path = tmp_path / "empty.tif"
        path.write_bytes(b"")
    else:
        path = tmp_path / "zero.vrt"
        path.write_text(
            '<VRTDataset rasterXSize="0" rasterYSize="0"><SRS>EPSG:32614</SRS>'
            '<VRTRasterBand dataType="Byte" band="1"/></VRTDataset>'
        )
    with pytest.raises(EmptyRasterError) as e:
        open_raster(path)
    assert_one_line(e.value, path)


@pytest.mark.parametrize(("count", "bands"), [(2, None), (3, (1, 2, 4)), (4, (1, 2))])
def test_unmappable_bands(make_tif: Any, count: int, bands: Any) -> None:
    path = make_tif(coordinate_image(16, 16, bands=count))
    with pytest.raises(BandMappingError) as e:
        open_raster(path, bands=bands)
    assert_one_line(e.value, path)


def test_windowed_reads_only(make_tif: Any, monkeypatch: Any) -> None:
    """read_tile never reads more than its window."""
    info = open_raster(make_tif(coordinate_image(500, 500)))
    seen: list[Any] = []
    original = rasterio.io.DatasetReader.read

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("window"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    for tile in TileGrid(height=500, width=500, tile_size=128, overlap=16):
        read_tile(info, tile)
    assert seen and all(isinstance(w, Window) and w.height <= 128 and w.width <= 128 for w in seen)


@pytest.mark.parametrize("degrees", [0.0, 30.0, 90.0, 145.0])
def test_a_rotated_grid_has_the_size_of_its_pixels(make_tif: Any, degrees: float) -> None:
    """Not |a| x |e| of the transform, which is off by cos(theta) once the grid is rotated."""
    from affine import Affine

    transform = Affine.translation(600000.0, 3300000.0) * Affine.rotation(degrees) * Affine.scale(0.5, -0.5)
    info = open_raster(make_tif(coordinate_image(32, 32), transform=transform))
    assert info.grid.gsd_m() == pytest.approx(0.5, rel=1e-6)


def test_a_sheared_grid_is_refused(make_tif: Any) -> None:
    from affine import Affine

    from pipeline.core.errors import GeoreferenceError

    path = make_tif(coordinate_image(32, 32), transform=Affine(0.5, 0.05, 600000.0, 0.0, -0.5, 3300000.0))
    with pytest.raises(GeoreferenceError) as e:
        open_raster(path)
    assert_one_line(e.value, path)
    assert isinstance(e.value, ValueError) and "gdalwarp" in str(e.value)
