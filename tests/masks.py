"""Deterministic building masks for vectorization tests.

* :func:`feature_mask` and :func:`label_raster`: small rasters with every seam case
  (holes cut by a seam, rings, U/n shapes, diagonal contacts, tall snakes, nodata) placed
  on the band edges of several block sizes.
* :func:`building_mask`: buildings for post-processing tests (rectangles, L shapes,
  courtyards, rotated staircases, diagonal contacts) over the seams of several block sizes.
* :func:`write_big_mask`: a large tiled GeoTIFF of many small buildings, written strip by
  strip and never held whole in memory, with its exact building count and pixel total.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.windows import Window

NODATA = 255
SEAM_BLOCKS = (64, 100, 257)


def _seams(height: int, blocks: tuple[int, ...] = SEAM_BLOCKS) -> list[int]:
    rows = {k * b for b in blocks for k in range(1, height // b + 1)}
    return sorted(r for r in rows if 12 <= r <= height - 12)


def _paint_seam_features(a: NDArray[np.uint8], r: int, c: int) -> None:
    """Every seam case around seam row ``r`` (first row of the lower band), from column ``c``."""
    a[r - 3 : r + 4, c : c + 6] = 1  # rectangle across the seam
    a[r - 6 : r + 6, c + 8 : c + 20] = 1  # ring whose hole is cut by the seam
    a[r - 2 : r + 2, c + 11 : c + 17] = 0
    a[r - 8 : r + 2, c + 22 : c + 32] = 1  # ring around a hole that ends on the seam
    a[r - 6 : r, c + 24 : c + 30] = 0
    a[r - 1, c + 34] = 1  # diagonal contacts across the seam: two regions each
    a[r, c + 35] = 1
    a[r, c + 37] = 1
    a[r - 1, c + 38] = 1
    a[r - 5 : r + 1, c + 40 : c + 48] = 1  # U open downwards: two legs below join above
    a[r - 3 : r + 1, c + 42 : c + 46] = 0
    a[r - 1 : r + 5, c + 50 : c + 58] = 1  # n open upwards: two legs above join below
    a[r - 1 : r + 3, c + 52 : c + 56] = 0
    a[r - 4 : r + 4, c + 60 : c + 68] = 1  # pinched hole: hole touches itself diagonally at the seam
    a[r - 2 : r, c + 62 : c + 64] = 0
    a[r : r + 2, c + 64 : c + 66] = 0
    a[r - 4 : r + 4, c + 70 : c + 76] = 1  # shape split by nodata exactly at the seam
    a[r, c + 70 : c + 76] = NODATA


def feature_mask(height: int = 560, width: int = 640) -> NDArray[np.uint8]:
    """uint8 0/1 mask with nodata 255 and the seam cases of block sizes 64, 100 and 257."""
    a = np.zeros((height, width), np.uint8)
    for i, r in enumerate(_seams(height)):
        _paint_seam_features(a, r, 4 + (i % 3) * 80)
    snake_col = width - 60  # a snake over all bands: vertical runs joined alternately
    for j, x in enumerate(range(snake_col, width - 4, 6)):
        a[3 : height - 3, x : x + 3] = 1
        a[(3 if j % 2 else height - 6) : (6 if j % 2 else height - 3), x : x + 9] = 1
    a[3 : height - 3, snake_col - 20 : snake_col - 10] = 1  # a tall ring with a tall hole
    a[6 : height - 6, snake_col - 17 : snake_col - 13] = 0
    a[40:44, width - 120 : width - 70] = NODATA  # nodata strip
    a[height - 2 :, :] = 1  # the last rows and the corners
    a[:2, :3] = 1
    a[:, width - 1] = 1
    rng = np.random.default_rng(7)  # random speckle across several seams
    speckle = a[90 : min(290, height - 10), 250 : min(330, width - 70)]
    speckle[...] = rng.random(speckle.shape) < 0.55
    return a


def label_raster(height: int = 300, width: int = 320) -> NDArray[np.uint32]:
    """Instance labels: touching rectangles carry different values (some above 2**31)."""
    a = np.zeros((height, width), np.uint32)
    big = np.uint32(3_000_000_000)
    for i, r0 in enumerate(range(5, height - 20, 17)):
        for j, c0 in enumerate(range(2, width - 20, 23)):
            a[r0 : r0 + 17, c0 : c0 + 23] = (i * 31 + j * 7) % 5 + 1 + (big if (i + j) % 4 == 0 else 0)
    a[50:60, 40:50] = 9  # a block inside another region (a hole in it)
    a[99:101, 99:101] = 0
    a[128:129, :] = 0  # a background row under a seam
    a[200, 10], a[201, 11] = 77, 77  # same value touching diagonally: two regions
    return a


RECT, L_SHAPE, COURTYARD, ROTATED, CORNERS = range(5)


def _paint_rotated(a: NDArray[np.uint8], cy: float, cx: float, half: tuple[float, float], deg: float) -> None:
    """Pixels whose centres lie in a rectangle centred on (cy, cx), turned by ``deg``."""
    reach = int(np.ceil(np.hypot(*half))) + 1
    r0, c0 = max(0, int(cy) - reach), max(0, int(cx) - reach)
    rr, cc = np.ogrid[r0 : min(a.shape[0], int(cy) + reach), c0 : min(a.shape[1], int(cx) + reach)]
    y, x = rr + 0.5 - cy, cc + 0.5 - cx
    t = np.radians(deg)
    u, v = x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)
    a[r0 : r0 + rr.shape[0], c0 : c0 + cc.shape[1]] |= (
        (np.abs(u) <= half[0]) & (np.abs(v) <= half[1])
    ).astype(np.uint8)


def paint_building(a: NDArray[np.uint8], kind: int, r: int, c: int, h: int, w: int, deg: float = 0.0) -> None:
    """Paint one building of ``kind`` with the box ``h x w`` at (r, c) into ``a`` (clipped).

    RECT; L_SHAPE (top-right quarter cut); COURTYARD (a hole 4 px from the walls);
    ROTATED (an ``h x 2w/3`` rectangle about the box centre turned by ``deg``: staircase
    walls); CORNERS (two quarters of the box touching at one corner: two buildings).
    """
    if kind == ROTATED:
        _paint_rotated(a, r + h / 2.0, c + w / 2.0, (h / 2.0, w / 3.0), deg)
        return
    if kind == CORNERS:
        a[r : r + h // 2, c : c + w // 2] = 1
        a[r + h // 2 : r + h, c + w // 2 : c + w] = 1
        return
    a[r : r + h, c : c + w] = 1
    if kind == L_SHAPE:
        a[r : r + h // 2, c + w // 2 : c + w] = 0
    elif kind == COURTYARD:
        a[r + 4 : r + h - 4, c + 4 : c + w - 4] = 0


def building_mask(height: int = 900, width: int = 700, *, seed: int = 12) -> NDArray[np.uint8]:
    """uint8 0/1 mask: one building per 56 px cell, cycling through the kinds of
    :func:`paint_building`, at random offsets and sizes, so that many cross a seam."""
    a = np.zeros((height, width), np.uint8)
    rng = np.random.default_rng(seed)
    for i, r0 in enumerate(range(4, height - 56, 56)):
        for j, c0 in enumerate(range(4, width - 56, 56)):
            r, c = r0 + int(rng.integers(0, 10)), c0 + int(rng.integers(0, 10))
            h, w = (int(v) for v in rng.integers(14, 42, 2))
            paint_building(a, (i * 3 + j) % 5, r, c, h, w, float(rng.uniform(5, 85)))
    return a


# --------------------------------------------------------------------------- big mask


@dataclass(frozen=True)
class CellPlan:
    """One building (or none) per ``cell x cell`` square: rectangle, L shape or courtyard.

    Plus tall 2-pixel-wide towers (``towers``: rows ``[top, bottom)`` at column ``col``) in
    the empty last columns of some cells, each crossing several bands.
    """

    cell: int
    present: NDArray[np.bool_]
    y0: NDArray[np.int16]
    x0: NDArray[np.int16]
    h: NDArray[np.int16]
    w: NDArray[np.int16]
    kind: NDArray[np.int8]
    towers: NDArray[np.int64]  # (n, 3): top, bottom, col

    @property
    def buildings(self) -> int:
        return int(self.present.sum()) + len(self.towers)

    @property
    def pixels(self) -> int:
        return int(self.expected()[2].sum())

    def expected(self) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """First row, first column and pixel count of every building, in raster scan order."""
        cr, cc = np.nonzero(self.present)  # row-major: scan order of the cells
        rows = cr * self.cell + self.y0[cr, cc]
        cols = cc * self.cell + self.x0[cr, cc]
        h, w, kind = self.h[cr, cc].astype(np.int64), self.w[cr, cc].astype(np.int64), self.kind[cr, cc]
        area = h * w - np.where(kind == 1, (h // 2) * (w - w // 2), 0)
        area -= np.where(kind == 2, (h - 4) * (w - 4), 0)
        top, bottom, col = self.towers.T
        rows = np.concatenate([rows.astype(np.int64), top])
        cols = np.concatenate([cols.astype(np.int64), col])
        area = np.concatenate([area, 2 * (bottom - top)])
        order = np.lexsort((cols, rows))
        return rows[order], cols[order], area[order]


def cell_plan(size: int, *, cell: int = 50, seed: int = 0, density: float = 0.8) -> CellPlan:
    n = -(-size // cell)
    rng = np.random.default_rng(seed)
    span = cell - 12  # y0 + h <= cell - 2: neighbours never touch
    y0, x0 = rng.integers(1, 10, (2, n, n)).astype(np.int16)
    h, w = rng.integers(3, span + 1, (2, n, n)).astype(np.int16)
    kind = rng.integers(0, 3, (n, n)).astype(np.int8)
    kind[(kind == 2) & ((h < 5) | (w < 5))] = 0
    last = size - (n - 1) * cell  # keep the last row/column of cells inside the raster
    present = rng.random((n, n)) < density
    present[-1, :] &= y0[-1, :] + h[-1, :] <= last
    present[:, -1] &= x0[:, -1] + w[:, -1] <= last
    k = np.arange(3, n - 1, 9)  # columns cell - 2 and cell - 1 of a cell are always empty
    top = 100 + (k * 37) % max(1, size - 6000)
    towers = np.column_stack([top, np.minimum(top + 2500 + (k * 13) % 2000, size), k * cell + cell - 2])
    return CellPlan(cell, present, y0, x0, h, w, kind, towers.astype(np.int64).reshape(-1, 3))


def cell_row_strip(plan: CellPlan, cr: int, width: int) -> NDArray[np.uint8]:
    """The ``cell`` rows of cell row ``cr`` as a uint8 mask (vectorized)."""
    cell = plan.cell
    cols = np.arange(width) // cell
    lc = (np.arange(width) % cell)[None, :]
    lr = np.arange(cell)[:, None]
    y0, x0, h, w = (p[cr, cols][None, :].astype(np.int32) for p in (plan.y0, plan.x0, plan.h, plan.w))
    kind, present = plan.kind[cr, cols][None, :], plan.present[cr, cols][None, :]
    inside = present & (lr >= y0) & (lr < y0 + h) & (lc >= x0) & (lc < x0 + w)
    cut = (kind == 1) & (lr < y0 + h // 2) & (lc >= x0 + w // 2)
    hole = (kind == 2) & (lr >= y0 + 2) & (lr < y0 + h - 2) & (lc >= x0 + 2) & (lc < x0 + w - 2)
    out: NDArray[np.uint8] = np.asarray(inside & ~cut & ~hole, dtype=np.uint8)
    for top, bottom, col in plan.towers.tolist():
        lo, hi = max(top, cr * cell), min(bottom, (cr + 1) * cell)
        if lo < hi:
            out[lo - cr * cell : hi - cr * cell, col : col + 2] = 1
    return out


def mask_rows(plan: CellPlan, row_off: int, nrows: int, width: int) -> NDArray[np.uint8]:
    out = np.empty((nrows, width), np.uint8)
    cell = plan.cell
    for cr in range(row_off // cell, (row_off + nrows - 1) // cell + 1):
        strip = cell_row_strip(plan, cr, width)
        lo, hi = max(row_off, cr * cell), min(row_off + nrows, (cr + 1) * cell)
        out[lo - row_off : hi - row_off] = strip[lo - cr * cell : hi - cr * cell]
    return out


def write_big_mask(
    path: Path, *, size: int = 20_000, cell: int = 50, seed: int = 0, rows_per_write: int = 512
) -> CellPlan:
    """A ``size x size`` uint8 0/1 mask (nodata 255, tiled, deflate), written strip by strip."""
    plan = cell_plan(size, cell=cell, seed=seed)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": size,
        "width": size,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32614",
        "transform": Affine(0.3, 0.0, 600000.0, 0.0, -0.3, 3300000.0),
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "zlevel": 1,
        "num_threads": 2,
    }
    with rasterio.open(path, "w", **profile) as ds:
        for row_off in range(0, size, rows_per_write):
            n = min(rows_per_write, size - row_off)
            ds.write(mask_rows(plan, row_off, n, size), 1, window=Window(0, row_off, size, n))
    return plan
