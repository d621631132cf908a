"""Where the network runs (``model.runtime``): the forward pass of the segmenter.

A *forward* maps a normalized float tensor ``(N, 3, H, W)`` at the model's GSD to logits
``(N, K, H, W)``. Everything around it (normalizing, resampling to the model's GSD and back,
test-time flips, sigmoid, quantizing) stays in the one tiled-inference path of
:mod:`pipeline.model.infer`, whatever runs the network:

* ``torch``: PyTorch eager, channels-last (on CUDA under fp16 autocast, see the segmenter);
* ``onnxruntime``: ONNX Runtime's CPU execution provider on the cached ONNX export
  (:mod:`pipeline.model.export`);
* ``openvino`` and ``openvino-bf16``: OpenVINO's CPU plugin on the same file, in f32 or with
  ``INFERENCE_PRECISION_HINT=bf16`` (bf16 where the CPU has AVX-512 BF16 or AMX, f32 elsewhere);
* ``auto``: ``torch`` on CUDA, else :data:`CPU_DEFAULT`, the fastest CPU runtime whose masks
  agree with PyTorch fp32 (``scripts/bench_runtimes.py``; DESIGN.md, "The CPU runtime").

The exported runtimes take inputs padded to the output stride (the padding mode is chosen in
Python, see :func:`pipeline.model.deeplab.pad_to_stride`), so padding and cropping happen here, around
the exported graph, exactly as :meth:`pipeline.model.deeplab.DeepLabV3.forward` does them.

:data:`PIPELINE_ONLY` is no network at all: ``footprints bench`` uses it to measure what the
pipeline delivers when the model costs nothing.

Only worker processes import this module (it imports torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from pipeline.core.errors import ConfigError
from pipeline.model.deeplab import pad_to_stride

#: The values of ``model.runtime`` besides ``auto``.
RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime", "openvino", "openvino-bf16")
#: What ``auto`` means on a CPU: measured with scripts/bench_runtimes.py (DESIGN.md).
CPU_DEFAULT = "openvino"
#: The bench's stand-in for the network (not a config value).
PIPELINE_ONLY = "pipeline-only"
#: Runtimes that run the ONNX export.
EXPORTED = ("onnxruntime", "openvino", "openvino-bf16")

#: An exported graph run on a CPU array: padded normalized pixels -> logits.
Run = Callable[[NDArray[np.float32]], NDArray[np.float32]]


class Forward(Protocol):
    """Normalized ``(N, 3, H, W)`` float tensor -> logits ``(N, K, H, W)``, on the segmenter's device."""

    output_stride: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def resolve_runtime(runtime: str, device: torch.device) -> str:
    """``auto`` made concrete for ``device``; a CPU runtime asked to run on CUDA is a config error."""
    if runtime == "auto":
        return "torch" if device.type == "cuda" else CPU_DEFAULT
    if runtime in EXPORTED and device.type != "cpu":
        raise ConfigError(
            f"model.runtime={runtime} runs on the CPU, but model.device resolves to {device}; "
            "use model.runtime: torch (or auto) on GPUs, or model.device: cpu"
        )
    if runtime not in (*RUNTIMES, PIPELINE_ONLY):
        raise ConfigError(f"model.runtime={runtime}: use auto, {', '.join(RUNTIMES)}")
    return runtime


@dataclass
class TorchForward:
    """PyTorch eager on the module's device, in channels-last memory format."""

    module: torch.nn.Module
    output_stride: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.module(x.contiguous(memory_format=torch.channels_last))
        return out


def torch_forward(module: torch.nn.Module, device: torch.device) -> TorchForward:
    module = module.eval().to(device).to(memory_format=torch.channels_last)
    stride = int(getattr(getattr(module, "spec", None), "output_stride", 1))
    return TorchForward(module=module, output_stride=stride)


@dataclass
class ExportedForward:
    """An exported graph (ONNX Runtime or OpenVINO) run on CPU arrays; pads and crops around it."""

    run: Run
    output_stride: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        height, width = int(x.shape[-2]), int(x.shape[-1])
        padded = pad_to_stride(x, self.output_stride)
        logits = self.run(np.ascontiguousarray(padded.detach().cpu().numpy(), dtype=np.float32))
        return torch.from_numpy(logits)[..., :height, :width]


