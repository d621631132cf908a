"""The streamed COG sink: rows handed over in small bands become exact COGs, each block written once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from pipeline.core.raster import RasterGrid
from pipeline.io.write import CogSink
from pipeline.tiling.stitch import MASK_NODATA

GRID = RasterGrid(
    crs=CRS.from_epsg(32633), transform=Affine(0.3, 0, 500000, 0, -0.3, 4000000), height=1100, width=1536
)


def _rasters(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth probabilities (they compress, as real ones do), their mask, and a nodata corner."""
    rows, cols = np.mgrid[0 : GRID.height, 0 : GRID.width]
    building = (127 + 127 * np.sin(rows / 37.0) * np.cos(cols / 53.0)).astype(np.uint8)
    boundary = (np.abs(np.sin((rows + cols) / 29.0)) * 200).astype(np.uint8)
    valid = ~((rows > 900) & (cols < 300))
    return np.stack([building, boundary]), (building >= 128).astype(np.uint8), valid


def _stream(workdir: Path, rows: int) -> CogSink:
    probability, mask, valid = _rasters()
    sink = CogSink(workdir=workdir, grid=GRID, channels=2)
    for r0 in range(0, GRID.height, rows):
        r1 = min(GRID.height, r0 + rows)
        sink.write_rows(row_off=r0, probability=probability[:, r0:r1], mask=mask[r0:r1], valid=valid[r0:r1])
    return sink


def test_small_hand_overs_make_exact_cogs(tmp_path: Path) -> None:
    probability, mask, valid = _rasters()
    prob_path, mask_path = _stream(tmp_path, rows=24).finish()
    with rasterio.open(prob_path) as ds:
        assert ds.driver == "GTiff" and ds.count == 2 and ds.overviews(1)
        np.testing.assert_array_equal(ds.read(), np.where(valid, probability, 0))
        np.testing.assert_array_equal(ds.read_masks(1) > 0, valid)
    with rasterio.open(mask_path) as ds:
        np.testing.assert_array_equal(ds.read(1), np.where(valid, mask, MASK_NODATA))
    assert not list(tmp_path.glob("*.scratch.tif"))


def test_each_scratch_block_is_written_once(tmp_path: Path) -> None:
    """Rows handed over 24 at a time fill each 512-row block in 22 writes; the scratch must not
    hold a compressed copy of every partial state (it did while each write changed GDAL's cache
    size: 8 times the bytes and the CPU at 64-row hand-overs)."""
    sizes = {}
    for rows in (24, GRID.height):
        (tmp_path / str(rows)).mkdir()
        sink = _stream(tmp_path / str(rows), rows=rows)
        sink.close()
        sizes[rows] = sum(p.stat().st_size for p in (tmp_path / str(rows)).glob("*.scratch.tif"))
    assert sizes[24] <= 1.05 * sizes[GRID.height], sizes
