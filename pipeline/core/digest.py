"""Streaming SHA-256 of a file: what identifies inputs, checkpoints and outputs by content."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_sha256(path: str | os.PathLike[str], *, chunk: int = 1 << 22) -> str:
    """Streaming SHA-256 (hex) of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
