"""A checkpoint's header, read without importing torch.

The client (planning, stitching, vectorizing) describes a checkpoint without loading
torch, so the header reader lives here rather than in :mod:`pipeline.model.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open

from pipeline.core.errors import CheckpointError

METADATA_KEY = "footprints"


def require_checkpoint(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(
            f"{path}: checkpoint not found; pass the path of an existing .safetensors file "
            "written by save_checkpoint"
        )


def read_checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's ``footprints`` JSON header as a dict, without reading the weights."""
    source = Path(path)
    require_checkpoint(source)
    try:
        with safe_open(str(source), framework="numpy") as f:
            header = f.metadata() or {}
    except Exception as exc:  # SafetensorError and OS errors for garbage files
        raise CheckpointError(
            f"{source}: not a readable safetensors file ({exc}); pass a checkpoint written "
            "by save_checkpoint (pickled .pt/.pth files are not accepted)"
        ) from exc
    text = header.get(METADATA_KEY)
    if text is None:
        raise CheckpointError(
            f"{source}: safetensors file has no '{METADATA_KEY}' metadata; it was not written "
            "by save_checkpoint, re-save it with save_checkpoint"
        )
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{source}: '{METADATA_KEY}' metadata is not valid JSON ({exc}); re-save the "
            "checkpoint with save_checkpoint"
        ) from exc
    if not isinstance(record, dict):
        raise CheckpointError(
            f"{source}: '{METADATA_KEY}' metadata is not a JSON object; re-save the "
            "checkpoint with save_checkpoint"
        )
    return record


def tensor_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor in a safetensors file, from its header only."""
    source = Path(path)
    require_checkpoint(source)
    try:
        with safe_open(str(source), framework="numpy") as f:
            return {name: tuple(int(n) for n in f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except Exception as exc:  # SafetensorError and OS errors for garbage files
        raise CheckpointError(
            f"{source}: not a readable safetensors file ({exc}); pass a checkpoint written by save_checkpoint"
        ) from exc


TENSORS_KEY = "tensors_sha256"
"""Header key: :func:`tensor_digest` of the file's tensors, written by ``save_checkpoint``."""


def tensor_digest(shapes: dict[str, tuple[int, ...]]) -> str:
    """SHA-256 of the tensor names and shapes (not the values, not the dtypes)."""
    listing = sorted((name, [int(n) for n in shape]) for name, shape in shapes.items())
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def tensors_match_header(path: str | os.PathLike[str], metadata: dict[str, Any]) -> bool | None:
    """Whether the file's tensors are the ones its header was written with; None for headers
    written before the digest existed. Torch-free: the client checks a checkpoint with it, so a
    foreign file with a copied header fails before any worker starts."""
    recorded = metadata.get(TENSORS_KEY)
    if recorded is None:
        return None
    return bool(recorded == tensor_digest(tensor_shapes(path)))
