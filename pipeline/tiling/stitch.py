"""Stitch overlapping tile predictions into a raster, streaming row bands out.

Each prediction is multiplied by its tile's smooth weight window
(:func:`pipeline.tiling.grid.tile_weights`) and accumulated together with the weights;
the output is the weighted sum divided by the summed weights. Rows are flushed to a
:class:`RowSink` as soon as no unfinished tile can touch them, so the accumulator
spans a few rows of tiles, never the raster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from pipeline.tiling.grid import Tile, TileGrid, tile_weights


class RowSink(Protocol):
    """Receives finished rows ``[row_off, row_off + height)`` of the stitched raster.

    ``probability`` is ``(K, height, width)`` uint8: channel 0 the building, channel 1
    (when the model has one) the building boundary. ``mask`` is channel 0 thresholded.
    """

    def write_rows(
        self,
        *,
        row_off: int,
        probability: NDArray[np.uint8],
        mask: NDArray[np.uint8],
        valid: NDArray[np.bool_],
    ) -> None: ...


#: A tile's uint8 probabilities and its validity, waiting for its turn to be blended.
_Prediction = tuple[NDArray[np.uint8], NDArray[np.bool_]]

#: Rows handed to the sinks at a time: bounds the transient arrays of a flush ...
FLUSH_ROWS = 128
#: ... and pixels: a raster wider than 4096 px is handed over in fewer rows at a time
#: (at least 8), so those arrays do not grow with the width.
FLUSH_PIXELS = FLUSH_ROWS * 4096


def flush_rows(width: int) -> int:
    """Rows per hand-over to the sinks for a raster ``width`` pixels wide."""
    return min(FLUSH_ROWS, max(8, FLUSH_PIXELS // max(width, 1)))


#: ``mask.tif``'s value where the input has no data (elsewhere 1 building, 0 background).
MASK_NODATA = 255


def threshold_u8(threshold: float) -> int:
    """The uint8 probability at or above which a pixel is a building."""
    return round(threshold * 255)


@dataclass
class TeeSink:
    """Hands the same rows to several sinks, in order."""

    sinks: tuple[RowSink, ...]

    def write_rows(
        self,
        *,
        row_off: int,
        probability: NDArray[np.uint8],
        mask: NDArray[np.uint8],
        valid: NDArray[np.bool_],
    ) -> None:
        for sink in self.sinks:
            sink.write_rows(row_off=row_off, probability=probability, mask=mask, valid=valid)


@dataclass
class ArraySink:
    """Keeps the stitched probabilities ``(channels, height, width)`` of a raster in memory
    (pixels no tile gave weight to stay 0): for rasters that fit, such as validation scenes."""

    height: int
    width: int
    channels: int = 1
    probability: NDArray[np.uint8] = field(init=False)

    def __post_init__(self) -> None:
        self.probability = np.zeros((self.channels, self.height, self.width), np.uint8)

    def write_rows(
        self,
        *,
        row_off: int,
        probability: NDArray[np.uint8],
        mask: NDArray[np.uint8],
        valid: NDArray[np.bool_],
    ) -> None:
        self.probability[:, row_off : row_off + probability.shape[1]] = probability


@dataclass
class Stitcher:
    """Weighted-average blending of tiles with row-band flushing.

    Tiles may arrive in any order; they are blended in grid order (``Tile.index``), so
    the float sums, and the output bytes, do not depend on which worker finished first.
    A tile that arrives early waits in ``_pending`` (its uint8 prediction only) until
    every tile before it has arrived; dispatch's backpressure bounds how many wait.
    The accumulator is allocated once, as tall as the tallest tile row, and reused: finished
    rows are shifted out in place, so it is never copied whole and never held twice.
    ``peak_rows`` records the tallest it ever grew, to prove the memory bound in tests.
    """

    grid: TileGrid
    sink: RowSink
    threshold: float = 0.5
    channels: int = 1
    _start: int = 0
    _acc: NDArray[np.float32] = field(init=False, repr=False)
    _wsum: NDArray[np.float32] = field(init=False, repr=False)
    _valid: NDArray[np.bool_] = field(init=False, repr=False)
    _next_index: int = 0
    _rows: int = 0  # rows of the accumulator in use, from ``_start``; those below are all zero
    peak_rows: int = 0

    def __post_init__(self) -> None:
        self._acc = np.zeros((self.channels, 0, self.grid.width), np.float32)
        self._wsum = np.zeros((0, self.grid.width), np.float32)
        self._valid = np.zeros((0, self.grid.width), np.bool_)
        self._row_offsets = self.grid.row_offsets  # computed once: a property builds the list
        self._tiles_per_row = len(self.grid.col_offsets)
        self._weights: dict[tuple[int, int, bool, bool, bool, bool], NDArray[np.float32]] = {}
        self._pending: dict[int, tuple[Tile, _Prediction | None]] = {}

    def _ensure_rows(self, row_end: int) -> None:
        need = row_end - self._start
        if need <= self._rows:
            return
        if need > self._wsum.shape[0]:  # a taller tile row than any before: reallocate once
            acc = np.zeros((self.channels, need, self.grid.width), np.float32)
            wsum = np.zeros((need, self.grid.width), np.float32)
            valid = np.zeros((need, self.grid.width), np.bool_)
            acc[:, : self._rows] = self._acc[:, : self._rows]
            wsum[: self._rows] = self._wsum[: self._rows]
            valid[: self._rows] = self._valid[: self._rows]
            self._acc, self._wsum, self._valid = acc, wsum, valid
        self._rows = need
        self.peak_rows = max(self.peak_rows, need)

    def add(self, tile: Tile, probability: NDArray[np.uint8], valid: NDArray[np.bool_]) -> None:
        """Blend one tile's uint8 probabilities ``(K, h, w)`` (or ``(h, w)``), in grid order."""
        self._pending[tile.index] = (tile, (probability, valid))
        self._drain()

    def mark_done(self, tile: Tile) -> None:
        """Count a tile as finished without a prediction (a skipped, all-nodata tile)."""
        self._pending[tile.index] = (tile, None)
        self._drain()

    def _drain(self) -> None:
        """Blend the pending tiles that are next in grid order, then flush finished rows."""
        while self._next_index in self._pending:
            tile, prediction = self._pending.pop(self._next_index)
            if prediction is not None:
                self._blend(tile, *prediction)
            self._next_index += 1
        self._flush()

    def _blend(self, tile: Tile, probability: NDArray[np.uint8], valid: NDArray[np.bool_]) -> None:
        if probability.ndim == 2:
            probability = probability[None]
        self._ensure_rows(tile.row_end)
        r0 = tile.row_off - self._start
        rows = slice(r0, r0 + tile.height)
        cols = slice(tile.col_off, tile.col_end)
        weight = self._tile_weights(tile) * valid
        self._acc[:, rows, cols] += weight * probability[: self.channels].astype(np.float32)
        self._wsum[rows, cols] += weight
        self._valid[rows, cols] |= valid

    def _flushable_until(self) -> int:
        """First raster row an unfinished tile can still touch: the top of the tile row of the
        next tile to blend (tiles are blended in grid order, so every row above it is done)."""
        row = self._next_index // self._tiles_per_row
        if row >= len(self._row_offsets):
            return self.grid.height
        return self._row_offsets[row]

    def _tile_weights(self, tile: Tile) -> NDArray[np.float32]:
        """Blend window of ``tile``; only a handful of distinct windows exist per grid."""
        key = (tile.height, tile.width, tile.top, tile.left, tile.bottom, tile.right)
        if key not in self._weights:
            self._weights[key] = tile_weights(tile, overlap=self.grid.overlap)
        return self._weights[key]

    def _flush(self) -> None:
        limit = self._flushable_until()
        n = limit - self._start
        if n <= 0:
            return
        self._ensure_rows(limit)
        step = flush_rows(self.grid.width)
        for r0 in range(0, n, step):
            self._emit(r0, min(n, r0 + step))
        keep = self._rows - n  # shift the unfinished rows up, then zero what they left
        for buf in (self._wsum, self._valid, *self._acc):
            buf[:keep] = buf[n : self._rows]
            buf[keep : self._rows] = 0
        self._rows = keep
        self._start = limit
        if self.finished:  # the last row is out: free the accumulator before the stage goes on
            self._acc, self._wsum, self._valid = (
                self._acc[:, :0].copy(),
                self._wsum[:0].copy(),
                self._valid[:0].copy(),
            )

    def _emit(self, r0: int, r1: int) -> None:
        """Normalize buffered rows ``[r0, r1)`` and hand them to the sink."""
        acc, wsum, valid = self._acc[:, r0:r1], self._wsum[r0:r1], self._valid[r0:r1]
        prob = np.zeros(acc.shape, np.float32)
        np.divide(acc, wsum, out=prob, where=wsum > 0)
        valid = valid & (wsum > 0)
        prob_u8 = np.clip(np.rint(prob), 0, 255).astype(np.uint8)
        mask = (prob_u8[0] >= threshold_u8(self.threshold)).astype(np.uint8)
        self.sink.write_rows(row_off=self._start + r0, probability=prob_u8, mask=mask, valid=valid)

    @property
    def finished(self) -> bool:
        return self._start >= self.grid.height

    @property
    def held_bytes(self) -> int:
        """Bytes of the accumulator (none once :attr:`finished`)."""
        return int(self._acc.nbytes + self._wsum.nbytes + self._valid.nbytes)
