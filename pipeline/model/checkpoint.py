"""Checkpoints: one safetensors file of weights plus a JSON description; never pickle.

A checkpoint is a single ``.safetensors`` file. Its tensors are the model's ``state_dict``;
its header's ``__metadata__`` has one key, ``"footprints"``, whose value is a JSON object
(safetensors metadata values must be strings) like::

    {"format_version": 1, "architecture": "deeplabv3", "encoder": "efficientnet-lite0",
     "output_stride": 16, "base_rates": [6, 12, 18], "atrous_rates": [6, 12, 18],
     "in_channels": 3, "aspp_channels": 256, "dropout": 0.0,
     "classes": ["building", "boundary"], "bands": ["red", "green", "blue"],
     "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
     "gsd_m": 0.3, "threshold": 0.5, "training_data": "...", "split": "...",
     "validation_metrics": {"iou": 0.8}, "code_version": "...", "created": "...Z"}

Loading reads the header with ``safetensors.safe_open`` and the tensors with
``safetensors.torch.load_file``; nothing is unpickled, so a checkpoint cannot run code.
Files are written atomically: a temporary file in the same directory, fsynced, then
``os.replace``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from pipeline.core.digest import file_sha256
from pipeline.core.errors import CheckpointError, ConfigError, ModelError
from pipeline.io.storage import FILE_MODE
from pipeline.model.deeplab import DeepLabV3, ModelSpec, build_model
from pipeline.model.encoders import IMAGENET_LITE_MEAN, IMAGENET_LITE_STD
from pipeline.model.header import (
    METADATA_KEY,
    TENSORS_KEY,
    read_checkpoint_metadata,
    tensor_digest,
    tensor_shapes,
)

__all__ = [
    "ARCHITECTURE",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "CheckpointMetadata",
    "LoadedModel",
    "at_output_stride",
    "check_checkpoint",
    "load_checkpoint",
    "read_checkpoint_metadata",
    "save_checkpoint",
    "spec_from_metadata",
]

ARCHITECTURE = "deeplabv3"
FORMAT_VERSION = 1
_SPEC_KEYS = ("encoder", "output_stride", "base_rates", "classes", "in_channels")


@dataclass(frozen=True)
class CheckpointMetadata:
    """What a checkpoint says about its training, beside the architecture (from ModelSpec).

    ``bands`` name the input channels in order and must number ``spec.in_channels``, as must
    ``mean`` and ``std`` (applied to inputs scaled to [0, 1]). ``gsd_m`` is the ground sample
    distance of the training imagery in metres, or None when unknown. ``threshold`` is the
    decision threshold on the building probability. ``created`` (ISO 8601, UTC) is filled in
    by :func:`save_checkpoint` when None.
    """

    bands: tuple[str, ...] = ("red", "green", "blue")
    mean: tuple[float, ...] = IMAGENET_LITE_MEAN
    std: tuple[float, ...] = IMAGENET_LITE_STD
    gsd_m: float | None = None
    threshold: float = 0.5
    training_data: str = ""
    split: str = ""
    validation_metrics: Mapping[str, float] = field(default_factory=dict)
    code_version: str = ""
    created: str | None = None

    def __post_init__(self) -> None:
        if not (len(self.bands) == len(self.mean) == len(self.std)) or not self.bands:
            raise ConfigError(
                f"checkpoint metadata: bands {list(self.bands)}, mean {list(self.mean)} and std "
                f"{list(self.std)} must be non-empty and of equal length; give one per channel"
            )
        if any(not s > 0 for s in self.std):
            raise ConfigError(f"checkpoint metadata: std {list(self.std)} must be > 0")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"checkpoint metadata: threshold {self.threshold} must be in [0, 1]; e.g. 0.5")
        if self.gsd_m is not None and not (math.isfinite(self.gsd_m) and self.gsd_m > 0):
            raise ConfigError(f"checkpoint metadata: gsd_m {self.gsd_m} must be a positive number or None")

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON fields this metadata contributes to a checkpoint header."""
        return {
            "bands": list(self.bands),
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "gsd_m": self.gsd_m,
            "threshold": self.threshold,
            "training_data": self.training_data,
            "split": self.split,
            "validation_metrics": dict(self.validation_metrics),
            "code_version": self.code_version,
            "created": self.created,
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> CheckpointMetadata:
        """Inverse of :meth:`to_json_dict` (extra keys are ignored)."""
        norm = data.get("normalization") or {}
        gsd = data.get("gsd_m")
        return cls(
            bands=tuple(str(b) for b in data.get("bands", cls.bands)),
            mean=tuple(float(v) for v in norm.get("mean", IMAGENET_LITE_MEAN)),
            std=tuple(float(v) for v in norm.get("std", IMAGENET_LITE_STD)),
            gsd_m=None if gsd is None else float(gsd),
            threshold=float(data.get("threshold", 0.5)),
            training_data=str(data.get("training_data", "")),
            split=str(data.get("split", "")),
            validation_metrics={str(k): float(v) for k, v in (data.get("validation_metrics") or {}).items()},
            code_version=str(data.get("code_version", "")),
            created=None if data.get("created") is None else str(data["created"]),
        )


@dataclass(frozen=True)
class LoadedModel:
    """A loaded checkpoint: the model in eval mode and what its header says."""

    model: DeepLabV3
    spec: ModelSpec
    metadata: dict[str, Any]
    info: CheckpointMetadata
    sha256: str
    id: str
    path: Path


def _spec_json(spec: ModelSpec) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "encoder": spec.encoder,
        "output_stride": spec.output_stride,
        "base_rates": list(spec.base_rates),
        "atrous_rates": list(spec.rates),
        "in_channels": spec.in_channels,
        "aspp_channels": spec.aspp_channels,
        "dropout": spec.dropout,
        "classes": list(spec.classes),
    }


