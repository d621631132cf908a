"""The streamed split equals the whole-array split, and separates touching buildings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from scipy import ndimage

from pipeline.core.raster import RasterGrid
from pipeline.vectorize.split import UNSEEDED, SeedSink, UnionFind, grow, split_array
from tests.conftest import ORIGIN, UTM_CRS, write_tif


def stream(tmp: Path, building: np.ndarray, boundary: np.ndarray, mask: np.ndarray, bands: list[int], *,
           min_seed_px: int, grow_px: int, band_rows: int, band_cols: int = 2048) -> np.ndarray:  # fmt: skip
    h, w = mask.shape
    sink = SeedSink(
        workdir=tmp, grid=RasterGrid(crs=CRS.from_string(UTM_CRS), transform=ORIGIN, height=h, width=w)
    )
    r = 0
    for step in bands:
        if r >= h:
            break
        r1 = min(h, r + step)
        sink.write_rows(
            row_off=r, probability=np.stack([building[r:r1], boundary[r:r1]]),
            mask=mask[r:r1].astype(np.uint8), valid=np.ones((r1 - r, w), bool),
        )  # fmt: skip
        r = r1
    if r < h:
        sink.write_rows(
            row_off=r, probability=np.stack([building[r:], boundary[r:]]),
            mask=mask[r:].astype(np.uint8), valid=np.ones((h - r, w), bool),
        )  # fmt: skip
    mask_path = write_tif(tmp / "mask.tif", mask.astype(np.uint8), nodata=255)
    out = sink.finish(
        mask_path=mask_path,
        min_seed_px=min_seed_px,
        grow_px=grow_px,
        band_rows=band_rows,
        band_cols=band_cols,
    )
    with rasterio.open(out) as ds:
        return ds.read(1)


def two_touching_houses() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mask = np.zeros((40, 60), bool)
    mask[5:30, 5:30] = True
    mask[10:35, 30:55] = True  # shares an edge with the first house
    boundary = np.zeros(mask.shape, np.uint8)
    for r0, r1, c0, c1 in [(5, 30, 5, 30), (10, 35, 30, 55)]:
        ring = np.zeros(mask.shape, bool)
        ring[r0:r1, c0:c1] = True
        ring &= ~ndimage.binary_erosion(ring, iterations=2)
        boundary[ring] = 230
    building = np.where(mask, 220, 10).astype(np.uint8)
    return building, boundary, mask


def test_touching_houses_become_two_regions(tmp_path: Path) -> None:
    building, boundary, mask = two_touching_houses()
    regions = split_array(building=building, boundary=boundary, mask=mask, grow_px=4)
    values = set(np.unique(regions[mask]).tolist())
    assert values == {1, 2}
    assert np.array_equal(regions > 0, mask)
    assert (regions[8:28, 8:28] == 1).all() and (regions[13:33, 33:52] == 2).all()


def test_blob_without_core_is_kept(tmp_path: Path) -> None:
    mask = np.zeros((20, 20), bool)
    mask[2:6, 2:6] = True
    building = np.where(mask, 140, 0).astype(np.uint8)
    boundary = np.where(mask, 250, 0).astype(np.uint8)  # all boundary: no core
    regions = split_array(building=building, boundary=boundary, mask=mask)
    assert (regions[mask] == UNSEEDED).all() and (regions[~mask] == 0).all()


def dense_grow(labels: np.ndarray, mask: np.ndarray, steps: int) -> np.ndarray:
    """The definition, step by step over the whole array: every unlabelled mask pixel takes the
    largest of its four neighbours' labels from before the step."""
    lab = labels.copy()
    for _ in range(steps):
        cand = np.zeros_like(lab)
        np.maximum(cand[1:], lab[:-1], out=cand[1:])
        np.maximum(cand[:-1], lab[1:], out=cand[:-1])
        np.maximum(cand[:, 1:], lab[:, :-1], out=cand[:, 1:])
        np.maximum(cand[:, :-1], lab[:, 1:], out=cand[:, :-1])
        fill = (lab == 0) & mask & (cand > 0)
        lab[fill] = cand[fill]
    return lab


def test_grow_on_a_hand_case() -> None:
    labels = np.zeros((3, 5), np.uint32)
    labels[1, 0], labels[1, 4] = 2, 7
    mask = np.ones((3, 5), bool)
    mask[0, 2] = False
    # two steps: both seeds reach (1, 2) on the second, and the larger label wins; (2, 2) is
    # three steps from either; the masked-out pixel stays 0
    np.testing.assert_array_equal(
        grow(labels, mask, 2),
        [[2, 2, 0, 7, 7], [2, 2, 7, 7, 7], [2, 2, 0, 7, 7]],
    )
    np.testing.assert_array_equal(grow(labels, mask, 3)[2, 2], 7)
    np.testing.assert_array_equal(grow(labels, mask, 0), labels)


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    steps=st.integers(0, 12),
)
def test_grow_equals_the_dense_definition(seed: int, shape: tuple[int, int], steps: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random(shape) < 0.05, rng.integers(1, 50, shape), 0).astype(np.uint32)
    mask = (rng.random(shape) < 0.8) | (labels > 0)
    np.testing.assert_array_equal(grow(labels, mask, steps), dense_grow(labels, mask, steps))


def test_union_find_keeps_smallest_root() -> None:
    uf = UnionFind()
    uf.add(np.array([1, 1, 1, 1]))
    uf.union(4, 2)
    uf.union(3, 4)
    assert uf.find(3) == 2 and uf.roots().tolist() == [0, 1, 2, 2, 2]
    assert uf.final_labels(min_size=2).tolist() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize(("band_rows", "band_cols"), [(7, 2048), (16, 9), (100, 31), (5, 1)])
def test_streamed_equals_whole_on_houses(tmp_path: Path, band_rows: int, band_cols: int) -> None:
    building, boundary, mask = two_touching_houses()
    whole = split_array(building=building, boundary=boundary, mask=mask, min_seed_px=4, grow_px=4)
    streamed = stream(tmp_path, building, boundary, mask, [5, 9, 3, 11, 40],
                      min_seed_px=4, grow_px=4, band_rows=band_rows, band_cols=band_cols)  # fmt: skip
    np.testing.assert_array_equal(streamed, whole)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    shape=st.tuples(st.integers(5, 50), st.integers(5, 50)),
    bands=st.lists(st.integers(1, 20), min_size=1, max_size=12),
    band_rows=st.integers(1, 30),
    band_cols=st.integers(1, 60),
    grow_px=st.integers(0, 6),
    min_seed_px=st.integers(1, 6),
)
def test_streamed_equals_whole_property(
    tmp_path_factory: pytest.TempPathFactory, seed: int, shape: tuple[int, int], bands: list[int],
    band_rows: int, band_cols: int, grow_px: int, min_seed_px: int,
) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    building = ndimage.uniform_filter(rng.integers(0, 256, shape).astype(float), 3).astype(np.uint8)
    boundary = rng.integers(0, 256, shape).astype(np.uint8)
    mask = building >= 110
    tmp = tmp_path_factory.mktemp("p")
    whole = split_array(building=building, boundary=boundary, mask=mask,
                        min_seed_px=min_seed_px, grow_px=grow_px)  # fmt: skip
    streamed = stream(tmp, building, boundary, mask, bands, min_seed_px=min_seed_px,
                      grow_px=grow_px, band_rows=band_rows, band_cols=band_cols)  # fmt: skip
    np.testing.assert_array_equal(streamed, whole)
    assert np.array_equal(whole > 0, mask)
