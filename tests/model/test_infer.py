"""Inference: normalization, GSD resampling, quantization and the worker-side cache."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.model.infer import TorchSegmenter, cached_count, cached_segmenter, model_shape
from pipeline.run.plan import plan_scene
from tests.conftest import coordinate_image


class Probe(torch.nn.Module):
    """Logits = first input channel (after normalization); records the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((int(x.shape[-2]), int(x.shape[-1])))
        return torch.cat([x[:, :1] * 4, -x[:, :1] * 4], dim=1)


def segmenter(probe: Probe) -> TorchSegmenter:
    return TorchSegmenter(model=probe, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), device=torch.device("cpu"))


def test_probabilities_are_sigmoid_of_normalized_logits() -> None:
    probe = Probe()
    px = np.zeros((1, 3, 8, 8), np.uint8)
    px[0, 0, :, :4] = 255
    out = segmenter(probe).predict(px)
    assert out.shape == (1, 2, 8, 8) and out.dtype == np.uint8
    # 255 -> x=1 -> logit 4 -> sigmoid 0.982 -> 250; 0 -> x=-1 -> logit -4 -> 5
    assert out[0, 0, 0, 0] == round(255 / (1 + np.exp(-4.0))) and out[0, 0, 0, 7] == round(
        255 / (1 + np.exp(4.0))
    )
    assert out[0, 1, 0, 0] == out[0, 0, 0, 7]


class ThreeClass(torch.nn.Module):
    """Logits of building, boundary and contact from the first three input channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3] * 4


def test_three_classes_reach_the_split_as_building_and_the_larger_separator() -> None:
    seg = TorchSegmenter(
        model=ThreeClass(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), device=torch.device("cpu")
    )
    px = np.zeros((1, 3, 4, 4), np.uint8)
    px[0, 0] = 255  # building everywhere
    px[0, 1, :, :2] = 255  # boundary on the left half
    px[0, 2, :2, :] = 255  # contact on the top half
    out = seg.predict(px)
    high, low = round(255 / (1 + np.exp(-4.0))), round(255 / (1 + np.exp(4.0)))
    assert out.shape == (1, 2, 4, 4) and (out[0, 0] == high).all()
    expected = np.full((4, 4), high)
    expected[2:, 2:] = low  # neither boundary nor contact
    np.testing.assert_array_equal(out[0, 1], expected)


def test_gsd_resampling_runs_the_model_at_its_gsd_and_returns_the_input_grid() -> None:
    probe = Probe()
    px = np.full((2, 3, 200, 120), 200, np.uint8)
    out = segmenter(probe).predict(px, scale=0.5)
    assert probe.seen == [(100, 60)]
    assert out.shape == (2, 2, 200, 120)
    assert np.ptp(out[:, 0]) <= 1  # a flat input stays flat through both resamplings
    segmenter(probe).predict(px, scale=1.03)
    assert probe.seen[-1] == (200, 120)  # within 5 %: no resampling


@pytest.mark.parametrize(
    ("shape", "scale", "expected"), [((512, 512), 0.6, (307, 307)), ((853, 853), 0.6, (512, 512))]
)
def test_model_shape(shape: tuple[int, int], scale: float, expected: tuple[int, int]) -> None:
    assert model_shape(*shape, scale) == expected


def test_plan_sizes_tiles_in_input_pixels(make_tif: Any) -> None:
    path = make_tif(coordinate_image(2000, 2000))  # 0.5 m pixels (conftest ORIGIN)
    cfg = load_config()
    plan = plan_scene(input_path=str(path), config=cfg, model_gsd_m=1.0)
    assert plan.gsd_m == pytest.approx(0.5) and plan.scale == pytest.approx(0.5)
    assert plan.grid.tile_size == 1024 and plan.grid.overlap == 128
    same = plan_scene(input_path=str(path), config=cfg, model_gsd_m=0.5)
    assert same.scale == 1.0 and same.grid.tile_size == 512
    override = load_config(**{"input.gsd_m": 1.0})
    assert plan_scene(input_path=str(path), config=override, model_gsd_m=1.0).scale == 1.0


def test_geographic_input_gsd_is_in_metres(make_tif: Any) -> None:
    from affine import Affine

    rio = Affine(4.4926e-6, 0, -43.684, 0, -4.4887e-6, -22.937)
    path = make_tif(coordinate_image(100, 100), crs="EPSG:4326", transform=rio)
    plan = plan_scene(input_path=str(path), config=load_config(), model_gsd_m=0.5)
    assert 0.45 < plan.gsd_m < 0.52


def test_model_is_loaded_once_per_process() -> None:
    from tests.operators import Box3x3Source

    @dataclass(frozen=True)
    class FreshSource(Box3x3Source):  # a source no other test has loaded in this process
        tag: str = "loaded-once"

    before = cached_count()
    a = cached_segmenter(FreshSource())
    b = cached_segmenter(FreshSource())
    assert a is b and cached_count() == before + 1


class Shifted(torch.nn.Module):
    """Logits at (r, c) = +-4 x the first channel at (r, c - 1): not flip-symmetric."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.spec = SimpleNamespace(output_stride=stride)
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((int(x.shape[-2]), int(x.shape[-1])))
        y = torch.zeros_like(x[:, :1])
        y[..., 1:] = x[:, :1, :, :-1]
        return torch.cat([4 * y, -4 * y], dim=1)


@pytest.mark.parametrize("flips", [1, 3])
def test_flips_average_flipped_predictions_on_the_stride_lattice(flips: int) -> None:
    import torch.nn.functional as F

    pixels = np.random.default_rng(flips).integers(0, 256, size=(1, 3, 6, 10), dtype=np.uint8)
    model = Shifted(stride=4)
    seg = TorchSegmenter(
        model=model, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), device=torch.device("cpu"), flips=flips
    )
    out = seg.predict(pixels)
    # by hand: pad to a multiple of the stride (8 x 12) first, then flip, predict, flip back, crop
    x = (torch.from_numpy(pixels).float() / 255 - 0.5) / 0.5
    xp = F.pad(x, (0, 2, 0, 2), mode="reflect")
    dims = [(-1,)] if flips == 1 else [(-1,), (-2,), (-1, -2)]
    prob = torch.sigmoid(model(xp))
    for d in dims:
        prob = prob + torch.sigmoid(model(xp.flip(d))).flip(d)
    expected = torch.clamp(prob / (1 + len(dims)) * 255 + 0.5, 0, 255).to(torch.uint8)[..., :6, :10]
    np.testing.assert_array_equal(out, expected.numpy())
    assert set(model.seen) == {(8, 12)}
    plain = TorchSegmenter(model=model, mean=(0.5,) * 3, std=(0.5,) * 3, device=torch.device("cpu"))
    assert not np.array_equal(plain.predict(pixels), out)


def test_flips_come_from_the_config_and_are_checked() -> None:
    from pipeline.core.errors import ConfigError
    from pipeline.run.model_choice import choose_model

    model = choose_model(model_path=None, config=load_config(None, **{"model.flips": 1}))
    assert model.source.flips == 1  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="flips"):
        load_config(None, **{"model.flips": 2})
    with pytest.raises(ConfigError, match="flips"):
        TorchSegmenter(model=Probe(), mean=(0.5,) * 3, std=(0.5,) * 3, device=torch.device("cpu"), flips=2)
