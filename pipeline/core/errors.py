"""Exception hierarchy.

Every error raised on purpose by footprints derives from :class:`FootprintsError`
and also from the builtin exception that matches it, so callers can catch either.
Messages name the file, the problem and the fix, on one line.
"""

from __future__ import annotations

import re


class FootprintsError(Exception):
    """Root of all footprints errors.

    Every one pickles as its class and its one-line message, so it crosses a Dask worker
    boundary intact; :func:`detach` first folds the cause into the message and drops the
    chain (a third-party cause may not unpickle, and Dask would then send a plain
    ``Exception`` instead).
    """

    def __reduce__(self) -> tuple[type[FootprintsError], tuple[str]]:
        return (type(self), (str(self),))


class InputNotFoundError(FootprintsError, FileNotFoundError):
    """An input path does not exist."""


class RasterReadError(FootprintsError, OSError):
    """A raster cannot be opened or read."""


class NotARasterError(RasterReadError):
    """The file exists but GDAL cannot read it as a raster."""


class MissingCRSError(FootprintsError, ValueError):
    """A raster has no coordinate reference system."""


class EmptyRasterError(FootprintsError, ValueError):
    """A raster has zero width or height."""


class BandMappingError(FootprintsError, ValueError):
    """The configured bands cannot be mapped onto the raster's bands."""


class ConfigError(FootprintsError, ValueError):
    """A configuration file or value is invalid."""


class ModelError(FootprintsError, ValueError):
    """A model cannot be built with the requested architecture."""


class CheckpointError(FootprintsError, OSError):
    """A checkpoint file is missing, malformed or incompatible."""


class EvaluationInputError(FootprintsError, OSError):
    """A prediction or ground-truth file exists but cannot be read or used."""


class OutputError(FootprintsError, OSError):
    """An output cannot be written."""


class OutputConflictError(OutputError, FileExistsError):
    """OUTDIR holds the input, or outputs that another scene or config (or a user) owns."""


class OutputBusyError(OutputError, BlockingIOError):
    """Another run holds OUTDIR's lock."""


class GeoreferenceError(FootprintsError, ValueError):
    """A raster's geotransform cannot be used (a sheared pixel grid)."""


class NoDataError(FootprintsError, ValueError):
    """Every pixel of the input is nodata: there is nothing to segment."""


class WorkerLostError(FootprintsError, RuntimeError):
    """Dask workers died running the same batch more times than Dask allows."""


class StorageError(FootprintsError, OSError):
    """A bucket or folder cannot be listed, read or written."""


class TransientIOError(FootprintsError, OSError):
    """An I/O failure that a retry may cure (a dropped connection, a 5xx, a timeout)."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) or SIGTERM; ``tiles_kept`` finished tiles are cached."""

    def __init__(self, tiles_kept: int = 0) -> None:
        super().__init__(tiles_kept)
        self.tiles_kept = tiles_kept

    def __str__(self) -> str:
        return f"interrupted; rerun the same command to resume ({self.tiles_kept} tiles kept)"


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (or, unless suppressed, the exceptions it was raised while handling)."""
    chain, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def cause_text(exc: BaseException) -> str:
    """What went wrong, from ``exc`` and its causes, on one line: GDAL's messages, not rasterio's
    "See previous exception for details"."""
    texts: list[str] = []
    for item in chain(exc):
        text = " ".join(str(item).split())
        if text and "previous exception" not in text and not any(text in t for t in texts):
            texts.append(text)
    return " / ".join(texts) or type(exc).__name__


def os_reason(exc: BaseException) -> str:
    """The message of the innermost ``OSError`` with an errno in ``exc``'s chain (``[Errno 13]
    Permission denied: '/x'``), else :func:`cause_text`."""
    for item in reversed(chain(exc)):
        if isinstance(item, OSError) and item.errno is not None:
            return " ".join(str(item).split())
    return cause_text(exc)


def flat_message(exc: BaseException) -> str:
    """``exc``'s message on one line, with what its causes say that it does not (before its fix)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    extra = [t for t in (cause_text(c) for c in chain(exc)[1:2]) if t and t not in text]
    if not extra:
        return text
    head, sep, fix = text.partition("; ")
    return f"{head} ({extra[0]}){sep}{fix}"


def detach(exc: FootprintsError) -> FootprintsError:
    """A copy of ``exc`` without cause, context or traceback, the causes folded into its message.

    Raise the copy outside the ``except`` block that caught ``exc`` (or Python chains it again).
    """
    copy = type(exc)(flat_message(exc))
    copy.__cause__ = copy.__context__ = None
    copy.__suppress_context__ = True
    return copy


#: Third-party exception classes (botocore, aiohttp, urllib3) that mean "try again".
TRANSIENT_NAMES = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ClientConnectionError", "ServerDisconnectedError", "ClientPayloadError", "ServerTimeoutError",
    "ProtocolError", "NewConnectionError", "ResponseStreamingError", "SlowDown",
})  # fmt: skip
_TRANSIENT_TEXT = re.compile(
    r"HTTP response code:? *(5\d\d|429)|\b(50[0234]|429)\b.*(error|unavailable|slow ?down)|"
    r"curl error|timed out|connection (reset|refused|aborted)|temporarily unavailable",
    re.IGNORECASE,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything in its cause chain) is a transient I/O failure.

    Missing files, bad rasters, bad configs and permission errors are not: retrying
    them only delays the error message.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TransientIOError | ConnectionError | TimeoutError):
            return True
        if any(cls.__name__ in TRANSIENT_NAMES for cls in type(current).__mro__):
            return True
        if isinstance(current, OSError) and _TRANSIENT_TEXT.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False