def _header_json(spec: ModelSpec, metadata: CheckpointMetadata, digest: str) -> str:
    if len(metadata.bands) != spec.in_channels:
        raise ConfigError(
            f"checkpoint metadata: {len(metadata.bands)} bands {list(metadata.bands)} but the "
            f"model has in_channels={spec.in_channels}; give one band, mean and std per channel"
        )
    if metadata.created is None:
        now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        metadata = dataclasses.replace(metadata, created=now)
    record = _spec_json(spec) | metadata.to_json_dict() | {TENSORS_KEY: digest}
    try:
        return json.dumps(record, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"checkpoint metadata cannot be stored as JSON ({exc}); "
            "use finite numbers and strings only (no NaN, no inf)"
        ) from exc


def _same_architecture(a: ModelSpec, b: ModelSpec) -> bool:
    return dataclasses.replace(a, encoder_weights=None) == dataclasses.replace(b, encoder_weights=None)


def _write_atomic(path: Path, tensors: dict[str, Tensor], header: str) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        safetensors.torch.save_file(tensors, str(tmp), metadata={METADATA_KEY: header})
        with tmp.open("rb+") as f:
            os.fchmod(f.fileno(), FILE_MODE)  # mkstemp's 0600 (safetensors keeps or remakes it)
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: DeepLabV3,
    spec: ModelSpec,
    metadata: CheckpointMetadata,
    half: bool = False,
) -> Path:
    """Write ``model``'s weights and a JSON description to ``path`` (one safetensors file).

    ``spec`` must describe ``model`` (``encoder_weights`` aside). Parent directories are
    created. The write is atomic: readers see the old file or the new one, never a mix.
    ``half`` stores floating-point tensors as fp16 (half the size; loading casts them back
    to the model's fp32). Returns the path written.
    """
    target = Path(path)
    if not _same_architecture(spec, model.spec):
        raise ModelError(
            f"{target}: spec {spec} does not describe the model (built from {model.spec}); "
            "pass the ModelSpec the model was built with"
        )
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    header = _header_json(spec, metadata, tensor_digest(_shapes(tensors)))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(target, tensors, header)
    except OSError as exc:
        raise CheckpointError(
            f"{target}: cannot write checkpoint ({exc}); check that the directory is "
            "writable and has free space"
        ) from exc
    return target