def onnxruntime_run(path: str, *, threads: int | None) -> Run:
    """An ONNX Runtime CPU session over ``path``, with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    # the worker shares its cores with the client: idle threads sleep rather than spin
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def run(x: NDArray[np.float32]) -> NDArray[np.float32]:
        out: NDArray[np.float32] = session.run(None, {"pixels": x})[0]
        return out

    return run


def openvino_run(path: str, *, threads: int | None, precision: str) -> Run:
    """OpenVINO's CPU plugin over the ONNX file at ``path``, in ``f32`` or ``bf16``."""
    import openvino as ov

    core = ov.Core()
    # No CPU pinning: OpenVINO pins its threads (and the calling one) to cores by default, and on
    # a machine it shares (with the client, the stitching, other jobs) that made its own inference
    # 4.5 times slower and the segmenter's PyTorch resampling after it 8 times (measured here:
    # 830 against 183 ms per tile, 1,894 against 233 ms).
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False
    }  # fmt: skip
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = core.compile_model(core.read_model(path), "CPU", config).create_infer_request()

    def run(x: NDArray[np.float32]) -> NDArray[np.float32]:
        request.infer({0: x})
        out: NDArray[np.float32] = np.array(request.get_output_tensor(0).data, copy=True)
        return out

    return run


def exported_forward(runtime: str, *, path: str, threads: int | None, output_stride: int) -> ExportedForward:
    """The ONNX file at ``path`` run by ``runtime`` (one of :data:`EXPORTED`)."""
    if runtime == "onnxruntime":
        run = onnxruntime_run(path, threads=threads)
    else:
        run = openvino_run(path, threads=threads, precision="bf16" if runtime == "openvino-bf16" else "f32")
    return ExportedForward(run=run, output_stride=output_stride)


#: Normalized brightness (-1 black, 1 white) above which the pipeline-only stand-in sees a building.
BRIGHTNESS_CUT = -0.1


@dataclass
class TrivialForward:
    """No network: the pipeline's own ceiling (``footprints bench``'s pipeline-only mode).

    Logits of the model's shape from the brightness averaged over each ``output_stride`` cell and
    upsampled bilinearly, steep enough that bright cells come out confident (a cell 0.1 above
    :data:`BRIGHTNESS_CUT` has probability 0.77, 0.3 above it 0.97), so the later stages see blobs
    on the model's cells to split, vectorize and deliver (not speckle, not nothing); the separator
    channels are low, so the split keeps each blob whole. On the demo scene about a quarter of
    the cells are brighter than the cut.
    """

    classes: int
    output_stride: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=1, keepdim=True)
        cells = F.avg_pool2d(grey, self.output_stride, ceil_mode=True)
        up = F.interpolate(cells, size=x.shape[-2:], mode="bilinear", align_corners=False)
        logits = 12.0 * (up - BRIGHTNESS_CUT)
        return torch.cat([logits] + [-4.0 - logits.abs()] * (self.classes - 1), dim=1)


def checkpoint_forward(path: str, *, runtime: str, device: torch.device, threads: int | None) -> Forward:
    """The forward pass of the checkpoint at ``path`` in ``runtime`` (already resolved).

    The exported runtimes never hold the PyTorch model: it is loaded only to export it, once
    per checkpoint and machine (:func:`pipeline.model.export.cached_onnx`).
    """
    from pipeline.core.digest import file_sha256
    from pipeline.model.checkpoint import load_checkpoint, spec_from_metadata
    from pipeline.model.header import read_checkpoint_metadata

    spec = spec_from_metadata(read_checkpoint_metadata(path), source=path)
    if runtime == PIPELINE_ONLY:
        return TrivialForward(classes=spec.num_classes, output_stride=spec.output_stride)
    if runtime == "torch":
        return torch_forward(load_checkpoint(path).model, device)
    from pipeline.model.export import cached_onnx

    onnx = cached_onnx(
        checkpoint_sha256=file_sha256(path), load_module=lambda: load_checkpoint(path).model,
        stride=spec.output_stride,
    )  # fmt: skip
    return exported_forward(runtime, path=str(onnx), threads=threads, output_stride=spec.output_stride)
