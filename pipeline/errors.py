"""Exception hierarchy.

Every error raised on purpose by footprints derives from :class:`FootprintsError`
and also from the builtin exception that matches it, so callers can catch either.
Messages name the file, the problem and the fix, on one line.
"""

from __future__ import annotations

import re


class FootprintsError(Exception):
    """Root of all footprints errors."""


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


class StorageError(FootprintsError, OSError):
    """A bucket or folder cannot be listed, read or written."""


class TransientIOError(FootprintsError, OSError):
    """An I/O failure that a retry may cure (a dropped connection, a 5xx, a timeout)."""


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
