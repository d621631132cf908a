"""footprints: building footprints from aerial imagery.

Stages, one module each, data flowing one way::

    grid -> read -> (dispatch) -> infer -> stitch -> write (COG) -> vectorize -> write (vectors)

``build_model`` and ``load_checkpoint`` are imported lazily so that light modules
(errors, grid, config) do not pull in torch.
"""

from __future__ import annotations

import os
from typing import Any

# GDAL sizes its block cache once, at the first raster I/O, from GDAL_CACHEMAX (default: 5 %
# of RAM, 1.2 GB here). Dirty blocks of the streamed outputs would fill all of it, so bound
# it before any I/O happens; an explicit GDAL_CACHEMAX in the environment still wins.
os.environ.setdefault("GDAL_CACHEMAX", "128")

# /vsis3/ reads a custom S3 endpoint (MinIO, moto) from its own options, not from
# AWS_ENDPOINT_URL: translate it here, so that Dask workers importing pipeline get it too.
from pipeline.io.storage import configure_gdal_s3

configure_gdal_s3()

__version__ = "0.1.0"
__all__ = ["__version__", "build_model", "load_checkpoint"]


def __getattr__(name: str) -> Any:
    if name == "build_model":
        from pipeline.model.deeplab import build_model

        return build_model
    if name == "load_checkpoint":
        from pipeline.model.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
