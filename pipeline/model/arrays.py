"""The segmenter on CPU arrays, for the exported runtimes: the worker never imports torch.

With ``model.runtime`` set to an exported runtime (``openvino``, the CPU default, or
``onnxruntime``) the network is an ONNX graph run on numpy arrays, and what happens around it
(normalizing, resampling to the model's GSD and back, padding to the output stride, test-time
flips, sigmoid, quantizing) is a few array operations. Doing them in numpy rather than in torch
keeps ``import torch`` out of the worker: with this CUDA build it is about 480 MB of a worker's
RSS (DESIGN.md, "Performance"), for work worth milliseconds per tile.

:class:`ArraySegmenter` computes what :class:`pipeline.model.infer.TorchSegmenter` computes for
the same forward pass, step by step: :func:`resize_bilinear` reproduces
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` with and without
``antialias`` (the same taps and weights), :func:`pad_to_stride` reproduces
:func:`pipeline.model.deeplab.pad_to_stride`. ``tests/model/test_arrays.py`` holds them to torch's
results, so the two segmenters stay one definition of the product written twice, not two products.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from pipeline.core.errors import ConfigError

#: A forward pass on arrays: normalized, stride-padded ``(N, 3, H, W)`` float32 -> logits ``(N, K, H, W)``.
Run = Callable[[NDArray[np.float32]], NDArray[np.float32]]

#: Resampling is skipped when input and model GSD agree within this relative tolerance.
SCALE_TOLERANCE = 0.05


def model_scale(input_gsd_m: float, model_gsd_m: float | None) -> float:
    """Input GSD / model GSD, the factor a tile is resampled by: 1.0 for a model without a
    GSD, and within :data:`SCALE_TOLERANCE` of 1 (where resampling is skipped)."""
    scale = 1.0 if model_gsd_m is None else input_gsd_m / model_gsd_m
    return 1.0 if abs(scale - 1.0) <= SCALE_TOLERANCE else scale


def model_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """Pixel shape of a ``(height, width)`` input window at the model's GSD."""
    if abs(scale - 1.0) <= SCALE_TOLERANCE:
        return (height, width)
    return (max(1, round(height * scale)), max(1, round(width * scale)))


#: Test-time flips by count (``model.flips``), as array axes: none, left-right, or all three.
FLIP_AXES: dict[int, tuple[tuple[int, ...], ...]] = {0: (), 1: ((-1,),), 3: ((-1,), (-2,), (-1, -2))}


@functools.lru_cache(maxsize=64)
def bilinear_taps(
    in_size: int, out_size: int, *, antialias: bool
) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    """Source indices and weights ``(out_size, taps)`` of torch's bilinear resampling on one axis.

    ``align_corners=False``. Without ``antialias``: the half-pixel source coordinate clamped at 0,
    two taps. With it (torch's ``_upsample_bilinear2d_aa``): a triangle filter widened by the
    scale when downsampling, weights normalized to sum 1; unused taps carry weight 0.
    """
    # float32 arithmetic, as torch computes the taps of a float32 tensor
    scale = np.float32(in_size) / np.float32(out_size)
    i = np.arange(out_size, dtype=np.float32)
    half = np.float32(0.5)
    if not antialias:
        src = np.maximum(scale * (i + half) - half, np.float32(0.0))
        lo = src.astype(np.intp)
        hi = np.minimum(lo + 1, in_size - 1)
        frac = src - lo
        return np.stack([lo, hi], axis=1), np.stack([np.float32(1.0) - frac, frac], axis=1).astype(np.float32)
    one = np.float32(1.0)
    support = scale if scale >= one else one
    invscale = one / scale if scale >= one else one
    center = scale * (i + half)
    xmin = np.maximum(np.trunc(center - support + half), 0).astype(np.intp)
    xmax = np.minimum(np.trunc(center + support + half).astype(np.intp), in_size)
    taps = int((xmax - xmin).max())
    j = np.arange(taps)
    idx = xmin[:, None] + j[None, :]
    weights = np.clip(one - np.abs((idx.astype(np.float32) - center[:, None] + half) * invscale), 0.0, None)
    weights[idx >= xmax[:, None]] = 0.0
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total != 0)
    return np.minimum(idx, in_size - 1), weights.astype(np.float32)


