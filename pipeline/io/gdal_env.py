"""GDAL's settings for a whole process, applied where a process starts, never on import.

:func:`configure_process` is called by the entry points: the CLI (its typer callback), the
Prefect flows and the Dask workers (:class:`pipeline.run.dispatch.ProcessSettings`). Importing
:mod:`pipeline` or any of its modules leaves the environment alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from rasterio.env import get_gdal_config, set_gdal_config

from pipeline.io.storage import configure_gdal_s3

#: GDAL sizes its block cache once per process, at the first raster I/O, from GDAL_CACHEMAX
#: (default: 5 % of RAM). Dirty blocks of the streamed outputs would fill all of it, so a
#: process bounds it to this many MB before any I/O; an explicit GDAL_CACHEMAX still wins.
GDAL_CACHE_MB = 128

#: The cache asked for while converting a scratch raster to a COG, which reads each block once:
#: a small cache loses nothing. In bytes: rasterio hands an integer ``GDAL_CACHEMAX`` to
#: ``GDALSetCacheMax64``, which counts bytes (this was ``64``, a 64-byte cache, until 2026-12-02:
#: the 8192² probability COG took 30 % more CPU with it).
STREAM_CACHE_BYTES = 64 << 20

#: The cache while polygonizing bands, each read once in whole blocks: none is needed, and
#: 64 bytes hold no block (a 64 MB cache reads an 8192² scene's bands in the same time).
BAND_CACHE_BYTES = 64


#: The cache while the split grows its seeds window by window
#: (:meth:`pipeline.vectorize.split.SeedSink.finish`): the blocks a window shares with its
#: neighbours, not a whole band of the scene's width (a 16384 px band of seeds, mask and
#: regions is about 90 MB). Each window writes whole blocks, so a block evicted is complete.
WINDOW_CACHE_BYTES = 32 << 20


def configure_process() -> None:
    """Bound GDAL's block cache and give ``/vsis3/`` the S3 endpoint of the environment.

    Idempotent; settings already made explicitly in the environment win.
    """
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
    configure_gdal_s3()


@contextlib.contextmanager
def cache_size(nbytes: int) -> Iterator[None]:
    """GDAL's block cache (the whole process's) at ``nbytes`` bytes inside the block, then its
    size before. Shrinking it writes the evicted dirty blocks to their files.

    Set and restored explicitly: ``rasterio.Env(GDAL_CACHEMAX=...)`` inside another
    environment (an open dataset's ``with`` block is one) does not restore the size on leaving,
    and a process went on with a one-byte cache that way.
    """
    before = get_gdal_config("GDAL_CACHEMAX")  # the size in bytes (GDALGetCacheMax64)
    set_gdal_config("GDAL_CACHEMAX", nbytes)  # an integer is bytes to rasterio (GDALSetCacheMax64)
    try:
        yield
    finally:
        set_gdal_config("GDAL_CACHEMAX", before)
