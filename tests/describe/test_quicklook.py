"""Quicklook: a decimated read of the imagery, footprints drawn in their confidence colour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine

from pipeline.describe.quicklook import (
    NODATA_RGB,
    RAMP,
    crop_view,
    overview_view,
    png_bytes,
    ramp_colour,
    render,
)
from pipeline.io.read import open_raster
from pipeline.vectorize.buildings import Buildings
from tests.conftest import ORIGIN, UTM_CRS, coordinate_image, write_tif


def buildings(boxes: list[tuple[int, int, int, int]], confidence: list[float]) -> Buildings:
    """Buildings from pixel boxes ``(col0, row0, col1, row1)`` on the test grid ORIGIN."""
    geoms = [shapely.box(*(ORIGIN @ (c0, r1)), *(ORIGIN @ (c1, r0))) for c0, r0, c1, r1 in boxes]
    n = len(geoms)
    return Buildings(
        geometry=np.array(geoms, dtype=object), id=np.array([f"b{i}" for i in range(n)]),
        area_m2=np.array([g.area for g in geoms]), confidence=np.array(confidence, dtype=np.float64),
        crs=rasterio.crs.CRS.from_user_input(UTM_CRS), keep=np.arange(n),
    )  # fmt: skip


def test_overview_fits_the_long_side_and_never_enlarges() -> None:
    assert (overview_view(200_000, 100_000).height, overview_view(200_000, 100_000).width) == (2048, 1024)
    small = overview_view(300, 500)
    assert (small.height, small.width, small.cols, small.rows) == (300, 500, 500, 300)
    assert max(overview_view(5000, 4000, max_side=1000).height, 0) == 1000


def test_crop_is_centred_on_the_densest_buildings() -> None:
    many = buildings(
        [(900 + i * 5, 100, 903 + i * 5, 103) for i in range(10)] + [(10, 900, 20, 910)], [0.9] * 11
    )
    view = crop_view(1000, 1000, transform=ORIGIN, buildings=many, side=200)
    assert (view.rows, view.cols, view.height) == (200, 200, 200)
    assert 800 <= view.col_off <= 900 and view.row_off <= 100 and view.col_off + 200 <= 1000
    empty = crop_view(1000, 600, transform=ORIGIN, buildings=buildings([], []), side=2000)
    assert (empty.row_off, empty.col_off, empty.rows, empty.cols) == (0, 0, 1000, 600)


def test_ramp_runs_from_red_to_green() -> None:
    assert ramp_colour(0.8, low=0.8) == RAMP[0] and ramp_colour(1.0, low=0.8) == RAMP[-1]
    assert ramp_colour(0.2, low=0.8) == RAMP[0]  # clipped


def test_render_draws_outlines_over_the_imagery_and_greys_nodata(tmp_path: Path) -> None:
    image = np.full((3, 200, 300), 100, np.uint8)
    image[:, :, 250:] = 0
    info = open_raster(write_tif(tmp_path / "s.tif", image, nodata=0))
    blds = buildings([(20, 20, 80, 60), (120, 100, 180, 160)], [0.8, 1.0])
    rgb = render(info, overview_view(200, 300), blds, low=0.8)
    assert rgb.shape == (200, 300, 3)
    assert tuple(rgb[100, 280]) == NODATA_RGB and tuple(rgb[5, 5]) == (100, 100, 100)
    assert tuple(rgb[40, 20]) == RAMP[0] and tuple(rgb[130, 180]) == RAMP[-1]  # on the outlines
    assert tuple(rgb[40, 50]) == (100, 100, 100)  # inside is not filled


def test_render_reads_overviews_in_bounded_memory(tmp_path: Path, monkeypatch: Any) -> None:
    """A 4096² scene rendered to 256 px: GDAL is asked for 256² pixels, never the whole raster."""
    path = write_tif(tmp_path / "big.tif", coordinate_image(4096, 4096), tiled=True, block=512)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([4, 16], rasterio.enums.Resampling.average)
    info = open_raster(path)
    shapes: list[tuple[int, ...]] = []
    real_read = rasterio.io.DatasetReader.read

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        data = real_read(self, *args, **kwargs)
        shapes.append(data.shape)
        return data

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    rgb = render(
        info, overview_view(4096, 4096, max_side=256), buildings([(0, 0, 4096, 4096)], [0.9]), low=0.8
    )
    assert rgb.shape == (256, 256, 3) and shapes == [(3, 256, 256)]


def test_png_is_deterministic() -> None:
    rgb = np.arange(3 * 40 * 50, dtype=np.uint8).reshape(40, 50, 3) % 251
    assert png_bytes(rgb) == png_bytes(rgb.copy()) and png_bytes(rgb)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("transform", [ORIGIN, Affine(0.5, 0.0, 600000.0, 0.0, 0.5, 3290000.0)])
def test_outlines_land_on_their_pixels_for_both_row_orders(tmp_path: Path, transform: Affine) -> None:
    image = np.full((3, 100, 100), 90, np.uint8)
    info = open_raster(write_tif(tmp_path / "s.tif", image, transform=transform))
    corner = [transform @ (30, 30), transform @ (60, 60)]
    (x0, y0), (x1, y1) = corner
    geom = shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    blds = Buildings(
        geometry=np.array([geom], dtype=object), id=np.array(["b"]), area_m2=np.array([1.0]),
        confidence=np.array([1.0]), crs=rasterio.crs.CRS.from_user_input(UTM_CRS), keep=np.arange(1),
    )  # fmt: skip
    rgb = render(info, overview_view(100, 100), blds, low=0.5, line=1)
    assert tuple(rgb[45, 30]) == RAMP[-1] and tuple(rgb[45, 45]) == (90, 90, 90)