class Workspace:
    """Arrays kept between calls, by role and shape, so that a tile's temporaries are not fresh
    memory each time: the workers trim freed memory back to the system (``MALLOC_TRIM_THRESHOLD_``),
    so a fresh multi-megabyte array is a fresh mapping whose every page faults on first touch,
    which made the segmenter's own work about 80 ms per 597² tile slower (measured). What
    :meth:`get` returns is overwritten by the next call with the same role and shape."""

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, tuple[int, ...]], NDArray[np.float32]] = {}

    def get(self, role: str, shape: tuple[int, ...]) -> NDArray[np.float32]:
        key = (role, shape)
        array = self._arrays.get(key)
        if array is None:
            if len(self._arrays) > 32:  # the shapes of a scene's edge tiles come and go
                self._arrays.clear()
            array = self._arrays[key] = np.empty(shape, dtype=np.float32)
        return array


def _resize_axis(
    x: NDArray[np.float32], size: int, axis: int, *, antialias: bool, work: Workspace | None, role: str
) -> NDArray[np.float32]:
    axis %= x.ndim
    if x.shape[axis] == size and not antialias:
        return x
    idx, weights = bilinear_taps(x.shape[axis], size, antialias=antialias)
    wshape = [1] * x.ndim
    wshape[axis] = size
    shape = (*x.shape[:axis], size, *x.shape[axis + 1 :])
    out = np.empty(shape, np.float32) if work is None else work.get(f"{role}-out{axis}", shape)
    tmp = np.empty(shape, np.float32) if work is None else work.get(f"{role}-tmp{axis}", shape)
    # the taps are in range (bilinear_taps clamps them): mode="clip" writes into ``out`` directly,
    # where the default "raise" first gathers into a fresh buffer of ``out``'s size
    np.take(x, idx[:, 0], axis=axis, out=out, mode="clip")
    out *= weights[:, 0].reshape(wshape)
    for k in range(1, idx.shape[1]):
        np.take(x, idx[:, k], axis=axis, out=tmp, mode="clip")
        tmp *= weights[:, k].reshape(wshape)
        out += tmp
    return out


def resize_bilinear(
    x: NDArray[np.float32],
    size: tuple[int, int],
    *,
    antialias: bool = False,
    work: Workspace | None = None,
    role: str = "resize",
) -> NDArray[np.float32]:
    """``(..., H, W)`` float32 resampled to ``size`` = ``(height, width)`` as torch's bilinear
    ``interpolate`` does it (``align_corners=False``): width first, then height. With ``work``
    the result is one of its arrays (``role`` tells the callers' resamplings apart)."""
    height, width = size
    across = _resize_axis(x, width, -1, antialias=antialias, work=work, role=role)
    return _resize_axis(across, height, -2, antialias=antialias, work=work, role=role)


def pad_to_stride(x: NDArray[np.float32], stride: int) -> NDArray[np.float32]:
    """Pad ``(N, C, H, W)`` on the bottom/right to multiples of ``stride``: reflect, or replicate
    when the input is too small to reflect (as :func:`pipeline.model.deeplab.pad_to_stride`)."""
    height, width = int(x.shape[-2]), int(x.shape[-1])
    pad_h, pad_w = -height % stride, -width % stride
    if not (pad_h or pad_w):
        return x
    widths = ((0, 0), (0, 0), (0, pad_h), (0, pad_w))
    if pad_h < height and pad_w < width:
        return np.pad(x, widths, mode="reflect")
    return np.pad(x, widths, mode="edge")


