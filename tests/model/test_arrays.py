"""The segmenter on arrays (exported runtimes) computes what the torch segmenter computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.core.errors import ConfigError
from pipeline.model import arrays
from pipeline.model.arrays import ArraySegmenter, bilinear_taps, pad_to_stride, resize_bilinear
from pipeline.model.deeplab import pad_to_stride as torch_pad_to_stride
from pipeline.model.infer import TorchSegmenter

SHAPES = [(597, 597, 512, 512), (256, 256, 731, 731), (100, 37, 80, 90), (13, 7, 3, 2), (597, 600, 171, 172)]


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize(("height", "width", "out_h", "out_w"), SHAPES)
def test_resize_is_torchs_bilinear(height: int, width: int, out_h: int, out_w: int, antialias: bool) -> None:
    x = np.random.default_rng(height * width).standard_normal((2, 3, height, width)).astype(np.float32)
    want = F.interpolate(
        torch.from_numpy(x), size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=antialias
    ).numpy()
    got = resize_bilinear(x, (out_h, out_w), antialias=antialias)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-4  # float32 rounding in a different order of operations


def test_resize_taps_on_exact_cases() -> None:
    # halving without antialias: each output is the mean of the two inputs it straddles
    idx, w = bilinear_taps(4, 2, antialias=False)
    assert idx.tolist() == [[0, 1], [2, 3]] and np.allclose(w, 0.5)
    # halving with antialias: a triangle 2 px wide each side, weights 1/4 3/4 3/4 1/4 over four
    # inputs, cut at the edges and renormalized there
    x = np.arange(8, dtype=np.float32).reshape(1, 1, 1, 8)
    got = resize_bilinear(x, (1, 4), antialias=True)[0, 0, 0]
    assert np.allclose(
        got, [(0.75 * 1 + 0.25 * 2) / 1.75, 5 / 2, 9 / 2, (0.25 * 5 + 0.75 * 6 + 0.75 * 7) / 1.75]
    )
    assert np.array_equal(resize_bilinear(x, (1, 8)), x)  # same size: unchanged


@pytest.mark.parametrize(("height", "width"), [(30, 40), (3, 70), (32, 32), (5, 5)])
def test_padding_is_the_models(height: int, width: int) -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, height, width)).astype(np.float32)
    want = torch_pad_to_stride(torch.from_numpy(x), 16).numpy()
    assert np.array_equal(pad_to_stride(x, 16), want)


class _Net(torch.nn.Module):
    """A small fixed network on the stride lattice: 3 classes of logits from a strided conv, upsampled."""

    output_stride = 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = 4.0 * self.conv(torch_pad_to_stride(x, 8))
        return F.interpolate(logits, scale_factor=8, mode="bilinear", align_corners=False)[
            ..., : x.shape[-2], : x.shape[-1]
        ]


@pytest.mark.parametrize("flips", [0, 1, 3])
@pytest.mark.parametrize("scale", [1.0, 0.3 / 0.35, 2.0])
def test_the_array_segmenter_predicts_what_the_torch_segmenter_predicts(flips: int, scale: float) -> None:
    net = _Net().eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = TorchSegmenter(model=net, mean=mean, std=std, device=torch.device("cpu"), flips=flips)

    def run(x: np.ndarray) -> np.ndarray:
        assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0  # the exported graph's contract
        with torch.inference_mode():
            out: np.ndarray = net(torch.from_numpy(x)).numpy()
        return out

    seg = ArraySegmenter(run=run, output_stride=8, mean=mean, std=std, flips=flips)
    pixels = np.random.default_rng(1).integers(0, 256, (2, 3, 61, 75), dtype=np.uint8)
    want, got = ref.predict(pixels, scale=scale), seg.predict(pixels, scale=scale)
    assert got.shape == want.shape == (2, 2, 61, 75) and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.99  # a rounding edge now and then
    assert want.std() > 20  # probabilities that vary, not a flat field


def test_a_bad_flip_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.flips=2"):
        ArraySegmenter(run=lambda x: x, output_stride=8, mean=(0.5,) * 3, std=(0.5,) * 3, flips=2)


def test_merging_separators_and_quantizing() -> None:
    prob = np.zeros((1, 3, 2, 2), dtype=np.float32)
    prob[0, 1, 0, 0], prob[0, 2, 0, 0], prob[0, 2, 1, 1] = 0.2, 0.7, 0.4
    merged = arrays.merge_separators(prob)
    assert merged.shape == (1, 2, 2, 2) and merged[0, 1, 0, 0] == pytest.approx(0.7)
    assert arrays.to_uint8_probability(np.array([0.0, 0.5, 1.0, 0.998, 0.999], np.float32)).tolist() == [
        0,
        128,
        255,
        254,
        255,
    ]


def test_a_warm_segmenter_allocates_little_more_than_its_output() -> None:
    """Once warm, ``predict`` on a 597² tile resampled to 512² works in its workspace: beyond
    the uint8 output (2 x 597² bytes) it allocates under 1 MB. Dask's workers return freed
    memory to the system (``MALLOC_TRIM_THRESHOLD_``), so each fresh multi-megabyte array is
    paid in page faults; ``np.take`` with ``mode="raise"`` buffered a fresh copy of every output,
    which made ``predict`` 41 ms a tile instead of 18 there (measured)."""
    import tracemalloc

    logits = np.zeros((1, 2, 512, 512), np.float32)
    seg = ArraySegmenter(run=lambda x: logits, output_stride=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    pixels = np.random.default_rng(0).integers(0, 256, (1, 3, 597, 597), dtype=np.uint8)
    seg.predict(pixels, scale=0.857)  # warm: the workspace holds its arrays
    tracemalloc.start()
    try:
        out = seg.predict(pixels, scale=0.857)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (1, 2, 597, 597)
    assert peak - out.nbytes < 1 << 20
