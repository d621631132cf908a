"""Room to write: a free-space check before a scene starts, and full or read-only disks as one line.

:func:`check_free_space` compares the free space where a run writes (the staging folder
in a local OUTDIR, the temporary folder for S3 outputs) with :func:`estimate_bytes`, an
estimate from the raster size, before any tile is inferred. :func:`write_errors` turns
what a full disk or an unwritable OUTDIR raises later (``OSError``, GDAL's errors, an
:class:`OutputError` that wraps them) into one :class:`OutputError` line:
``OUTDIR: no space left on DEVICE: N MB needed, M MB free; ...`` or
``OUTDIR: cannot write to this output folder (...); ...``.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import FootprintsError, OutputError, chain, os_reason

#: Bytes a run writes per input pixel and model channel at its peak: the compressed scratch
#: rasters and their COGs, plus the tile cache with its overlap. The demo scene (1 MP, two
#: channels) peaked at 2.1 MB, 0.7 MB of it the cache: about 0.7 + 0.35 B/px per channel;
#: these allow 1.7 times that, for busier imagery.
BYTES_PER_PIXEL_CHANNEL = 1.2
CACHE_BYTES_PER_PIXEL_CHANNEL = 0.6
#: Headroom kept free whatever the estimate (vector files, GDAL's temporary files).
MIN_FREE_BYTES = 64 * 2**20
MB = 2**20

_NO_SPACE = re.compile(r"no space left|disk (is )?full|ENOSPC|not enough space", re.IGNORECASE)
_READ_ONLY = re.compile(r"permission denied|read-only file system|operation not permitted", re.IGNORECASE)
_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def estimate_bytes(*, height: int, width: int, channels: int, cached: bool) -> int:
    """What a run of a ``height`` x ``width`` scene writes at its peak, roughly."""
    per_pixel = BYTES_PER_PIXEL_CHANNEL + (CACHE_BYTES_PER_PIXEL_CHANNEL if cached else 0.0)
    return int(height * width * channels * per_pixel) + MIN_FREE_BYTES


def write_folder(out: str, *, local: bool) -> Path:
    """Where the run writes its scratch files: OUTDIR (or its nearest existing parent)
    for a local OUTDIR, the temporary folder for a remote one."""
    folder = Path(out) if local else Path(tempfile.gettempdir())
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def device_of(path: Path) -> str:
    """The mount point that holds ``path`` (what ``df`` would name)."""
    current = path.resolve()
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return str(current)


def check_free_space(*, out: str, local: bool, needed: int) -> None:
    """Raise an :class:`OutputError` when the disk that the run writes to has less than ``needed`` free."""
    folder = write_folder(out, local=local)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OutputError(_no_space(out, folder, needed=needed, free=free))


def _no_space(out: str, folder: Path, *, needed: int | None, free: int) -> str:
    need = f"{-(-needed // MB):,} MB needed" if needed else "more space needed"
    return (
        f"{out}: no space left on {device_of(folder)}: {need}, {free // MB:,} MB free; free some "
        "space there, or choose an --out on another disk"
    )


def _classify(exc: BaseException) -> str | None:
    """``"space"``, ``"write"`` or None, from the errno or text anywhere in ``exc``'s chain."""
    for item in chain(exc):
        code = getattr(item, "errno", None)
        if code in _NO_SPACE_ERRNOS or _NO_SPACE.search(str(item)):
            return "space"
        if code in _READ_ONLY_ERRNOS or _READ_ONLY.search(str(item)):
            return "write"
    return None


def translate(exc: BaseException, *, out: str, local: bool, needed: int | None = None) -> OutputError | None:
    """The one-line :class:`OutputError` for a full disk or an unwritable OUTDIR, else None."""
    kind = _classify(exc)
    if kind == "space":
        folder = write_folder(out, local=local)
        return OutputError(_no_space(out, folder, needed=needed, free=shutil.disk_usage(folder).free))
    if kind == "write":
        return OutputError(
            f"{out}: cannot write to this output folder ({os_reason(exc)}); make it writable, or "
            "choose another --out"
        )
    return None


@contextmanager
def write_errors(*, out: str, local: bool, needed: int | None = None) -> Iterator[None]:
    """Re-raise a full disk or an unwritable OUTDIR met inside the block as one line."""
    try:
        yield
    except Exception as exc:  # OSError, GDAL's CPLE_* errors, an OutputError around them
        if isinstance(exc, FootprintsError) and not isinstance(exc, OutputError):
            raise  # a bad input or config: its own message says more
        error = translate(exc, out=out, local=local, needed=needed)
        if error is None or str(exc) == str(error):
            raise
        raise error from exc
