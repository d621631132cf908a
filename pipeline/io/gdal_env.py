"""GDAL's settings for a whole process, applied where a process starts, never on import.

:func:`configure_process` is called by the entry points: the CLI (its typer callback), the
Prefect flows and the Dask workers (:class:`pipeline.run.dispatch.ProcessSettings`). Importing
:mod:`pipeline` or any of its modules leaves the environment alone.
"""

from __future__ import annotations

import os

from pipeline.io.storage import configure_gdal_s3

#: GDAL sizes its block cache once per process, at the first raster I/O, from GDAL_CACHEMAX
#: (default: 5 % of RAM). Dirty blocks of the streamed outputs would fill all of it, so a
#: process bounds it to this many MB before any I/O; an explicit GDAL_CACHEMAX still wins.
GDAL_CACHE_MB = 128

#: The cache asked for while streaming rows through a file (COG writing, polygonizing bands):
#: each block is touched once, so a small cache loses nothing.
STREAM_CACHE_MB = 64

#: Creation options of the scratch rasters (the streamed probabilities, mask, seeds and
#: regions), which live only until their COG or the vectorizer has read them: ZSTD level 1
#: writes in a third of deflate's CPU time for about 7 % more bytes. Published COGs stay deflate.
SCRATCH_COMPRESSION = {"compress": "zstd", "zstd_level": 1}


def configure_process() -> None:
    """Bound GDAL's block cache and give ``/vsis3/`` the S3 endpoint of the environment.

    Idempotent; settings already made explicitly in the environment win.
    """
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
    configure_gdal_s3()
