"""Inference: turn batches of uint8 tiles into uint8 building probabilities.

A :class:`Segmenter` is anything that maps ``(N, 3, H, W)`` uint8 pixels to
``(N, H, W)`` uint8 probabilities (0-255). :class:`TorchSegmenter` wraps DeepLabV3;
tests swap in deterministic local operators. A :class:`ModelSource` is the small,
picklable recipe that a Dask worker turns into a segmenter once, and caches.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from pipeline.core.digest import file_sha256
from pipeline.core.errors import CheckpointError, ConfigError
from pipeline.model.arrays import FLIP_AXES, model_shape
from pipeline.model.header import read_checkpoint_metadata, tensors_match_header

if TYPE_CHECKING:  # torch is imported where the torch runtime runs, never by the client
    import torch


class Segmenter(Protocol):
    """Maps uint8 pixels ``(N, 3, H, W)`` to uint8 probabilities ``(N, K, H, W)``.

    Channel 0 is the building probability; a model with separator classes (boundary,
    contact, or both) adds channel 1, the larger of their probabilities. ``scale`` is the
    resampling factor from input pixels to model pixels (input GSD / model GSD): the
    segmenter resamples its input by it and its output back, so callers always see the
    input grid.
    """

    def predict(self, pixels: NDArray[np.uint8], *, scale: float = 1.0) -> NDArray[np.uint8]: ...


class Forward(Protocol):
    """Normalized ``(N, 3, H, W)`` float tensor -> logits ``(N, K, H, W)``, on the segmenter's device."""

    output_stride: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TorchForward:
    """PyTorch eager on the module's device, in channels-last memory format."""

    module: torch.nn.Module
    output_stride: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        out: torch.Tensor = self.module(x.contiguous(memory_format=torch.channels_last))
        return out


def torch_forward(module: torch.nn.Module, device: torch.device) -> TorchForward:
    import torch

    module = module.eval().to(device).to(memory_format=torch.channels_last)
    stride = int(getattr(getattr(module, "spec", None), "output_stride", 1))
    return TorchForward(module=module, output_stride=stride)


class ModelSource(Protocol):
    """A picklable, hashable recipe for a :class:`Segmenter`."""

    def load(self) -> Segmenter: ...


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; a name torch does not know, or CUDA
    where there is none, is a :class:`ConfigError`."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(
            f"device {device!r} is not a torch device ({exc}); use auto, cpu or cuda[:N]"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available here; use cpu or auto")
    return resolved


def to_uint8_probability(prob: torch.Tensor) -> NDArray[np.uint8]:
    """Quantize probabilities in [0, 1] to 0-255 with rounding."""
    import torch

    q = torch.clamp(prob * 255.0 + 0.5, 0, 255).to(torch.uint8)
    return np.ascontiguousarray(q.cpu().numpy())


