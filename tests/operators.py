"""Deterministic local operators that stand in for the model in stitching tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage


def box3x3(pixels: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """A fixed 3x3 convolution of the channel mean, zero-padded, quantized to uint8.

    Applied to one image ``(3, H, W)`` or a batch ``(N, 3, H, W)``.
    """
    x = pixels.astype(np.float64).mean(axis=-3)
    kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64) / 16.0
    if x.ndim == 2:
        return np.rint(ndimage.convolve(x, kernel, mode="constant", cval=0.0)).astype(np.uint8)
    return np.stack([box3x3(p) for p in pixels])


@dataclass(frozen=True)
class Box3x3:
    def predict(self, pixels: NDArray[np.uint8], *, scale: float = 1.0) -> NDArray[np.uint8]:
        return box3x3(pixels)[:, None]


@dataclass(frozen=True)
class Box3x3Source:
    """A :class:`pipeline.model.infer.ModelSource` for :class:`Box3x3`."""

    def load(self) -> Box3x3:
        return Box3x3()

    def describe(self) -> dict[str, object]:
        return {"id": "box3x3", "sha256": None, "path": None, "trained": False, "threshold": 0.5}
