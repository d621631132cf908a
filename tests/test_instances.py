"""Seeded watershed instance split: exact synthetic cases."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from pipeline.errors import ConfigError
from pipeline.instances import renumber_scan_order, split_instances


def _scene(shape: tuple[int, int]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    return np.zeros(shape, np.float32), np.zeros(shape, np.float32)


def _building(
    building: NDArray[np.float32], boundary: NDArray[np.float32], rows: slice, cols: slice, *, ring: int = 1
) -> None:
    """A confident square with a boundary ring ``ring`` pixels wide just inside its edge."""
    building[rows, cols] = 1.0
    boundary[rows, cols] = 1.0
    inner_r = slice(rows.start + ring, rows.stop - ring)
    inner_c = slice(cols.start + ring, cols.stop - ring)
    boundary[inner_r, inner_c] = 0.0


def _first_pixels_increase(labels: NDArray[np.int32]) -> bool:
    flat = labels.ravel()
    values, first = np.unique(flat[flat > 0], return_index=True)
    return bool(np.array_equal(values, np.arange(1, values.size + 1)) and np.all(np.diff(first) > 0))


@pytest.mark.parametrize("ring", [1, 2])
def test_touching_squares_become_two_instances(ring: int) -> None:
    b, e = _scene((14, 26))
    _building(b, e, slice(2, 12), slice(2, 12), ring=ring)
    _building(b, e, slice(2, 12), slice(12, 22), ring=ring)
    mask = b > 0.5
    labels = split_instances(building=b, boundary=e, mask=mask)
    expected = np.zeros(b.shape, np.int32)
    expected[2:12, 2:12] = 1
    expected[2:12, 12:22] = 2
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.int32


def test_offset_squares_of_different_size_split_along_the_shared_edge() -> None:
    b, e = _scene((20, 24))
    _building(b, e, slice(4, 16), slice(1, 9))  # tall, left
    _building(b, e, slice(1, 9), slice(9, 21))  # wide, upper right: touches rows 4..8
    labels = split_instances(
        building=(b * 255).astype(np.uint8), boundary=(e * 255).astype(np.uint8), mask=b > 0
    )
    expected = np.zeros(b.shape, np.int32)
    expected[1:9, 9:21] = 1  # first pixel (1, 9) comes first in scan order
    expected[4:16, 1:9] = 2
    np.testing.assert_array_equal(labels, expected)


def test_blob_without_seed_stays_one_instance() -> None:
    b, e = _scene((12, 20))
    b[2:10, 11:18] = 0.3  # never reaches the seed threshold
    _building(b, e, slice(3, 9), slice(1, 7))
    mask = b > 0.2
    labels = split_instances(building=b, boundary=e, mask=mask)
    expected = np.zeros(b.shape, np.int32)
    expected[2:10, 11:18] = 1  # (2, 11) is scanned before (3, 1)
    expected[3:9, 1:7] = 2
    np.testing.assert_array_equal(labels, expected)


def test_seed_smaller_than_min_seed_px_does_not_split() -> None:
    b, e = _scene((10, 12))
    b[1:9, 1:11] = 0.9
    e[1:9, 1:5] = 0.9  # boundary over the left part and a line at column 4 ...
    e[4, 1:3] = 0.0  # ... leaves a 2-pixel core there and a big core on the right
    mask = b > 0.5
    labels = split_instances(building=b, boundary=e, mask=mask, min_seed_px=4)
    np.testing.assert_array_equal(labels, mask.astype(np.int32))
    split = split_instances(building=b, boundary=e, mask=mask, min_seed_px=2)
    assert int(split.max()) == 2
    np.testing.assert_array_equal(split > 0, mask)
    assert split[4, 1] != split[4, 6]


def test_no_seed_anywhere_is_plain_component_labelling() -> None:
    b, e = _scene((8, 8))
    mask = np.zeros((8, 8), bool)
    mask[0:3, 0:3] = True
    mask[5:8, 5:8] = True
    mask[3, 3] = True  # diagonal neighbour only: a third 4-connected component
    labels = split_instances(building=b, boundary=e, mask=mask)
    assert int(labels.max()) == 3
    assert labels[3, 3] == 2 and labels[0, 0] == 1 and labels[7, 7] == 3


def test_labels_cover_exactly_the_mask_and_are_deterministic() -> None:
    rng = np.random.default_rng(7)
    b = rng.random((64, 64)).astype(np.float32)
    e = rng.random((64, 64)).astype(np.float32)
    mask = rng.random((64, 64)) < 0.6
    first = split_instances(building=b, boundary=e, mask=mask, min_seed_px=2)
    second = split_instances(building=b.copy(), boundary=e.copy(), mask=mask.copy(), min_seed_px=2)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first > 0, mask)
    assert _first_pixels_increase(first)
    # an instance never straddles two mask components
    from scipy import ndimage

    comps, _ = ndimage.label(mask)
    for_each = ndimage.maximum(comps, first, np.arange(1, first.max() + 1))
    per_min = ndimage.minimum(comps, first, np.arange(1, first.max() + 1))
    np.testing.assert_array_equal(for_each, per_min)


def test_uint8_and_float_inputs_agree() -> None:
    b, e = _scene((14, 26))
    _building(b, e, slice(2, 12), slice(2, 12))
    _building(b, e, slice(2, 12), slice(12, 22))
    as_float = split_instances(building=b, boundary=e, mask=b > 0)
    as_uint8 = split_instances(
        building=(b * 255).astype(np.uint8), boundary=(e * 255).astype(np.uint8), mask=b > 0
    )
    np.testing.assert_array_equal(as_float, as_uint8)


def test_empty_mask_gives_zeros() -> None:
    b, e = _scene((5, 5))
    labels = split_instances(building=b + 1, boundary=e, mask=np.zeros((5, 5), bool))
    assert labels.dtype == np.int32 and not labels.any()


def test_renumber_scan_order() -> None:
    labels = np.array([[0, 7, 7], [3, 0, 9], [3, 9, 9]], np.int64)
    np.testing.assert_array_equal(renumber_scan_order(labels), [[0, 1, 1], [2, 0, 3], [2, 3, 3]])


def test_bad_arguments() -> None:
    b, e = _scene((4, 4))
    with pytest.raises(ConfigError):
        split_instances(building=b, boundary=e, mask=b > 0, seed_threshold=2.0)
    with pytest.raises(ConfigError):
        split_instances(building=b, boundary=e, mask=b > 0, min_seed_px=0)
    with pytest.raises(ValueError, match="one shape"):
        split_instances(building=b, boundary=e[:3], mask=b > 0)
