"""Dispatch tiles to Dask workers in batches, with backpressure.

Only window coordinates travel to a worker: each task opens the input itself and
reads its own windows. Only uint8 probabilities (and, where a tile has nodata, a
bit-packed validity mask) travel back. Each worker loads the model once, through
:class:`ModelPlugin`; the in-flight window of batches bounds memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.distributed import Client, as_completed
from distributed.diagnostics.plugin import WorkerPlugin
from numpy.typing import NDArray
from rasterio.errors import RasterioError

from pipeline.core.errors import FootprintsError, RasterReadError, WorkerLostError, cause_text, detach
from pipeline.io.read import RasterInfo
from pipeline.model.infer import ModelSource, cached_segmenter
from pipeline.model.tiled import predict_by_shape
from pipeline.run.hardware import device_label
from pipeline.run.prefetch import PREFETCH, read_batch
from pipeline.run.tilecache import SKIPPED, TileCache
from pipeline.tiling.grid import Tile, TileGrid

PLUGIN_NAME = "footprints-model"


@dataclass(frozen=True, slots=True)
class TileResult:
    """A predicted tile: uint8 probabilities ``(K, height, width)`` and, when partly
    nodata, its bit-packed validity mask."""

    tile: Tile
    probability: NDArray[np.uint8]
    packed_valid: NDArray[np.uint8] | None
    reused: bool = False

    def valid(self) -> NDArray[np.bool_]:
        if self.packed_valid is None:
            return np.ones((self.tile.height, self.tile.width), dtype=np.bool_)
        n = self.tile.height * self.tile.width
        flat = np.unpackbits(self.packed_valid, count=n).astype(np.bool_)
        return flat.reshape(self.tile.height, self.tile.width)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one task returns: results for tiles with data, and tiles it skipped."""

    results: tuple[TileResult, ...]
    skipped: tuple[Tile, ...]
    worker_pid: int
    device: str = ""  # where the model ran (pipeline.run.hardware.device_label); "" when it did not
    runtime: str = ""  # what ran it (pipeline.model.runtimes); "" when it did not
    #: the task's seconds on the worker, wall and CPU (:data:`TASK_TIMES`)
    times: tuple[float, ...] = ()


#: What :attr:`BatchResult.times` holds, in order: wall seconds of the whole task, of reading
#: the windows (or waiting for their read-ahead) and of inferring them (``Segmenter.predict``),
#: then CPU seconds: the task's, its reading's (the reading thread's, wherever it ran) and its
#: inferring's (the worker process's over that span, the model's own thread pool included, less
#: the next batch's read-ahead when it finished within it).
TASK_TIMES = ("task_s", "read_s", "infer_s", "task_cpu_s", "read_cpu_s", "infer_cpu_s")


class ModelPlugin(WorkerPlugin):
    """Loads the model once when a worker starts (or when the plugin is registered)."""

    name = PLUGIN_NAME

    def __init__(self, source: ModelSource) -> None:
        self.source = source

    def setup(self, worker: Any) -> None:
        error: FootprintsError | None = None
        try:
            cached_segmenter(self.source)
        except FootprintsError as exc:
            error = detach(exc)
        if error is not None:
            raise error


def predict_batch(
    info: RasterInfo,
    tiles: Sequence[Tile],
    source: ModelSource,
    scale: float = 1.0,
    cache: TileCache | None = None,
    from_cache: bool = False,
    ahead: Sequence[Tile] = (),
) -> BatchResult:
    """Worker task: :func:`infer_batch`, whose errors come back as one picklable line.

    A footprints error is sent without its chain (see :func:`pipeline.core.errors.detach`); a
    GDAL or OS error (rasterio's, including its ``CPLE_*`` errors) becomes a
    :class:`RasterReadError` naming the input.
    """
    error: FootprintsError | None = None
    try:
        return infer_batch(info, tiles, source, scale, cache, from_cache, ahead)
    except FootprintsError as exc:
        error = detach(exc)
    except Exception as exc:
        if not isinstance(exc, OSError | RasterioError) and not type(exc).__module__.startswith("rasterio"):
            raise  # a bug, not the input: its traceback helps
        error = RasterReadError(
            f"{info.path}: reading tiles {tiles[0].index}-{tiles[-1].index} failed ({cause_text(exc)}); "
            "check that the file is complete and readable (re-download or re-export it)"
        )
    raise error  # outside the except blocks: nothing unpicklable is chained to it


