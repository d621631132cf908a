"""Reading ahead: one worker reads the next batch's windows while it infers this one."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dask.distributed import Client, LocalCluster
from rasterio.errors import RasterioIOError

from pipeline.core.errors import RasterReadError
from pipeline.io.read import RasterInfo, open_raster
from pipeline.run import dispatch, prefetch
from pipeline.run.dispatch import BatchResult, batches, predict_batch, run_batches
from pipeline.run.prefetch import BatchPixels, Prefetcher, read_batch
from pipeline.tiling.grid import Tile, TileGrid
from tests.conftest import coordinate_image
from tests.operators import Box3x3Source


def _scene(make_tif: Any) -> tuple[RasterInfo, list[Tile]]:
    info = open_raster(make_tif(coordinate_image(300, 400)))
    return info, list(TileGrid(height=300, width=400, tile_size=128, overlap=16))


def _same(a: BatchPixels, b: BatchPixels) -> bool:
    arrays = zip(a.pixels + a.valids, b.pixels + b.valids, strict=True)
    return a.kept == b.kept and a.skipped == b.skipped and all(np.array_equal(x, y) for x, y in arrays)


def test_a_batch_read_ahead_is_taken_once_and_one_for_other_windows_is_dropped(make_tif: Any) -> None:
    info, tiles = _scene(make_tif)
    first, second = tiles[:2], tiles[2:4]
    ahead = Prefetcher()
    ahead.start(info, first)
    got = ahead.take(info, first)
    assert got is not None and _same(got, read_batch(info, first)) and got.cpu_s > 0
    assert ahead.take(info, first) is None  # taken: gone
    ahead.start(info, first)
    assert ahead.take(info, second) is None  # other windows: not read ahead, and the read-ahead dropped
    assert ahead.take(info, first) is None


def test_a_failed_read_ahead_is_raised_by_the_task_whose_tiles_they_are(
    make_tif: Any, tmp_path: Path
) -> None:
    info, tiles = _scene(make_tif)
    Path(info.path).unlink()
    prefetch.PREFETCH.start(info, tiles[:2])
    with pytest.raises(RasterioIOError):
        prefetch.PREFETCH.take(info, tiles[:2])
    prefetch.PREFETCH.start(info, tiles[:2])
    with pytest.raises(RasterReadError, match=r"reading tiles 0-1 failed .*re-download"):
        predict_batch(info, tiles[:2], Box3x3Source())


@pytest.fixture(scope="module")
def one_worker() -> Any:
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_one_worker_reads_each_next_batch_ahead_with_the_same_results(
    one_worker: Client, make_tif: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    info, tiles = _scene(make_tif)
    grid = TileGrid(height=300, width=400, tile_size=128, overlap=16)
    threads: list[str] = []
    real = read_batch

    def spy(info: RasterInfo, tiles: Any) -> BatchPixels:
        threads.append(threading.current_thread().name)
        return real(info, tiles)

    monkeypatch.setattr(dispatch, "read_batch", spy)
    monkeypatch.setattr(prefetch, "read_batch", spy)
    results: list[BatchResult] = []
    n = run_batches(
        one_worker, info=info, grid=grid, source=Box3x3Source(), batch_size=2, max_in_flight=2,
        on_batch=results.append,
    )  # fmt: skip
    assert n == len(batches(tiles, 2)) == len(threads) > 2
    # the first batch is read by its task; every later one was read ahead, on the prefetch thread
    assert not threads[0].startswith("footprints-prefetch")
    assert all(t.startswith("footprints-prefetch") for t in threads[1:])
    by_tile = {r.tile.index: r.probability for b in results for r in b.results}
    expected = {
        r.tile.index: r.probability
        for b in batches(tiles, 2)
        for r in predict_batch(info, b, Box3x3Source()).results
    }
    assert by_tile.keys() == expected.keys()
    assert all(np.array_equal(by_tile[i], expected[i]) for i in expected)
    # each batch counts its own reading's CPU, wherever it ran
    assert all(b.times[4] > 0 for b in results)


@pytest.mark.parametrize(("workers", "threads"), [(2, 1), (1, 2)])
def test_several_task_threads_read_no_batch_ahead(make_tif: Any, workers: int, threads: int) -> None:
    info, _ = _scene(make_tif)
    grid = TileGrid(height=300, width=400, tile_size=128, overlap=16)
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=threads, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        submitted: list[tuple[Any, ...]] = []
        original = client.submit

        def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
            submitted.append(args)
            return original(fn, *args, **kwargs)

        client.submit = spy  # type: ignore[method-assign]
        run_batches(
            client, info=info, grid=grid, source=Box3x3Source(), batch_size=2, max_in_flight=2,
            on_batch=lambda b: None,
        )  # fmt: skip
    assert len(submitted) > 2 and all(args[6] == () for args in submitted)  # ahead: none
