"""footprints: building footprints from aerial imagery.

One package per concept, in the order data flows through them (DESIGN.md, "Packages and the
data path")::

    core, config -> tiling -> io (read) -> model -> vectorize -> io (write) -> describe -> run
    -> training, evaluation -> cli

``build_model`` and ``load_checkpoint`` are imported lazily so that light modules
(errors, grid, config) do not pull in torch.

Importing :mod:`pipeline` or any module of it changes nothing in the process: GDAL's cache
size and S3 options are applied where a process starts, by
:func:`pipeline.io.gdal_env.configure_process`.
"""

from __future__ import annotations

from typing import Any

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