def infer_batch(
    info: RasterInfo,
    tiles: Sequence[Tile],
    source: ModelSource,
    scale: float = 1.0,
    cache: TileCache | None = None,
    from_cache: bool = False,
    ahead: Sequence[Tile] = (),
) -> BatchResult:
    """Read the windows, skip all-nodata tiles, predict the rest.

    With a ``cache``, inferred tiles are saved to it; with ``from_cache`` too (the
    client's manifest says the whole batch finished before), the batch is loaded from
    it instead, and inferred again only if a tile is missing. Batches are never split,
    because a model's output may depend on the batch by a rounding step, and a resumed
    run must write the same bytes as an uninterrupted one.
    ``scale`` (input GSD / model GSD) is applied by the segmenter, which returns the
    probabilities on the input grid. ``ahead`` (the next batch's tiles, when it will run in
    this process too) is read on a background thread while this batch infers
    (:mod:`pipeline.run.prefetch`); a batch read ahead is taken instead of read.
    """
    if from_cache and cache is not None and (done := _from_cache(tiles, cache)) is not None:
        return done
    w0 = time.perf_counter()
    read = PREFETCH.take(info, tiles) or read_batch(info, tiles)
    if ahead:
        PREFETCH.start(info, ahead)
    w1, c1 = time.perf_counter(), time.process_time()  # reading's CPU is its thread's: read.cpu_s
    results: list[TileResult] = []
    device = runtime = ""
    if read.kept:
        segmenter = cached_segmenter(source)
        prob = predict_by_shape(segmenter, list(read.pixels), scale=scale)
        device = device_label(getattr(segmenter, "device", "cpu"))
        runtime = str(getattr(segmenter, "runtime", ""))
        for tile, p, valid in zip(read.kept, prob, read.valids, strict=True):
            packed = None if valid.all() else np.packbits(valid.ravel())
            results.append(TileResult(tile=tile, probability=p, packed_valid=packed))
    w2, c2 = time.perf_counter(), time.process_time()
    # a read-ahead that finished while this batch inferred: its CPU is the next batch's reading
    ahead_cpu = PREFETCH.finished_cpu_s() if ahead else 0.0
    if cache is not None:
        for r in results:
            cache.save(r.tile, r.probability, r.packed_valid)
        for t in read.skipped:
            cache.save_skipped(t)
    w3, c3 = time.perf_counter(), time.process_time()
    infer_cpu = c2 - c1 - ahead_cpu
    times = (w3 - w0, w1 - w0, w2 - w1, read.cpu_s + infer_cpu + (c3 - c2), read.cpu_s, infer_cpu)
    return BatchResult(
        results=tuple(results),
        skipped=read.skipped,
        worker_pid=os.getpid(),
        device=device,
        runtime=runtime,
        times=times,
    )


def _from_cache(tiles: Sequence[Tile], cache: TileCache) -> BatchResult | None:
    """The batch rebuilt from the cache, or None unless every tile of it is cached."""
    results, skipped = [], []
    for tile in tiles:
        hit = cache.load(tile)
        if hit is None:
            return None
        if hit == SKIPPED:
            skipped.append(tile)
        else:
            assert not isinstance(hit, str)
            results.append(TileResult(tile=tile, probability=hit[0], packed_valid=hit[1], reused=True))
    return BatchResult(results=tuple(results), skipped=tuple(skipped), worker_pid=os.getpid())


def batches(tiles: Sequence[Tile], batch_size: int) -> list[tuple[Tile, ...]]:
    """Consecutive (row-major) batches of tiles."""
    return [tuple(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)]


def _result(fut: Any, batch: Sequence[Tile]) -> BatchResult:
    """The batch's result; a batch whose workers kept dying is a :class:`WorkerLostError`."""
    from distributed.scheduler import KilledWorker

    try:
        result: BatchResult = fut.result()
    except KilledWorker as exc:
        raise WorkerLostError(
            f"tiles {batch[0].index}-{batch[-1].index}: the Dask workers running them died "
            f"{int(exc.allowed_failures) + 1} times (out of memory?); "
            "lower tiling.batch_size or dask.n_workers, or give the workers more memory, and rerun "
            "the same command to resume"
        ) from exc
    return result


def workers_have_gpus(client: Client) -> bool:
    """True when any worker declares a ``GPU`` resource."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return any("GPU" in w.get("resources", {}) for w in workers.values())


def run_batches(
    client: Client,
    *,
    info: RasterInfo,
    grid: TileGrid,
    source: ModelSource,
    batch_size: int,
    max_in_flight: int,
    on_batch: Callable[[BatchResult], None],
    scale: float = 1.0,
    skip: frozenset[int] = frozenset(),
    cache: TileCache | None = None,
    reuse: frozenset[int] = frozenset(),
) -> int:
    """Submit batches in row-major order and feed results to ``on_batch``.

    At most ``max_in_flight`` batches are submitted past the oldest unfinished one,
    so memory stays flat however large the raster is, even behind a straggler.
    Tiles whose index is in ``skip`` are not submitted. Workers save inferred tiles to
    ``cache``, and load a batch from it instead when all its tiles are in ``reuse``
    (finished by an earlier attempt), so a fresh run never probes the cache. With one task
    thread in the cluster, each batch names the next, which it reads ahead while it infers
    (:mod:`pipeline.run.prefetch`). Returns the batch count.
    """
    client.register_plugin(ModelPlugin(source), name=PLUGIN_NAME)
    resources = {"GPU": 1} if workers_have_gpus(client) else None
    todo = batches([t for t in grid if t.index not in skip], batch_size)
    reused = [cache is not None and all(t.index in reuse for t in batch) for batch in todo]
    # one task thread in the cluster runs every batch, in order: each reads the next one's windows
    # ahead (with more, the next batch may already be running elsewhere)
    one_thread = sum(client.nthreads().values()) == 1  # type: ignore[no-untyped-call]
    pending: dict[Any, int] = {}
    done: set[int] = set()
    ac = as_completed()  # type: ignore[no-untyped-call]
    next_i, oldest = 0, 0

    def fill() -> None:
        nonlocal next_i
        while next_i < len(todo) and next_i < oldest + max_in_flight:
            batch, from_cache = todo[next_i], reused[next_i]
            last = next_i + 1 == len(todo)
            ahead = todo[next_i + 1] if one_thread and not last and not reused[next_i + 1] else ()
            fut = client.submit(
                predict_batch, info, batch, source, scale, cache, from_cache, ahead,
                resources=resources, pure=False,
            )  # fmt: skip
            pending[fut.key] = next_i
            ac.add(fut)  # type: ignore[no-untyped-call]
            next_i += 1

    fill()
    for fut in ac:
        i = pending.pop(fut.key)
        on_batch(_result(fut, todo[i]))
        fut.release()
        done.add(i)
        while oldest in done:
            oldest += 1
        fill()
    return len(todo)