def normalize(
    pixels: NDArray[np.uint8],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    out: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """uint8 ``(N, 3, H, W)`` -> float32 scaled to [0, 1], minus ``mean``, over ``std`` (per band),
    in torch's order of operations; into ``out`` when given."""
    x = np.empty(pixels.shape, np.float32) if out is None else out
    np.copyto(x, pixels)
    x /= np.float32(255.0)
    x -= np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    x /= np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return x


def sigmoid(x: NDArray[np.float32], out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
    """The logistic function, into ``out`` (a fresh array when not given)."""
    y: NDArray[np.float32] = np.negative(x, out=out)
    np.exp(y, out=y)
    y += np.float32(1.0)
    np.reciprocal(y, out=y)
    return y


def merge_separators(prob: NDArray[np.float32]) -> NDArray[np.float32]:
    """``(N, K, H, W)`` -> ``(N, min(K, 2), H, W)``: building, then the max over the separator
    classes (written over channel 1 of ``prob``; the result is a view of it)."""
    if prob.shape[1] <= 2:
        return prob
    np.max(prob[:, 1:], axis=1, out=prob[:, 1])
    return prob[:, :2]


def to_uint8_probability(prob: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Probabilities in [0, 1] quantized to 0-255 with rounding (``prob`` is scaled in place)."""
    prob *= np.float32(255.0)
    prob += np.float32(0.5)
    np.clip(prob, 0, 255, out=prob)
    out = np.empty(prob.shape, dtype=np.uint8)
    np.copyto(out, prob, casting="unsafe")
    return out


@dataclass
class ArraySegmenter:
    """:class:`pipeline.model.infer.Segmenter` around a forward pass on arrays (no torch).

    ``run`` takes inputs already padded to ``output_stride``; ``predict`` pads and crops around
    it. ``runtime`` and ``device`` are what the run records of where the model ran.
    """

    run: Run
    output_stride: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flips: int = 0
    runtime: str = "openvino"
    device: str = "cpu"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _work: Workspace = field(default_factory=Workspace, repr=False)

    def __post_init__(self) -> None:
        if self.flips not in FLIP_AXES:
            raise ConfigError(f"model.flips={self.flips}: use 0, 1 or 3 test-time flips")

    def _forward(self, x: NDArray[np.float32], role: str) -> NDArray[np.float32]:
        """Sigmoid probabilities of ``x``, in the workspace's array for ``role``."""
        height, width = int(x.shape[-2]), int(x.shape[-1])
        padded = np.ascontiguousarray(pad_to_stride(x, self.output_stride), dtype=np.float32)
        logits = self.run(padded)[..., :height, :width]
        return sigmoid(logits, out=self._work.get(role, logits.shape))

    def probabilities(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Sigmoid probabilities of a normalized array at the model's GSD, averaged over the
        flips (one of the workspace's arrays)."""
        axes = FLIP_AXES[self.flips]
        if not axes:
            return self._forward(x, "prob")
        height, width = int(x.shape[-2]), int(x.shape[-1])
        x = pad_to_stride(x, self.output_stride)
        prob = self._forward(x, "prob")
        for a in axes:
            prob += np.flip(self._forward(np.flip(x, a), "flipped"), a)
        prob /= np.float32(1 + len(axes))
        return prob[..., :height, :width]

    def predict(self, pixels: NDArray[np.uint8], *, scale: float = 1.0) -> NDArray[np.uint8]:
        with self._lock:
            x = normalize(pixels, mean=self.mean, std=self.std, out=self._work.get("pixels", pixels.shape))
            size = (int(x.shape[-2]), int(x.shape[-1]))
            target = model_shape(size[0], size[1], scale)
            if target != size:
                x = resize_bilinear(x, target, antialias=True, work=self._work, role="in")
            prob = merge_separators(self.probabilities(x))
            if target != size:
                prob = resize_bilinear(prob, size, work=self._work, role="back")
            return to_uint8_probability(prob)


#: Normalized brightness (-1 black, 1 white) above which the pipeline-only stand-in sees a building.
BRIGHTNESS_CUT = -0.1


@dataclass(frozen=True)
class CellBrightness:
    """No network: the pipeline's own ceiling (``footprints bench``'s pipeline-only mode).

    Logits of the model's shape from the brightness averaged over each ``output_stride`` cell
    (cells cut by the edge average the pixels they hold) and upsampled bilinearly, steep enough
    that bright cells come out confident (a cell 0.1 above :data:`BRIGHTNESS_CUT` has probability
    0.77, 0.3 above it 0.97), so the later stages see blobs on the model's cells to split,
    vectorize and deliver (not speckle, not nothing); the separator channels are low, so the split
    keeps each blob whole. On the demo scene about a quarter of the cells are brighter than the cut.
    """

    classes: int
    output_stride: int

    def __call__(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        n, _, height, width = x.shape
        s = self.output_stride
        rows, cols = -(-height // s), -(-width // s)
        grey = np.zeros((n, 1, rows * s, cols * s), dtype=np.float32)
        count = np.zeros((1, 1, rows * s, cols * s), dtype=np.float32)
        grey[..., :height, :width] = x.mean(axis=1, keepdims=True)
        count[..., :height, :width] = 1.0
        sums = grey.reshape(n, 1, rows, s, cols, s).sum(axis=(3, 5))
        cells = sums / count.reshape(1, 1, rows, s, cols, s).sum(axis=(3, 5))
        logits = np.float32(12.0) * (resize_bilinear(cells, (height, width)) - np.float32(BRIGHTNESS_CUT))
        low = np.float32(-4.0) - np.abs(logits)
        return np.concatenate([logits] + [low] * (self.classes - 1), axis=1)
