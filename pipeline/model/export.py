"""The network exported to ONNX once per checkpoint, for the ONNX Runtime and OpenVINO runtimes.

The file is cached under the user's cache folder (``$XDG_CACHE_HOME/footprints/onnx``,
``~/.cache`` by default), named by the checkpoint's SHA-256, the exporter's version and this
module's :data:`EXPORT_VERSION`, so a changed checkpoint or exporter gets a new file and an
unchanged one is never exported again. Each worker process builds its runtime once (see
:func:`pipeline.model.infer.cached_segmenter`), and only the first process on a machine exports:

* the export is written under a temporary name in the cache folder and renamed into place, so
  a reader sees a whole file or none;
* a ``.sha256`` file written after it records its checksum; a file whose checksum is missing or
  differs (an export killed between the two, a damaged disk, a hand edit) is exported again;
* processes that start together take a ``filelock.FileLock`` (``flock``) on a ``.lock`` file
  beside it, so one exports while the others wait and then load its file.

Only worker processes import this module (it imports torch; the client never does).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock

from pipeline.core.digest import file_sha256

#: Bump when the exported graph changes (e.g. what happens inside vs outside it).
EXPORT_VERSION = 1
OPSET = 17

#: How many exports this process ran (tests check that a second load does not export).
EXPORTS: list[Path] = []


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/footprints``, ``~/.cache/footprints`` when it is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "footprints"


def onnx_cache_path(*, checkpoint_sha256: str) -> Path:
    """Where the ONNX export of a checkpoint with this SHA-256 is cached."""
    version = torch.__version__.split("+")[0]
    name = f"{checkpoint_sha256[:20]}-v{EXPORT_VERSION}-torch{version}-opset{OPSET}.onnx"
    return cache_root() / "onnx" / name


class PaddedForward(torch.nn.Module):
    """The part of :class:`~pipeline.model.deeplab.DeepLabV3` that is exported: logits of a padded input."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner.forward_padded(x)  # type: ignore[operator]
        return out


def export_onnx(module: torch.nn.Module, target: Path, *, stride: int) -> None:
    """Export ``module.forward_padded`` with symbolic batch, height and width, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    wrapped = PaddedForward(module.float().eval()).eval()
    example = torch.zeros(1, 3, 32 * stride, 32 * stride)
    axes = {0: "batch", 2: "height", 3: "width"}
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the tracer's notes on the "same" padding's constants
            torch.onnx.export(
                wrapped, (example,), tmp, dynamo=False, opset_version=OPSET,
                input_names=["pixels"], output_names=["logits"],
                dynamic_axes={"pixels": axes, "logits": axes},
            )  # fmt: skip
        digest = file_sha256(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from other users of a shared cache
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _write_text_atomic(_sum_path(target), digest + "\n")
    EXPORTS.append(target)


def cached_onnx(*, checkpoint_sha256: str, load_module: Callable[[], torch.nn.Module], stride: int) -> Path:
    """The cached ONNX export of the checkpoint, exported first when it is missing or damaged."""
    target = onnx_cache_path(checkpoint_sha256=checkpoint_sha256)
    if is_intact(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_suffix(".lock")):
        if not is_intact(target):  # another process may have exported it while we waited
            export_onnx(load_module(), target, stride=stride)
    return target


def is_intact(path: Path) -> bool:
    """Whether ``path`` exists and matches the checksum recorded when it was exported."""
    try:
        recorded = _sum_path(path).read_text().strip()
    except OSError:
        return False
    return path.is_file() and file_sha256(path) == recorded


def _sum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{hashlib.sha1(text.encode()).hexdigest()[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)