def merge_separators(prob: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) -> (N, min(K, 2), H, W): building, then the max over the separator classes.

    A pixel is a separator when it is on a building's border *or* in the strip between two
    buildings, so the split's seeds are body x (1 - border) x (1 - separation).
    """
    import torch

    if prob.shape[1] <= 2:
        return prob
    return torch.cat([prob[:, :1], prob[:, 1:].amax(dim=1, keepdim=True)], dim=1)


def output_stride(model: Any) -> int:
    """A forward's ``output_stride`` (a bare DeepLabV3 module: its spec's; else 1)."""
    stride: Any = getattr(model, "output_stride", None)
    return int(stride or getattr(getattr(model, "spec", None), "output_stride", 1))


def normalize(
    pixels: NDArray[np.uint8], *, mean: Sequence[float], std: Sequence[float], device: torch.device
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float tensor on ``device``, scaled to [0, 1] and normalized with
    ``mean`` and ``std`` (on CUDA through pinned memory). Training normalizes its crops with it too."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(pixels))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.float().div_(255.0)
    mean_t = torch.tensor(tuple(mean), device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(tuple(std), device=device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


@dataclass
class TorchSegmenter:
    """DeepLabV3 (or any logits model) on a device, under ``torch.inference_mode``.

    Pixels are scaled to [0, 1] and normalized with the checkpoint's mean and std,
    resampled to the model's GSD (bilinear, antialiased), and the per-class sigmoid
    probabilities are resampled back to the input window. ``model`` is a PyTorch forward pass
    (the ``torch`` runtime, training's validation); the exported runtimes run the same steps on
    numpy arrays in :class:`pipeline.model.arrays.ArraySegmenter`, without torch. On CUDA the
    pixels go through pinned host memory and the forward pass runs under fp16 autocast.

    ``flips`` (0, 1 or 3) averages the probabilities over that many flipped copies as well
    (test-time augmentation, as in the DeepLabV3 paper's evaluation). The input is first padded
    on the bottom/right to a multiple of the model's output stride, as the model itself would
    pad it, so a flipped copy computes on the same stride lattice as the original.
    """

    model: Forward
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    threads: int | None = None
    flips: int = 0
    runtime: str = "torch"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.flips not in FLIP_AXES:
            raise ConfigError(f"model.flips={self.flips}: use 0, 1 or 3 test-time flips")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                return torch.sigmoid(self.model(x).float())
        return torch.sigmoid(self.model(x).float())

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities of a normalized tensor at the model's GSD, averaged over the flips."""
        from pipeline.model.deeplab import pad_to_stride

        dims = FLIP_AXES[self.flips]
        if not dims:
            return self._forward(x)
        height, width = int(x.shape[-2]), int(x.shape[-1])
        x = pad_to_stride(x, output_stride(self.model))
        prob = self._forward(x)
        for d in dims:
            prob = prob + self._forward(x.flip(d)).flip(d)
        return (prob / (1 + len(dims)))[..., :height, :width]

    def normalize(self, pixels: NDArray[np.uint8]) -> torch.Tensor:
        """:func:`normalize` with this segmenter's mean, std and device."""
        return normalize(pixels, mean=self.mean, std=self.std, device=self.device)

    def predict(self, pixels: NDArray[np.uint8], *, scale: float = 1.0) -> NDArray[np.uint8]:
        import torch
        import torch.nn.functional as F

        with self._lock, torch.inference_mode():
            if self.threads and self.device.type == "cpu":
                # OpenMP thread counts are per calling thread: Dask runs tasks on executor
                # threads started with OMP_NUM_THREADS=1, so set it where we compute.
                torch.set_num_threads(self.threads)
            x = self.normalize(pixels)
            size = tuple(x.shape[-2:])
            target = model_shape(size[0], size[1], scale)
            if target != size:
                x = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=True)
            prob = merge_separators(self.probabilities(x))
            if target != size:
                prob = F.interpolate(prob, size=size, mode="bilinear", align_corners=False)
            return to_uint8_probability(prob)


@dataclass(frozen=True)
class CheckpointSource:
    """Load a safetensors checkpoint (see :mod:`pipeline.model.checkpoint`) into ``runtime``
    (``model.runtime``; see :mod:`pipeline.model.runtimes`)."""

    path: str
    device: str = "auto"
    threads: int | None = None
    flips: int = 0
    runtime: str = "auto"

    def load(self) -> Segmenter:
        from pipeline.model.runtimes import (
            EXPORTED,
            PIPELINE_ONLY,
            device_type,
            exported_segmenter,
            resolve_runtime,
        )

        meta = read_checkpoint_metadata(self.path)
        norm = meta.get("normalization", {})
        kind = device_type(self.device)
        runtime = resolve_runtime(self.runtime, kind)
        if kind == "cpu" and runtime in (*EXPORTED, PIPELINE_ONLY):  # no torch in this process
            return exported_segmenter(
                self.path, meta, runtime=runtime, threads=self.threads, flips=self.flips
            )
        import torch

        from pipeline.model.checkpoint import load_checkpoint

        if self.threads:
            torch.set_num_threads(self.threads)
        device = resolve_device(self.device)
        return TorchSegmenter(
            model=torch_forward(load_checkpoint(self.path).model, device),
            mean=tuple(norm.get("mean", (0.5, 0.5, 0.5))),
            std=tuple(norm.get("std", (0.5, 0.5, 0.5))),
            device=device,
            threads=self.threads,
            flips=self.flips,
            runtime=runtime,
        )

    def describe(self) -> dict[str, Any]:
        """What the run records of the checkpoint, once its header and tensors were checked here
        (on the client: a bad checkpoint fails before any worker starts)."""
        meta = read_checkpoint_metadata(self.path)
        if not tensors_match_header(self.path, meta):
            # no digest (an older checkpoint) or another file's: name what is wrong, with torch
            from pipeline.model.checkpoint import check_checkpoint

            check_checkpoint(self.path)
            if tensors_match_header(self.path, meta) is False:
                raise CheckpointError(
                    f"{self.path}: its tensors are not the ones its header was written with (a "
                    "header copied onto other weights?); re-save the checkpoint with save_checkpoint"
                )
        return {
            "id": Path(self.path).stem,
            "sha256": file_sha256(self.path),
            "path": self.path,
            "trained": True,
            "threshold": float(meta.get("threshold", 0.5)),
            "gsd_m": meta.get("gsd_m"),
            "output_stride": meta.get("output_stride"),
            "classes": list(meta.get("classes", ["building"])),
        }


UNTRAINED_WARNING = (
    "no trained checkpoint found in models/ and none given with --model: running an "
    "UNTRAINED DeepLabV3, so the output is meaningless"
)


@dataclass(frozen=True)
class UntrainedSource:
    """A randomly initialised DeepLabV3 (seeded), for runs before a checkpoint exists."""

    encoder: str = "efficientnet-lite0"
    output_stride: int = 16
    device: str = "auto"
    seed: int = 0
    threads: int | None = None
    flips: int = 0
    runtime: str = "torch"  # or the bench's pipeline-only stand-in; nothing to export without a checkpoint

    def load(self) -> Segmenter:
        from pipeline.model.runtimes import PIPELINE_ONLY

        if self.runtime == PIPELINE_ONLY:  # the stand-in needs no network, hence no torch
            from pipeline.model.arrays import ArraySegmenter, CellBrightness

            run = CellBrightness(classes=2, output_stride=self.output_stride)  # building, boundary
            return ArraySegmenter(
                run=run, output_stride=self.output_stride, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                flips=self.flips, runtime=PIPELINE_ONLY,
            )  # fmt: skip
        import torch

        from pipeline.model.deeplab import ModelSpec, build_model

        if self.threads:
            torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)
        spec = ModelSpec(encoder=self.encoder, encoder_weights=None, output_stride=self.output_stride)
        device = resolve_device(self.device)
        return TorchSegmenter(
            model=torch_forward(build_model(spec), device),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            device=device,
            threads=self.threads,
            flips=self.flips,
        )

    def describe(self) -> dict[str, Any]:
        warnings.warn(UNTRAINED_WARNING, UserWarning, stacklevel=2)
        return {
            "id": f"untrained-deeplabv3-{self.encoder}-os{self.output_stride}",
            "sha256": None,
            "path": None,
            "trained": False,
            "threshold": 0.5,
            "gsd_m": None,
            "output_stride": self.output_stride,
            "classes": ["building", "boundary"],
        }


_CACHE: dict[Any, Segmenter] = {}
_CACHE_LOCK = threading.Lock()


def cached_segmenter(source: ModelSource) -> Segmenter:
    """The worker-local segmenter for ``source``, loaded once per process."""
    with _CACHE_LOCK:
        seg = _CACHE.get(source)
        if seg is None:
            seg = source.load()
            _CACHE[source] = seg
        return seg


def cached_count() -> int:
    """How many segmenters this process has loaded (for tests)."""
    return len(_CACHE)
