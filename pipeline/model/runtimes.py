"""Where the network runs (``model.runtime``), chosen without importing torch.

* ``torch``: PyTorch eager, channels-last (on CUDA under fp16 autocast), in
  :class:`pipeline.model.infer.TorchSegmenter`;
* ``onnxruntime``: ONNX Runtime's CPU execution provider on the cached ONNX export
  (:mod:`pipeline.model.export`);
* ``openvino`` and ``openvino-bf16``: OpenVINO's CPU plugin on the same file, in f32 or with
  ``INFERENCE_PRECISION_HINT=bf16`` (bf16 where the CPU has AVX-512 BF16 or AMX, f32 elsewhere);
* ``auto``: ``torch`` on CUDA, else :data:`CPU_DEFAULT`, the fastest CPU runtime whose masks
  agree with PyTorch fp32 (``scripts/bench_runtimes.py``; DESIGN.md, "The CPU runtime").

The exported runtimes run in :class:`pipeline.model.arrays.ArraySegmenter`, on numpy arrays: a
worker that runs them never imports torch (about 480 MB of RSS with this CUDA build), and
neither does deciding which runtime runs (:func:`cuda_present` asks the driver, not torch).
Their graphs take inputs padded to the output stride (the padding mode is chosen in Python, see
:func:`pipeline.model.deeplab.pad_to_stride`), so the segmenter pads and crops around them.

:data:`PIPELINE_ONLY` is no network at all (:class:`pipeline.model.arrays.CellBrightness`):
``footprints bench`` uses it to measure what the pipeline delivers when the model costs nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.core.errors import ConfigError
from pipeline.model.arrays import ArraySegmenter, CellBrightness, Run

#: The values of ``model.runtime`` besides ``auto``.
RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime", "openvino", "openvino-bf16")
#: What ``auto`` means on a CPU: measured with scripts/bench_runtimes.py (DESIGN.md).
CPU_DEFAULT = "openvino"
#: The bench's stand-in for the network (not a config value).
PIPELINE_ONLY = "pipeline-only"
#: Runtimes that run the ONNX export.
EXPORTED = ("onnxruntime", "openvino", "openvino-bf16")


@functools.lru_cache(maxsize=1)
def cuda_present() -> bool:
    """Whether a CUDA device is visible, asked of the driver (``libcuda``) rather than of torch:
    where there is no driver or no device, choosing the runtime costs no ``import torch``. Where
    torch is already imported its own answer is used."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def device_type(device: str) -> str:
    """``cpu`` or ``cuda`` for a ``model.device`` value (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    if device == "auto":
        return "cuda" if cuda_present() else "cpu"
    return "cuda" if device.startswith("cuda") else device.split(":")[0]


def resolve_runtime(runtime: str, device_type: str) -> str:
    """``auto`` made concrete for a device of ``device_type`` (``cpu``, ``cuda``); a CPU runtime
    asked to run on CUDA is a config error."""
    if runtime == "auto":
        return "torch" if device_type == "cuda" else CPU_DEFAULT
    if runtime in EXPORTED and device_type != "cpu":
        raise ConfigError(
            f"model.runtime={runtime} runs on the CPU, but model.device resolves to {device_type}; "
            "use model.runtime: torch (or auto) on GPUs, or model.device: cpu"
        )
    if runtime not in (*RUNTIMES, PIPELINE_ONLY):
        raise ConfigError(f"model.runtime={runtime}: use auto, {', '.join(RUNTIMES)}")
    return runtime


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


def exported_run(runtime: str, *, path: str, threads: int | None) -> Run:
    """The ONNX file at ``path`` run by ``runtime`` (one of :data:`EXPORTED`)."""
    if runtime == "onnxruntime":
        return onnxruntime_run(path, threads=threads)
    return openvino_run(path, threads=threads, precision="bf16" if runtime == "openvino-bf16" else "f32")


def exported_segmenter(
    path: str, meta: dict[str, Any], *, runtime: str, threads: int | None, flips: int
) -> ArraySegmenter:
    """The checkpoint at ``path`` as an :class:`ArraySegmenter` in ``runtime`` (one of :data:`EXPORTED`,
    or :data:`PIPELINE_ONLY`): the ONNX export cached once per checkpoint and machine
    (:func:`pipeline.model.export.cached_onnx`), no torch in this process."""
    from pipeline.model.export import cached_onnx

    # ``meta``: the checkpoint's header, read once by the caller and checked on the client (describe)
    stride, classes = int(meta.get("output_stride", 16)), len(meta.get("classes", ["building"]))
    run: Run
    if runtime == PIPELINE_ONLY:
        run = CellBrightness(classes=classes, output_stride=stride)
    else:
        run = exported_run(runtime, path=str(cached_onnx(path)), threads=threads)
    norm = meta.get("normalization", {})
    return ArraySegmenter(
        run=run, output_stride=stride, flips=flips, runtime=runtime,
        mean=tuple(norm.get("mean", (0.5, 0.5, 0.5))), std=tuple(norm.get("std", (0.5, 0.5, 0.5))),
    )  # fmt: skip
