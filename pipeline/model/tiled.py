"""Tiled prediction: a segmenter over a grid's tiles, and a whole array in-process.

:func:`predict_by_shape` is what a Dask worker runs on the tiles of one batch
(:func:`pipeline.run.dispatch.infer_batch`); :func:`predict_array` runs the same steps on an
array already in memory, without Dask: the tiles of a :func:`pipeline.tiling.grid.model_grid`
predicted in batches by :func:`predict_by_shape` and blended by the product's
:class:`pipeline.tiling.stitch.Stitcher`. Training-time validation and its choice of the
decision threshold use it, so they see the probabilities ``footprints segment`` would write.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.model.infer import Segmenter
from pipeline.tiling.grid import Tile, TileGrid
from pipeline.tiling.stitch import ArraySink, Stitcher

__all__ = ["predict_array", "predict_by_shape"]


def predict_by_shape(
    segmenter: Segmenter, pixels: list[NDArray[np.uint8]], *, scale: float
) -> list[NDArray[np.uint8]]:
    """Predict tiles in one stack per shape (the last row and column of a grid on the
    model's lattice may be a little smaller), returning them in the given order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, px in enumerate(pixels):
        groups.setdefault(px.shape, []).append(i)
    out: list[NDArray[np.uint8]] = [np.empty(0, np.uint8)] * len(pixels)
    for idx in groups.values():
        for i, p in zip(idx, segmenter.predict(np.stack([pixels[i] for i in idx]), scale=scale), strict=True):
            out[i] = p
    return out


def predict_array(
    pixels: NDArray[np.uint8],
    *,
    segmenter: Segmenter,
    grid: TileGrid,
    valid: NDArray[np.bool_] | None = None,
    channels: int = 1,
    batch_size: int = 1,
    scale: float = 1.0,
) -> NDArray[np.uint8]:
    """uint8 probabilities ``(channels, H, W)`` of the ``(3, H, W)`` pixels, tiled on ``grid``.

    As on a worker, a tile without a ``valid`` pixel is skipped, tiles go to the segmenter
    ``batch_size`` at a time (in grid order), and the stitcher blends them with its smooth
    weights, giving no weight to invalid pixels; pixels no tile covers with weight stay 0.
    """
    height, width = pixels.shape[-2:]
    if (height, width) != (grid.height, grid.width):
        raise ValueError(f"pixels of shape {(height, width)} on a grid of {(grid.height, grid.width)}")
    sink = ArraySink(height=height, width=width, channels=channels)
    stitcher = Stitcher(grid=grid, sink=sink, channels=channels)
    tiles = list(grid)
    for start in range(0, len(tiles), batch_size):
        kept = []
        for tile in tiles[start : start + batch_size]:
            mask = _window(valid, tile)
            if mask.any():
                kept.append((tile, mask))
            else:
                stitcher.mark_done(tile)
        stack = [np.ascontiguousarray(_window(pixels, tile)) for tile, _ in kept]
        for (tile, mask), prob in zip(kept, predict_by_shape(segmenter, stack, scale=scale), strict=True):
            stitcher.add(tile, prob, mask)
    return sink.probability


def _window(array: NDArray[Any] | None, tile: Tile) -> NDArray[Any]:
    """The tile's window of the last two axes of ``array`` (all true when there is no array)."""
    if array is None:
        return np.ones((tile.height, tile.width), np.bool_)
    return array[..., tile.row_off : tile.row_end, tile.col_off : tile.col_end]
