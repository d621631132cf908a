"""In-process tiled prediction: the product's grid, batches and stitcher over an array."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from pipeline.model.tiled import predict_array, predict_by_shape
from pipeline.tiling.grid import TileGrid, model_grid
from tests.conftest import coordinate_image
from tests.operators import box3x3


@dataclass
class CountingBox:
    """:func:`box3x3` as a segmenter, recording the shape of every stack it is given."""

    stacks: list[tuple[int, ...]] = field(default_factory=list)

    def predict(self, pixels: NDArray[np.uint8], *, scale: float = 1.0) -> NDArray[np.uint8]:
        self.stacks.append(pixels.shape)
        return box3x3(pixels)[:, None]


def test_a_local_operator_tiled_equals_one_pass() -> None:
    image = coordinate_image(300, 420)
    grid = model_grid(height=300, width=420, tile_size=128, overlap=32, model_stride=16)
    assert grid.lattice == 16 and len(grid) > 6
    segmenter = CountingBox()
    prob = predict_array(image, segmenter=segmenter, grid=grid, batch_size=3)
    # the operator sees 1 px of context and the blend gives no weight to the outer overlap/4 px of
    # a tile, so the stitched result equals one pass over the whole array
    np.testing.assert_array_equal(prob[0], box3x3(image))
    assert len(segmenter.stacks) >= -(-len(grid) // 3) and all(s[0] <= 3 for s in segmenter.stacks)


def test_tiles_without_valid_pixels_are_not_predicted() -> None:
    image = coordinate_image(64, 128)
    grid = TileGrid(height=64, width=128, tile_size=64, overlap=0)
    valid = np.zeros((64, 128), np.bool_)
    valid[:, 70:] = True  # the second tile only
    segmenter = CountingBox()
    prob = predict_array(image, segmenter=segmenter, grid=grid, valid=valid, batch_size=2)
    assert segmenter.stacks == [(1, 3, 64, 64)]
    assert not prob[0, :, :70].any() and (prob[0, :, 70:] == box3x3(image)[:, 70:]).all()


def test_predict_by_shape_keeps_the_order_across_shapes() -> None:
    pixels = [coordinate_image(16, 16), coordinate_image(16, 12), coordinate_image(16, 16) // 2]
    segmenter = CountingBox()
    out = predict_by_shape(segmenter, pixels, scale=1.0)
    assert sorted(segmenter.stacks) == [(1, 3, 16, 12), (2, 3, 16, 16)]
    for p, o in zip(pixels, out, strict=True):
        np.testing.assert_array_equal(o[0], box3x3(p))
