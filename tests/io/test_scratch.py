"""Scratch rasters: row bands regrouped into whole block rows, GDAL's cache released after each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.env import get_gdal_config
from rasterio.windows import Window

from pipeline.io.scratch import SCRATCH_BLOCK_PX, RowBlocks, release_blocks, scratch_block_rows


def test_block_rows_shrink_with_the_width() -> None:
    assert [scratch_block_rows(w) for w in (100, 4096, 8192, 16384, 50_000, 10**7)] == [
        512,
        512,
        256,
        128,
        32,
        16,
    ]
    for width in (3000, 8192, 20_000, 65_536):
        rows = scratch_block_rows(width)
        assert rows * width <= SCRATCH_BLOCK_PX and (rows == 512 or 2 * rows * width > SCRATCH_BLOCK_PX)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 300),
    block_rows=st.sampled_from([16, 32, 64]),
    bands=st.lists(st.integers(1, 80), min_size=1, max_size=30),
)
def test_block_rows_come_out_whole_and_rebuild_the_raster(
    height: int, block_rows: int, bands: list[int]
) -> None:
    """Hand-overs of any heights (shorter or taller than a block row) come out as whole block
    rows in order (the last ends at the raster's bottom) that put every array back together."""
    raster = np.arange(2 * height * 5, dtype=np.int64).reshape(2, height, 5)
    flags = raster[0] % 3 == 0
    out: list[tuple[int, np.ndarray, np.ndarray]] = []

    def write(row_off: int, arrays: tuple[np.ndarray, ...]) -> None:
        values, mask = arrays
        assert values.shape[1] == min(block_rows, height - row_off) and mask.shape == values.shape[1:]
        out.append((row_off, values.copy(), mask.copy()))  # the buffers are reused

    blocks, r0 = RowBlocks(height=height, block_rows=block_rows, write=write), 0
    for h in bands:
        r1 = min(height, r0 + h)
        blocks.add(r0, raster[:, r0:r1], flags[r0:r1])
        r0 = r1
        if r0 == height:
            break
    assert [o for o, _, _ in out] == list(
        range(0, r0 - r0 % block_rows if r0 < height else height, block_rows)
    )
    if out:
        n = sum(v.shape[1] for _, v, _ in out)
        np.testing.assert_array_equal(np.concatenate([v for _, v, _ in out], axis=1), raster[:, :n])
        np.testing.assert_array_equal(np.concatenate([m for _, _, m in out], axis=0), flags[:n])


def test_rows_must_follow_each_other() -> None:
    blocks = RowBlocks(height=100, block_rows=16, write=lambda row_off, arrays: None)
    blocks.add(0, np.zeros((10, 4)))
    with pytest.raises(ValueError, match="rows from 12 handed over after rows up to 10"):
        blocks.add(12, np.zeros((4, 4)))


def test_released_blocks_are_in_the_file(tmp_path: Path) -> None:
    """Blocks written to a raster that stays open wait in GDAL's cache (a pixel-interleaved
    raster with two bands, as the probabilities' scratch); :func:`release_blocks` writes them out."""
    path = tmp_path / "s.tif"
    profile = dict(
        driver="GTiff", dtype="uint8", count=2, height=256, width=256, tiled=True, blockxsize=128,
        blockysize=128, compress="zstd",
    )  # fmt: skip
    noise = np.random.default_rng(0).integers(0, 255, (128, 256), dtype=np.uint8)  # incompressible
    with rasterio.open(path, "w", **profile) as ds:
        for band in (1, 2):
            ds.write(noise, band, window=Window(0, 0, 256, 128))
        before = path.stat().st_size
        release_blocks()
        after = path.stat().st_size
        for band in (1, 2):
            ds.write(noise, band, window=Window(0, 128, 256, 128))
    assert after - before >= 2 * noise.size, (before, after)
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(1), np.concatenate([noise, noise]))


def test_release_keeps_the_cache_size_inside_an_environment(tmp_path: Path) -> None:
    """An open dataset's ``with`` block is a rasterio environment: leaving a nested
    ``rasterio.Env(GDAL_CACHEMAX=1)`` there left the whole process with a one-byte cache."""
    profile = dict(driver="GTiff", dtype="uint8", count=1, height=32, width=32)
    size = get_gdal_config("GDAL_CACHEMAX")
    with rasterio.open(tmp_path / "s.tif", "w", **profile) as ds:
        ds.write(np.zeros((32, 32), np.uint8), 1)
        release_blocks()
        assert get_gdal_config("GDAL_CACHEMAX") == size
    assert get_gdal_config("GDAL_CACHEMAX") == size > 1
