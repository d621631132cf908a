"""Band polygonization on Dask workers: the same regions, in the same order, as in-process."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely

from pipeline.core.errors import FootprintsError
from pipeline.vectorize.pieces import Band, BandPieces, band_pieces, pieces_on_workers, raster_band_pieces
from pipeline.vectorize.polygonize import Regions, polygonize_blocks
from tests.conftest import write_tif
from tests.masks import NODATA, feature_mask, label_raster


def assert_identical(got: Regions, ref: Regions) -> None:
    """Every array equal and every polygon the same WKB: same vertices, same ring starts."""
    assert len(got) == len(ref) and got.crs == ref.crs
    for name in ("value", "first_row", "first_col", "pixel_count", "pieces"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
    assert (got.mean is None) == (ref.mean is None)
    if ref.mean is not None:
        np.testing.assert_array_equal(got.mean, ref.mean)
    assert shapely.to_wkb(got.geometry).tolist() == shapely.to_wkb(ref.geometry).tolist()


@pytest.fixture
def rasters(tmp_path: Path) -> dict[str, Path]:
    mask = feature_mask()
    prob = np.random.default_rng(6).integers(0, 256, mask.shape).astype(np.uint8)
    labels = label_raster()  # uint32 values beyond int32: the value-aware labelling
    return {
        "mask": write_tif(tmp_path / "mask.tif", mask, nodata=NODATA, tiled=True, block=128),
        "prob": write_tif(tmp_path / "prob.tif", prob),
        "labels": write_tif(tmp_path / "labels.tif", labels),
    }


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """Two worker processes: results cross a pickle and may finish out of band order."""
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,  # type: ignore[no-untyped-call]
        Client(cluster) as c,  # type: ignore[no-untyped-call]
    ):
        yield c


@pytest.mark.slow
def test_regions_on_workers_equal_in_process(client: Any, rasters: dict[str, Path]) -> None:
    mask, prob, labels = (str(rasters[k]) for k in ("mask", "prob", "labels"))
    for block in (64, 100):
        ref = polygonize_blocks(mask, block_size=block, stats_path=prob)
        got = polygonize_blocks(mask, block_size=block, stats_path=prob, client=client, max_in_flight=2)
        assert_identical(got, ref)
        assert (got.pieces > 1).sum() >= 20  # many regions were merged across the workers' bands
    ref = polygonize_blocks(labels, block_size=37)
    assert_identical(polygonize_blocks(labels, block_size=37, client=client, max_in_flight=3), ref)
    assert ref.value.max() > 2**31


@pytest.mark.slow
def test_a_worker_error_is_the_footprints_error(
    client: Any, rasters: dict[str, Path], tmp_path: Path
) -> None:
    small = write_tif(tmp_path / "small.tif", np.zeros((10, 10), np.uint8))
    with pytest.raises(FootprintsError, match="statistics raster on the same grid"):
        polygonize_blocks(str(rasters["mask"]), block_size=64, stats_path=str(small), client=client)


class InlineClient:
    """Runs each task when its result is asked for; records arguments and tasks in flight."""

    def __init__(self) -> None:
        self.args: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.in_flight = self.peak = 0
        self.cancelled: list[Any] = []

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.args.append((args, kwargs))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        client = self

        class Future:
            def result(self) -> Any:
                kw = {k: v for k, v in kwargs.items() if k != "pure"}
                return pickle.loads(pickle.dumps(fn(*args, **kw)))

            def release(self) -> None:
                client.in_flight -= 1

        return Future()

    def cancel(self, futures: list[Any]) -> None:
        self.cancelled.extend(futures)


def test_tasks_carry_paths_not_pixels_within_the_window(rasters: dict[str, Path]) -> None:
    mask, prob = str(rasters["mask"]), str(rasters["prob"])
    ref = polygonize_blocks(mask, block_size=50, stats_path=prob)
    fake = InlineClient()
    got = polygonize_blocks(mask, block_size=50, stats_path=prob, client=fake, max_in_flight=3)
    assert_identical(got, ref)
    assert len(fake.args) == -(-560 // 50)  # one task per band
    for args, kwargs in fake.args:
        values = [*args, *kwargs.values()]
        assert all(v is None or isinstance(v, str | int) for v in values)
    assert [kw["row_off"] for _, kw in fake.args] == list(range(0, 560, 50))
    assert fake.peak <= 3 + 1  # the window past the band awaited
    assert fake.in_flight == 0 and not fake.cancelled


def test_a_stopped_merge_cancels_the_bands_still_pending(rasters: dict[str, Path]) -> None:
    fake = InlineClient()
    stream = pieces_on_workers(
        fake, str(rasters["mask"]), height=560, width=640, block_size=50, max_in_flight=3
    )
    next(stream)
    stream.close()
    assert len(fake.cancelled) == 3


def test_band_pieces_survive_pickling_exactly(rasters: dict[str, Path]) -> None:
    pieces = raster_band_pieces(str(rasters["labels"]), row_off=37, block_size=37, width=320)
    again = pickle.loads(pickle.dumps(pieces))
    assert len(pieces.table) > 10
    assert shapely.to_wkb(again.geoms).tolist() == shapely.to_wkb(pieces.geoms).tolist()
    for name in ("top_labels", "top_values", "bottom_labels", "bottom_values"):
        got, ref = getattr(again, name), getattr(pieces, name)
        assert got.dtype == ref.dtype and np.array_equal(got, ref)
    np.testing.assert_array_equal(again.table.first, pieces.table.first)
    empty = band_pieces(Band(0, np.zeros((4, 6), np.uint8), None), 6)
    back: BandPieces = pickle.loads(pickle.dumps(empty))
    assert back.geoms.shape == (0,) and back.geoms.dtype == object and len(back.table) == 0
