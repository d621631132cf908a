"""DeepLabV3 as in Chen et al. 2017: structure, geometry formulas, encoders, shapes."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pipeline.core.errors import ModelError
from pipeline.model.deeplab import (
    ASPP,
    DeepLabV3,
    ModelSpec,
    PoolingBatchNorm2d,
    atrous_rates,
    build_model,
    check_rates,
    conv_output_size,
    degenerate_rates,
    effective_kernel,
    feature_map_size,
    valid_tap_fraction,
)


def _spec(**kwargs: object) -> ModelSpec:
    fields: dict[str, object] = {"encoder_weights": None} | kwargs
    return ModelSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def os16() -> DeepLabV3:
    torch.manual_seed(0)
    return build_model(_spec(output_stride=16)).eval()


@pytest.fixture(scope="module")
def os8() -> DeepLabV3:
    torch.manual_seed(0)
    return build_model(_spec(output_stride=8)).eval()


def _only_conv(module: nn.Module) -> nn.Conv2d:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1
    return convs[0]


# --------------------------------------------------------------------------- formulas


def test_atrous_rates_follow_output_stride() -> None:
    assert atrous_rates(16, (6, 12, 18)) == (6, 12, 18)
    assert atrous_rates(8, (6, 12, 18)) == (12, 24, 36)


@pytest.mark.parametrize("output_stride", [4, 32, 0])
def test_unsupported_output_stride_raises(output_stride: int) -> None:
    with pytest.raises(ModelError, match=f"output_stride={output_stride}"):
        atrous_rates(output_stride, (6, 12, 18))
    with pytest.raises(ModelError):
        ModelSpec(output_stride=output_stride, encoder_weights=None)


def test_effective_kernel() -> None:
    assert effective_kernel(3, 1) == 3
    assert effective_kernel(3, 2) == 5
    assert effective_kernel(3, 6) == 13
    assert effective_kernel(3, 65) == 131
    assert effective_kernel(1, 18) == 1
    with pytest.raises(ModelError):
        effective_kernel(3, 0)


def test_conv_output_size() -> None:
    assert conv_output_size(65, 3) == 63
    assert conv_output_size(65, 3, p=1) == 65
    assert conv_output_size(65, 3, p=6, r=6) == 65  # "same" atrous conv keeps the size
    assert conv_output_size(512, 3, s=2, p=1) == 256
    assert conv_output_size(513, 3, s=2, p=1) == 257
    assert conv_output_size(32, 3, p=18, r=18) == 32
    with pytest.raises(ModelError):
        conv_output_size(5, 3, r=6)


def test_feature_map_size_is_ceil() -> None:
    assert feature_map_size(512, 16) == 32
    assert feature_map_size(512, 8) == 64
    assert feature_map_size(500, 16) == 32
    assert feature_map_size(380, 8) == 48
    assert feature_map_size(65 * 16, 16) == 65


def test_rate_65_on_65_map_degenerates_to_1x1() -> None:
    # Paper section 3.3: rate close to the feature-map size leaves only the centre tap.
    assert degenerate_rates(65 * 16, 16, [65]) == [65]
    assert degenerate_rates(65 * 8, 8, [6, 12, 18, 64, 65, 100]) == [65, 100]
    assert valid_tap_fraction(65, 65) == pytest.approx(1 / 9)
    assert valid_tap_fraction(65, 64) > 1 / 9
    assert valid_tap_fraction(65, 1) > 0.95


def test_default_rates_fine_on_512_tiles() -> None:
    assert degenerate_rates(512, 16, atrous_rates(16, (6, 12, 18))) == []
    assert degenerate_rates(512, 8, atrous_rates(8, (6, 12, 18))) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_rates(512, 16, (6, 12, 18)) == []


def test_check_rates_warns_with_details() -> None:
    with pytest.warns(UserWarning) as record:
        bad = check_rates(256, 16, (6, 12, 18))
    assert bad == [18]
    message = str(record[0].message)
    for part in ("tile size 256", "output stride 16", "16x16", "[18]"):
        assert part in message


# --------------------------------------------------------------------------- structure


def test_spec_defaults() -> None:
    spec = ModelSpec()
    assert spec.encoder == "efficientnet-lite0"
    assert spec.encoder_weights == "imagenet"
    assert spec.classes == ("building", "boundary")
    assert spec.num_classes == 2
    assert spec.rates == (6, 12, 18)
    assert ModelSpec(classes=("a", "b", "c")).num_classes == 3


@pytest.mark.parametrize(("model_name", "rates"), [("os16", (6, 12, 18)), ("os8", (12, 24, 36))])
def test_aspp_branches(model_name: str, rates: tuple[int, ...], request: pytest.FixtureRequest) -> None:
    model: DeepLabV3 = request.getfixturevalue(model_name)
    aspp = model.aspp
    assert isinstance(aspp, ASPP)
    assert len(aspp.branches) + 1 == 5  # 1x1, three atrous, image pooling
    convs = [_only_conv(branch) for branch in aspp.branches]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (3, 3), (3, 3)]
    assert [c.dilation[0] for c in convs[1:]] == list(rates)
    assert [c.padding[0] for c in convs[1:]] == list(rates)
    for branch, conv in zip(aspp.branches, convs, strict=True):
        assert conv.out_channels == 256
        layers = list(branch.children())
        assert isinstance(layers[1], nn.BatchNorm2d) and isinstance(layers[2], nn.ReLU)
    pooling = aspp.pooling
    assert isinstance(pooling.pool, nn.AdaptiveAvgPool2d) and pooling.pool.output_size == 1
    assert pooling.conv.kernel_size == (1, 1) and pooling.conv.out_channels == 256
    assert isinstance(pooling.bn, PoolingBatchNorm2d)


def test_projection_and_classifier(os16: DeepLabV3) -> None:
    project = list(os16.aspp.project.children())
    conv, bn, relu = project[0], project[1], project[2]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
    assert conv.in_channels == 5 * 256 and conv.out_channels == 256
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    assert not any(isinstance(m, nn.Conv2d) for m in project[1:])
    classifier = os16.classifier
    assert isinstance(classifier, nn.Conv2d) and classifier.kernel_size == (1, 1)
    assert classifier.out_channels == 2 and classifier.bias is not None


def test_every_aspp_conv_is_followed_by_batch_norm(os16: DeepLabV3) -> None:
    layers = [m for m in os16.aspp.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6  # five branches + projection
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            assert isinstance(layers[i + 1], nn.BatchNorm2d)
            assert layer.bias is None


def test_no_3x3_conv_after_aspp(os16: DeepLabV3) -> None:
    head = [os16.aspp.project, os16.classifier]
    for module in head:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                assert m.kernel_size == (1, 1)
    top_level = [name for name, _ in os16.named_children()]
    assert top_level == ["encoder", "aspp", "classifier"]


@pytest.mark.parametrize(("model_name", "size"), [("os16", 32), ("os8", 64)])
def test_encoder_output_stride(model_name: str, size: int, request: pytest.FixtureRequest) -> None:
    model: DeepLabV3 = request.getfixturevalue(model_name)
    with torch.no_grad():
        feats = model.features(torch.zeros(1, 3, 512, 512))
    assert feats.shape[-2:] == (size, size)
    assert feats.shape[1] == 320  # EfficientNet-Lite0's last stage


def test_output_shape_for_odd_input(os16: DeepLabV3) -> None:
    with torch.no_grad():
        logits = os16(torch.rand(1, 3, 500, 380))
    assert logits.shape == (1, 2, 500, 380)
    assert torch.isfinite(logits).all()


def test_output_shape_os8_and_tiny_input(os8: DeepLabV3) -> None:
    with torch.no_grad():
        assert os8(torch.rand(2, 3, 37, 21)).shape == (2, 2, 37, 21)
        assert os8(torch.rand(1, 3, 5, 3)).shape == (1, 2, 5, 3)


def test_train_mode_batch_one_and_backward() -> None:
    torch.manual_seed(0)
    model = build_model(_spec()).train()
    stats = model.aspp.pooling.bn.running_mean
    assert stats is not None
    before = stats.clone()
    logits = model(torch.rand(1, 3, 64, 64))
    logits.mean().backward()
    assert model.classifier.weight.grad is not None
    assert torch.equal(stats, before)  # batch of one: no update
    model(torch.rand(2, 3, 64, 64))
    assert not torch.equal(stats, before)


@pytest.mark.parametrize("encoder", ["resnet18", "tu-resnet18"])
def test_random_init_other_encoders(encoder: str) -> None:
    model = build_model(_spec(encoder=encoder, output_stride=8, classes=("building",))).eval()
    with torch.no_grad():
        assert model.features(torch.zeros(1, 3, 64, 64)).shape[-2:] == (8, 8)
        assert model(torch.rand(1, 3, 50, 38)).shape == (1, 1, 50, 38)


def test_other_encoder_with_imagenet_weights_raises() -> None:
    with pytest.raises(ModelError, match="encoder_weights=None"):
        build_model(ModelSpec(encoder="resnet18", encoder_weights="imagenet"))


def test_unknown_encoder_raises() -> None:
    with pytest.raises(ModelError, match="no-such-encoder"):
        build_model(_spec(encoder="no-such-encoder"))


def test_invalid_spec_values_raise() -> None:
    with pytest.raises(ModelError):
        ModelSpec(classes=())
    with pytest.raises(ModelError):
        ModelSpec(encoder_weights="ssl")
    with pytest.raises(ModelError):
        ModelSpec(in_channels=0)


def test_imagenet_weights_are_loaded_into_the_encoder() -> None:
    from pipeline.model.encoders import timm_state_dict

    model = build_model(ModelSpec(encoder="efficientnet-lite0", encoder_weights="imagenet"))
    expected = timm_state_dict(0)
    encoder_state = model.encoder.state_dict()
    for key in ("conv_stem.weight", "blocks.3.1.conv_dw.weight", "blocks.6.0.bn3.running_var"):
        assert torch.equal(encoder_state[f"model.{key}"], expected[key])


def test_four_band_input_with_imagenet_weights() -> None:
    model = build_model(ModelSpec(in_channels=4)).eval()
    stem = model.encoder.state_dict()["model.conv_stem.weight"]
    assert stem.shape[1] == 4
    with torch.no_grad():
        assert model(torch.rand(1, 4, 40, 40)).shape == (1, 2, 40, 40)


def test_pad_to_stride_reflects_or_replicates_bottom_right() -> None:
    from pipeline.model.deeplab import pad_to_stride

    x = torch.arange(2 * 5 * 7, dtype=torch.float32).view(1, 2, 5, 7)
    padded = pad_to_stride(x, 4)
    assert padded.shape == (1, 2, 8, 8)
    assert torch.equal(padded[..., :5, :7], x)
    assert torch.equal(padded[..., 5, :7], x[..., 3, :])  # reflect: row 5 mirrors row 3
    assert pad_to_stride(x, 1) is x
    tiny = torch.ones(1, 1, 2, 2)
    assert pad_to_stride(tiny, 16).shape == (1, 1, 16, 16)  # too small to reflect: replicate
