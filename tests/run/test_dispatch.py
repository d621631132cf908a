"""Dispatch: only windows travel out, only uint8 comes back, bounded in-flight, GPU resources."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from dask.distributed import Client, LocalCluster

from pipeline.io.read import open_raster
from pipeline.run.dispatch import BatchResult, run_batches
from pipeline.tiling.grid import TileGrid
from tests.conftest import coordinate_image
from tests.operators import Box3x3

IN_FLIGHT = {"now": 0, "max": 0}
LOCK = threading.Lock()


SCALES: list[float] = []


@dataclass(frozen=True)
class SlowBox:
    def predict(self, pixels: Any, *, scale: float = 1.0) -> Any:
        SCALES.append(scale)
        with LOCK:
            IN_FLIGHT["now"] += 1
            IN_FLIGHT["max"] = max(IN_FLIGHT["max"], IN_FLIGHT["now"])
        time.sleep(0.02)
        with LOCK:
            IN_FLIGHT["now"] -= 1
        return Box3x3().predict(pixels)


@dataclass(frozen=True)
class SlowSource:
    def load(self) -> SlowBox:
        return SlowBox()


@pytest.fixture(scope="module")
def gpu_client() -> Any:
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None, resources={"GPU": 1}
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_tasks_carry_windows_not_pixels_and_ask_for_gpus(gpu_client: Client, make_tif: Any) -> None:
    info = open_raster(make_tif(coordinate_image(700, 500)))
    grid = TileGrid(height=700, width=500, tile_size=128, overlap=16)
    submitted: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    original = gpu_client.submit

    def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        submitted.append((args, kwargs))
        return original(fn, *args, **kwargs)

    gpu_client.submit = spy  # type: ignore[method-assign]
    results: list[BatchResult] = []
    try:
        n = run_batches(
            gpu_client, info=info, grid=grid, source=SlowSource(), batch_size=3, max_in_flight=2,
            on_batch=results.append, scale=0.6,
        )  # fmt: skip
    finally:
        gpu_client.submit = original  # type: ignore[method-assign]
    assert n == len(submitted) == -(-len(grid) // 3)
    for args, kwargs in submitted:
        assert kwargs["resources"] == {"GPU": 1}
        assert not any(isinstance(a, np.ndarray) for a in args)
    assert sum(len(b.results) for b in results) == len(grid)
    for b in results:
        for r in b.results:
            assert r.probability.dtype == np.uint8
    # the GSD scale reaches the segmenter on the worker
    assert set(SCALES) == {0.6}
    # tiles in flight never exceed the window: 2 batches of 3 tiles
    assert IN_FLIGHT["max"] <= 2


def test_skipped_tiles_are_never_submitted(gpu_client: Client, make_tif: Any) -> None:
    info = open_raster(make_tif(coordinate_image(300, 300)))
    grid = TileGrid(height=300, width=300, tile_size=128, overlap=16)
    results: list[BatchResult] = []
    run_batches(
        gpu_client, info=info, grid=grid, source=SlowSource(), batch_size=2, max_in_flight=3,
        on_batch=results.append, skip=frozenset({0, 1, 2}),
    )  # fmt: skip
    done = {r.tile.index for b in results for r in b.results}
    assert done == set(range(len(grid))) - {0, 1, 2}
