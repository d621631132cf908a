"""Scratch rasters streamed top to bottom: whole block rows at a time, each block compressed once.

The stitcher hands rows over in bands that do not line up with a raster's blocks. Written as
they come, a block is filled in several writes, and GDAL compresses it whenever its block cache
lets it go: at every write when the cache is small, so the block is re-read and compressed
again each time (a 512-row block 8 times in 64-row bands), and the file keeps every stale copy.
With a cache large enough to hold the blocks instead, it fills with them (tens of MB more RSS).

:class:`RowBlocks` avoids both: it copies rows into a buffer one row of blocks tall, the
sink writes each row of blocks whole, and then :func:`release_blocks` writes GDAL's dirty
blocks out and empties its cache. Scratch blocks are as tall as :func:`scratch_block_rows`
allows, so the rows held stay near ``SCRATCH_BLOCK_PX`` pixels whatever the width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.core.raster import RasterGrid
from pipeline.io.gdal_env import cache_size

#: Creation options of the scratch rasters (the streamed probabilities, mask, seeds and
#: regions), which live only until their COG or the vectorizer has read them: ZSTD level 1
#: writes in a third of deflate's CPU time for about 7 % more bytes. Published COGs stay deflate.
SCRATCH_COMPRESSION = {"compress": "zstd", "zstd_level": 1}

#: Pixels in one row of blocks of a scratch raster (about: its height is a power of two).
SCRATCH_BLOCK_PX = 1 << 21
#: Width of a scratch raster's blocks.
SCRATCH_BLOCK_COLS = 512


def scratch_block_rows(width: int) -> int:
    """Block height of a scratch raster ``width`` pixels wide: a power of two from 16 to 512
    rows, so that a row of blocks holds at most about :data:`SCRATCH_BLOCK_PX` pixels (256
    rows at 8192 px, 128 at 16384). Shorter blocks cost the COG conversion CPU (512 x 128 blocks
    about 15 % more than 512 x 512 at 8192²)."""
    rows = 512
    while rows > 16 and rows * width > SCRATCH_BLOCK_PX:
        rows //= 2
    return rows


def release_blocks() -> None:
    """Write GDAL's dirty blocks to their files and empty its block cache (the whole process's):
    a one-byte cache evicts every block."""
    with cache_size(1):
        pass


def scratch_profile(
    grid: RasterGrid, *, dtype: str, count: int = 1, nodata: float | None = None
) -> dict[str, Any]:
    """Creation options of a scratch GeoTIFF on ``grid``: tiled in blocks of
    :data:`SCRATCH_BLOCK_COLS` x :func:`scratch_block_rows`, with :data:`SCRATCH_COMPRESSION`."""
    return {
        "driver": "GTiff", "dtype": dtype, "count": count, "height": grid.height, "width": grid.width,
        "crs": grid.crs, "transform": grid.transform, "nodata": nodata, "tiled": True,
        "blockxsize": SCRATCH_BLOCK_COLS, "blockysize": scratch_block_rows(grid.width),
        "BIGTIFF": "IF_SAFER", **SCRATCH_COMPRESSION,
    }  # fmt: skip


#: Receives ``(row_off, arrays)``: whole block rows, in views of buffers that are reused.
BlockWriter = Callable[[int, tuple[NDArray[Any], ...]], None]


@dataclass
class RowBlocks:
    """Row bands in; whole block rows out, to ``write`` (the last block row ends at ``height``),
    each followed by :func:`release_blocks`, so no written block waits in GDAL's cache.

    Every array handed to :meth:`add` has rows on its second-to-last axis. Rows are copied into
    one block row of buffers per array, allocated at the first hand-over, so the memory held is
    one block row whatever the hand-overs' heights.
    """

    height: int
    block_rows: int
    write: BlockWriter
    _row_off: int = 0  # the top of the block row being filled
    _rows: int = 0  # rows of it filled
    _buffers: tuple[NDArray[Any], ...] = ()

    @classmethod
    def of(cls, grid: RasterGrid, write: BlockWriter) -> RowBlocks:
        """Whole block rows of a scratch raster on ``grid`` (:func:`scratch_profile`)."""
        return cls(height=grid.height, block_rows=scratch_block_rows(grid.width), write=write)

    def add(self, row_off: int, *arrays: NDArray[Any]) -> None:
        """Copy ``arrays`` (rows from ``row_off``, which must follow the rows handed over
        before) into the block row; hand each block row to ``write`` as it fills."""
        if row_off != self._row_off + self._rows:
            raise ValueError(f"rows from {row_off} handed over after rows up to {self._row_off + self._rows}")
        if not self._buffers:
            self._buffers = tuple(
                np.empty((*a.shape[:-2], self.block_rows, a.shape[-1]), a.dtype) for a in arrays
            )
        n, i = arrays[0].shape[-2], 0
        while i < n:
            full = min(self.block_rows, self.height - self._row_off)
            take = min(full - self._rows, n - i)
            for buffer, a in zip(self._buffers, arrays, strict=True):
                buffer[..., self._rows : self._rows + take, :] = a[..., i : i + take, :]
            self._rows, i = self._rows + take, i + take
            if self._rows == full:
                self.write(self._row_off, tuple(b[..., :full, :] for b in self._buffers))
                release_blocks()
                self._row_off, self._rows = self._row_off + full, 0
