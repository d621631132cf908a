"""Tiling invariance: with a local operator for a model, stitching equals one pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from numpy.typing import NDArray

from pipeline.io.read import open_raster
from pipeline.run.dispatch import predict_batch
from pipeline.tiling.grid import TileGrid
from pipeline.tiling.stitch import Stitcher, flush_rows
from tests.conftest import coordinate_image
from tests.operators import Box3x3Source, box3x3


@dataclass
class MemorySink:
    height: int
    width: int
    probability: NDArray[np.uint8] = field(init=False)
    mask: NDArray[np.uint8] = field(init=False)
    valid: NDArray[np.bool_] = field(init=False)
    writes: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.probability = np.full((self.height, self.width), 77, np.uint8)
        self.mask = np.full((self.height, self.width), 77, np.uint8)
        self.valid = np.zeros((self.height, self.width), np.bool_)

    def write_rows(self, *, row_off: int, probability: Any, mask: Any, valid: Any) -> None:
        h = probability.shape[1]
        self.writes.append((row_off, h))
        self.probability[row_off : row_off + h] = probability[0]
        self.mask[row_off : row_off + h] = mask
        self.valid[row_off : row_off + h] = valid


def stitch_file(
    path: Path, *, tile: int, overlap: int, order: str = "row-major", lattice: float = 1.0
) -> tuple[MemorySink, Stitcher]:
    info = open_raster(path)
    height, width = info.grid.shape
    grid = TileGrid(height=height, width=width, tile_size=tile, overlap=overlap, lattice=lattice)
    sink = MemorySink(height, width)
    stitcher = Stitcher(grid=grid, sink=sink, threshold=0.5)
    tiles = list(grid)
    if order == "shuffled":
        rng = np.random.default_rng(0)
        tiles = [tiles[i] for i in rng.permutation(len(tiles))]
    for i in range(0, len(tiles), 3):
        batch = predict_batch(info, tiles[i : i + 3], Box3x3Source())
        for r in batch.results:
            stitcher.add(r.tile, r.probability, r.valid())
        for t in batch.skipped:
            stitcher.mark_done(t)
    assert stitcher.finished
    return sink, stitcher


@pytest.mark.parametrize("tile", [128, 256, 384])
@pytest.mark.parametrize("overlap", [16, 32])
@pytest.mark.parametrize("shape", [(700, 900), (257, 1031), (1000, 383)])
@pytest.mark.parametrize("lattice", [1.0, 80.0])
def test_stitched_equals_untiled(
    make_tif: Any, tile: int, overlap: int, shape: tuple[int, int], lattice: float
) -> None:
    image = coordinate_image(*shape)
    sink, _ = stitch_file(make_tif(image), tile=tile, overlap=overlap, lattice=lattice)
    expected = box3x3(image)
    np.testing.assert_array_equal(sink.probability, expected)
    np.testing.assert_array_equal(sink.mask, (expected >= 128).astype(np.uint8))
    assert sink.valid.all()


def test_float_accumulation_matches_to_rounding(make_tif: Any) -> None:
    image = coordinate_image(300, 500)
    info = open_raster(make_tif(image))
    grid = TileGrid(height=300, width=500, tile_size=128, overlap=32)
    sink = MemorySink(300, 500)
    stitcher = Stitcher(grid=grid, sink=sink)
    acc = np.zeros((300, 500))
    wsum = np.zeros((300, 500))
    from pipeline.tiling.grid import tile_weights

    batch = predict_batch(info, list(grid), Box3x3Source())
    for r in batch.results:
        w = tile_weights(r.tile, overlap=32)
        sl = np.s_[r.tile.row_off : r.tile.row_end, r.tile.col_off : r.tile.col_end]
        acc[sl] += w * r.probability[0]
        wsum[sl] += w
        stitcher.add(r.tile, r.probability, r.valid())
    np.testing.assert_allclose(acc / wsum, box3x3(image).astype(np.float64), rtol=0, atol=1e-4)


def test_out_of_order_tiles_give_the_same_result(make_tif: Any) -> None:
    path = make_tif(coordinate_image(600, 700))
    a, _ = stitch_file(path, tile=128, overlap=32)
    b, _ = stitch_file(path, tile=128, overlap=32, order="shuffled")
    np.testing.assert_array_equal(a.probability, b.probability)


def test_wide_rasters_reach_the_sinks_in_fewer_rows() -> None:
    assert flush_rows(300) == flush_rows(4096) == 128
    assert flush_rows(8192) == 64 and flush_rows(16384) == 32  # the same pixels per hand-over
    assert flush_rows(10**6) == 8


def test_a_wide_raster_is_stitched_exactly_in_short_hand_overs(make_tif: Any) -> None:
    image = coordinate_image(300, 9000)
    sink, _ = stitch_file(make_tif(image), tile=256, overlap=32)
    np.testing.assert_array_equal(sink.probability, box3x3(image))
    assert max(h for _, h in sink.writes) == flush_rows(9000) == 58


def test_memory_is_a_few_rows_of_tiles(make_tif: Any) -> None:
    path = make_tif(coordinate_image(2000, 300))
    sink, stitcher = stitch_file(path, tile=128, overlap=16)
    assert stitcher.peak_rows <= 3 * 128
    assert stitcher.held_bytes == 0  # the last row out, the accumulator is freed
    assert len(sink.writes) >= 10
    rows = sorted(sink.writes)
    assert rows[0][0] == 0 and sum(h for _, h in rows) == 2000


def test_nodata_margins_become_nodata_and_empty_tiles_are_skipped(make_tif: Any) -> None:
    image = coordinate_image(600, 600)
    image[:, :200, :] = 0
    image[:, :, 450:] = 0
    image[image == 0] = 0
    path = make_tif(image, nodata=0)
    info = open_raster(path)
    grid = TileGrid(height=600, width=600, tile_size=128, overlap=16)
    batch = predict_batch(info, list(grid), Box3x3Source())
    assert len(batch.skipped) > 0
    assert all(t.row_end <= 200 or t.col_off >= 450 for t in batch.skipped)
    sink, _ = stitch_file(path, tile=128, overlap=16)
    with rasterio.open(path) as ds:
        valid = ds.dataset_mask() > 0
    np.testing.assert_array_equal(sink.valid, valid)


def test_arrival_order_never_changes_a_byte() -> None:
    """Overlapping tiles that disagree (as a real model's do): any arrival order, same bytes.

    Float sums depend on their order; the stitcher blends in grid order whatever order the
    workers finish in, so two runs of one scene write identical files.
    """
    grid = TileGrid(height=700, width=900, tile_size=128, overlap=48)
    tiles = list(grid)
    rng = np.random.default_rng(3)
    predictions = {t.index: rng.integers(0, 256, (2, t.height, t.width), dtype=np.uint8) for t in tiles}
    skipped = {t.index for t in tiles[5::11]}

    def run(order: list[int]) -> MemorySink:
        sink = MemorySink(700, 900)
        stitcher = Stitcher(grid=grid, sink=sink, channels=2)
        for i in order:
            if i in skipped:
                stitcher.mark_done(tiles[i])
            else:
                stitcher.add(tiles[i], predictions[i], np.ones((tiles[i].height, tiles[i].width), bool))
        assert stitcher.finished
        return sink

    first = run(list(range(len(tiles))))
    for seed in range(4):
        other = run([int(i) for i in np.random.default_rng(seed).permutation(len(tiles))])
        np.testing.assert_array_equal(first.probability, other.probability)
        np.testing.assert_array_equal(first.valid, other.valid)