def spec_from_metadata(metadata: Mapping[str, Any], *, source: str = "checkpoint") -> ModelSpec:
    """Rebuild the ModelSpec (``encoder_weights=None``) a checkpoint header describes."""
    fix = "re-save the checkpoint with save_checkpoint"
    if metadata.get("architecture") != ARCHITECTURE:
        raise CheckpointError(
            f"{source}: architecture {metadata.get('architecture')!r} is not "
            f"{ARCHITECTURE!r}; pass a DeepLabV3 checkpoint"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: format_version {metadata.get('format_version')!r} is not supported "
            f"(expected {FORMAT_VERSION}); upgrade footprints or {fix}"
        )
    missing = [k for k in _SPEC_KEYS if k not in metadata]
    if missing:
        raise CheckpointError(f"{source}: header lacks {missing}; {fix}")
    try:
        rates = [int(r) for r in metadata["base_rates"]]
        if len(rates) != 3:
            raise ValueError(f"base_rates {rates} must be three rates")
        spec = ModelSpec(
            encoder=str(metadata["encoder"]),
            encoder_weights=None,
            output_stride=int(metadata["output_stride"]),
            base_rates=(rates[0], rates[1], rates[2]),
            classes=tuple(str(c) for c in metadata["classes"]),
            in_channels=int(metadata["in_channels"]),
            aspp_channels=int(metadata.get("aspp_channels", 256)),
            dropout=float(metadata.get("dropout", 0.0)),
        )
    except (ModelError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: header describes an invalid model ({exc}); {fix}") from exc
    stored = metadata.get("atrous_rates")
    if stored is not None and tuple(stored) != spec.rates:
        raise CheckpointError(
            f"{source}: atrous_rates {stored} do not match output_stride "
            f"{spec.output_stride} and base_rates {list(spec.base_rates)}; {fix}"
        )
    return spec


def _check_state(path: Path, model: DeepLabV3, state: Mapping[str, Tensor]) -> None:
    _check_shapes(path, _shapes(model.state_dict()), _shapes(state))


def _shapes(tensors: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _check_shapes(
    path: Path, expected: Mapping[str, tuple[int, ...]], state: Mapping[str, tuple[int, ...]]
) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k] != state[k])
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not fit the model in its header (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}; {len(missing)}/"
            f"{len(unexpected)}/{len(wrong)} in all); re-save the checkpoint with save_checkpoint"
        )


def check_checkpoint(path: str | os.PathLike[str]) -> None:
    """What :func:`load_checkpoint` checks, from the header alone, so that the client catches it.

    The header must describe a valid model, and the file's tensor names and shapes must be
    that model's (a foreign checkpoint with a copied header fails here, not on a worker).
    The model is built on torch's ``meta`` device: no memory, no weights read.
    """
    source = Path(path)
    metadata = read_checkpoint_metadata(source)
    spec = spec_from_metadata(metadata, source=str(source))
    _metadata_info(source, metadata)
    found = tensor_shapes(source)
    with torch.device("meta"):
        model = build_model(spec)
    _check_shapes(source, _shapes(model.state_dict()), found)


def _metadata_info(source: Path, metadata: Mapping[str, Any]) -> CheckpointMetadata:
    try:
        return CheckpointMetadata.from_json_dict(metadata)
    except (ConfigError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"{source}: header metadata is invalid ({exc}); re-save it with save_checkpoint"
        ) from exc


def load_checkpoint(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a checkpoint written by :func:`save_checkpoint`; the model is in eval mode.

    Uses only safetensors (never pickle). Raises :class:`CheckpointError` when the file is
    missing, is not a safetensors file, lacks the header, or its weights do not fit.
    """
    source = Path(path)
    metadata = read_checkpoint_metadata(source)
    spec = spec_from_metadata(metadata, source=str(source))
    info = _metadata_info(source, metadata)
    try:
        state = safetensors.torch.load_file(str(source), device="cpu")
    except Exception as exc:  # SafetensorError for truncated or corrupted data
        raise CheckpointError(
            f"{source}: cannot read the weights ({exc}); the file is truncated or corrupted, "
            "copy or re-save it"
        ) from exc
    model = build_model(spec)
    _check_state(source, model, state)
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    return LoadedModel(
        model=model.eval(),
        spec=spec,
        metadata=metadata,
        info=info,
        sha256=file_sha256(source),
        id=source.stem,
        path=source,
    )


def at_output_stride(loaded: LoadedModel, output_stride: int) -> tuple[DeepLabV3, ModelSpec]:
    """The loaded weights in a model at ``output_stride`` (8 or 16), and its spec.

    Output stride changes only the encoder's last strides and dilations and the ASPP rates
    (6, 12, 18 at 16; 12, 24, 36 at 8), not the weights' shapes: an OS-16 model runs at OS 8
    as the DeepLabV3 paper evaluates it, and a stage trained at OS 8 starts from it.
    """
    if output_stride == loaded.spec.output_stride:
        return loaded.model, loaded.spec
    spec = dataclasses.replace(loaded.spec, output_stride=output_stride)
    model = build_model(spec)  # raises for a stride DeepLabV3 does not support
    with torch.no_grad():
        model.load_state_dict(loaded.model.state_dict(), strict=True)
    return model.eval(), spec
