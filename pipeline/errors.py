"""Exception hierarchy.

Every error raised on purpose by footprints derives from :class:`FootprintsError`
and also from the builtin exception that matches it, so callers can catch either.
Messages name the file, the problem and the fix, on one line.
"""

from __future__ import annotations


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
