from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from pipeline.tiling.grid import TileGrid, blend_profile, lattice_step, tile_weights


@pytest.mark.parametrize("shape", [(1000, 1000), (513, 1537), (100, 700), (37, 41), (2000, 3000)])
@pytest.mark.parametrize(("tile", "overlap"), [(128, 16), (256, 32), (384, 32), (512, 64)])
@pytest.mark.parametrize("lattice", [1.0, 16.0, 80 / 3, 80.0])
def test_tiles_cover_raster_and_stay_inside(
    shape: tuple[int, int], tile: int, overlap: int, lattice: float
) -> None:
    grid = TileGrid(height=shape[0], width=shape[1], tile_size=tile, overlap=overlap, lattice=lattice)
    cover = np.zeros(shape, dtype=np.int32)
    weight = np.zeros(shape, dtype=np.float64)
    on_lattice = {round(k * lattice) for k in range(0, 3001)}
    for t in grid:
        assert t.row_off >= 0 and t.row_end <= shape[0]
        assert t.col_off >= 0 and t.col_end <= shape[1]
        assert t.row_off in on_lattice and t.col_off in on_lattice
        for size, length, last in ((t.height, shape[0], t.bottom), (t.width, shape[1], t.right)):
            if length <= tile:
                assert size == length
            elif last:  # the last tile starts on the lattice and ends on the border
                assert tile - max(lattice, 1) < size <= tile
            else:
                assert size == tile
        cover[t.row_off : t.row_end, t.col_off : t.col_end] += 1
        weight[t.row_off : t.row_end, t.col_off : t.col_end] += tile_weights(t, overlap=grid.overlap)
    assert cover.min() >= 1
    # every pixel, border pixels included, ends up with a strictly positive total weight
    assert weight.min() > 0.05
    assert len(grid) == grid.shape[0] * grid.shape[1]


@pytest.mark.parametrize(
    ("scale", "stride", "step"),
    [(1.0, 16, 16.0), (0.6, 16, 80 / 3), (0.154, 16, 104.0), (2.0, 8, 4.0), (0.9852, 16, 16 / 0.9852)],
)
def test_lattice_step_is_one_output_stride_cell(scale: float, stride: int, step: float) -> None:
    assert lattice_step(scale, stride) == pytest.approx(step)
    assert step * scale == pytest.approx(stride, abs=0.02)


def test_lattice_offsets_stay_within_half_a_pixel_of_the_cells() -> None:
    step = lattice_step(0.6, 16)
    grid = TileGrid(height=8192, width=8192, tile_size=853, overlap=107, lattice=step)
    for off in grid.col_offsets:
        cells = off * 0.6 / 16
        assert abs(cells - round(cells)) * 16 <= 0.5 * 0.6 + 1e-9  # model px off the lattice
    assert grid.shape == (11, 11)  # stride 746 ≈ 28 cells (746.7 px): no extra tile


def test_demo_grid_starts_every_tile_on_the_model_lattice() -> None:
    # the demo scene: 1000 px at 0.3 m, model at 0.5 m (scale 0.6), tiles of 512 model px
    grid = TileGrid(height=1000, width=1000, tile_size=853, overlap=107, lattice=lattice_step(0.6, 16))
    assert grid.col_spans == [(0, 853), (160, 840)]  # 160 input px = 96 model px = 6 cells of 16
    unaligned = TileGrid(height=1000, width=1000, tile_size=853, overlap=107)
    assert unaligned.col_spans == [(0, 853), (147, 853)]  # 88.2 model px: off the lattice


def test_border_pixels_have_full_weight() -> None:
    grid = TileGrid(height=900, width=900, tile_size=256, overlap=32)
    weight = np.zeros((900, 900))
    for t in grid:
        weight[t.row_off : t.row_end, t.col_off : t.col_end] += tile_weights(t, overlap=32)
    assert weight[0, :].min() > 0 and weight[:, -1].min() > 0
    corner = next(iter(grid))
    w = tile_weights(corner, overlap=32)
    assert w[0, 0] == 1.0 and w[0, 100] == 1.0 and w[100, 0] == 1.0


def test_profile_zero_margin_then_smooth_ramp() -> None:
    p = blend_profile(128, overlap=32, taper_start=True, taper_end=True)
    assert np.all(p[:8] == 0) and np.all(p[-8:] == 0)
    assert np.all(np.diff(p[:64]) >= 0)
    assert p[64] == 1.0


def test_last_tile_is_shifted_to_the_border() -> None:
    grid = TileGrid(height=1000, width=600, tile_size=512, overlap=64)
    assert grid.row_offsets == [0, 448, 488]
    assert grid.col_offsets == [0, 88]


@pytest.mark.parametrize(("tile", "overlap"), [(8, 0), (256, 200), (256, -1)])
def test_bad_grid_parameters_are_rejected(tile: int, overlap: int) -> None:
    with pytest.raises(ConfigError, match="tile"):
        TileGrid(height=100, width=100, tile_size=tile, overlap=overlap)


def test_grid_aligns_to_blocks() -> None:
    grid = TileGrid.aligned(height=2000, width=2000, tile_size=512, overlap=40, block_shape=(64, 64))
    assert grid.stride == 448 and grid.overlap == 64
    assert all(o % 64 == 0 for o in grid.row_offsets[:-1])
    # aligning 853-px tiles to 512-px blocks would double the tiles: keep the overlap
    costly = TileGrid.aligned(height=4000, width=4000, tile_size=853, overlap=107, block_shape=(512, 512))
    assert costly.overlap == 107
    unaligned = TileGrid.aligned(height=2000, width=2000, tile_size=512, overlap=64, block_shape=None)
    assert unaligned.overlap == 64


def test_grid_is_immutable() -> None:
    grid = TileGrid(height=10, width=10, tile_size=16, overlap=0)
    with pytest.raises(AttributeError):
        grid.tile_size = 32  # type: ignore[misc]
