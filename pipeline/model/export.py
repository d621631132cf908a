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
  beside it, so one exports while the others wait and then load its file;
* the export itself runs in a child process (``python -m pipeline.model.export CHECKPOINT
  TARGET``), so the worker that asked for it never imports torch: the exported runtimes' workers
  stay torch-free (:mod:`pipeline.model.arrays`), the first run on a machine included.

Importing this module does not import torch; only :func:`export_onnx` (in the child) does.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

import pipeline
from pipeline.core.digest import file_sha256
from pipeline.core.errors import CheckpointError

if TYPE_CHECKING:
    import torch

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
    version = importlib.metadata.version("torch").split("+")[0]
    name = f"{checkpoint_sha256[:20]}-v{EXPORT_VERSION}-torch{version}-opset{OPSET}.onnx"
    return cache_root() / "onnx" / name


def export_onnx(module: torch.nn.Module, target: Path, *, stride: int) -> None:
    """Export ``module.forward_padded`` with symbolic batch, height and width, atomically."""
    import torch

    class PaddedForward(torch.nn.Module):
        """What is exported of :class:`~pipeline.model.deeplab.DeepLabV3`: logits of a padded input."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.inner.forward_padded(x)  # type: ignore[operator]
            return out

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


def cached_onnx(checkpoint: str) -> Path:
    """The cached ONNX export of the checkpoint at ``checkpoint``, exported first (in a child
    process) when it is missing or damaged."""
    target = onnx_cache_path(checkpoint_sha256=file_sha256(checkpoint))
    if is_intact(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_suffix(".lock")):
        if not is_intact(target):  # another process may have exported it while we waited
            _export_in_child(checkpoint, target)
            EXPORTS.append(target)
    return target


def _export_in_child(checkpoint: str, target: Path) -> None:
    """``python -m pipeline.model.export CHECKPOINT TARGET``, with this process's ``pipeline`` importable."""
    root = str(Path(pipeline.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.model.export", checkpoint, str(target)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not is_intact(target):
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise CheckpointError(f"{checkpoint}: exporting it to ONNX failed ({last}); try model.runtime: torch")


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


def main(argv: list[str] | None = None) -> None:
    """The child process of :func:`cached_onnx`: load the checkpoint with torch and export it."""
    parser = argparse.ArgumentParser(
        description="Export a footprints checkpoint to ONNX (used by the cache)."
    )
    parser.add_argument("checkpoint")
    parser.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    from pipeline.model.checkpoint import load_checkpoint

    model = load_checkpoint(args.checkpoint).model
    export_onnx(model, args.target, stride=int(model.spec.output_stride))


if __name__ == "__main__":
    main()
