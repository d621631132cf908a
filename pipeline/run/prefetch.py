"""Reading a batch's windows, and the next batch's while this one infers.

A worker task reads its windows, then infers them. With one task thread in the cluster (one
worker process, one thread: the default) every batch runs there in order, so while a task
infers, :class:`Prefetcher` reads the next batch's windows on a thread of its own (GDAL
releases the GIL while it decodes), and the next task takes them instead of reading: reading,
about 20 ms of CPU per 597² tile, no longer waits in line before the model. Only windows travel
(:func:`~pipeline.run.dispatch.run_batches` names the next batch); the pixels are read where
they are used. One batch is read ahead at most, and a read-ahead that no task takes (the next
batch was cached, or ran elsewhere) is dropped when the next one starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import rasterio
from numpy.typing import NDArray

from pipeline.io.read import RasterInfo, read_tile
from pipeline.tiling.grid import Tile


@dataclass(frozen=True)
class BatchPixels:
    """A batch's windows as read: pixels and validity of the tiles with data (``kept``), the
    all-nodata tiles (``skipped``), and the CPU seconds the reading thread spent."""

    pixels: tuple[NDArray[np.uint8], ...]
    valids: tuple[NDArray[np.bool_], ...]
    kept: tuple[Tile, ...]
    skipped: tuple[Tile, ...]
    cpu_s: float


def read_batch(info: RasterInfo, tiles: Sequence[Tile]) -> BatchPixels:
    """Read ``tiles`` of ``info`` through one open dataset; all-nodata tiles are skipped."""
    c0 = time.thread_time()
    pixels, valids, kept, skipped = [], [], [], []
    with rasterio.open(info.path) as ds:
        for tile in tiles:
            px, valid = read_tile(info, tile, dataset=ds)
            if not valid.any():
                skipped.append(tile)
                continue
            pixels.append(px)
            valids.append(valid)
            kept.append(tile)
    return BatchPixels(tuple(pixels), tuple(valids), tuple(kept), tuple(skipped), time.thread_time() - c0)


class Prefetcher:
    """One batch read ahead on a background thread (one per worker process: :data:`PREFETCH`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: tuple[RasterInfo, tuple[Tile, ...], Future[BatchPixels]] | None = None

    def start(self, info: RasterInfo, tiles: Sequence[Tile]) -> None:
        """Begin reading ``tiles``; a read-ahead not taken by now is dropped."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="footprints-prefetch")
            self._ahead = (info, tuple(tiles), self._pool.submit(read_batch, info, tuple(tiles)))

    def take(self, info: RasterInfo, tiles: Sequence[Tile]) -> BatchPixels | None:
        """The read-ahead of exactly these windows (waiting for it to finish), else None.

        A read-ahead of other windows is dropped. Its error, if reading failed, is raised here,
        by the task whose tiles they are.
        """
        with self._lock:
            ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] != info or ahead[1] != tuple(tiles):
            return None
        return ahead[2].result()

    def finished_cpu_s(self) -> float:
        """CPU seconds of the read-ahead if it has finished (else 0): what the task that
        started it should not count as its own inferring."""
        with self._lock:
            ahead = self._ahead
        if ahead is None or not ahead[2].done() or ahead[2].exception() is not None:
            return 0.0
        return ahead[2].result().cpu_s


#: The worker process's prefetcher.
PREFETCH = Prefetcher()
