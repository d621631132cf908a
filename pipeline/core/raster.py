"""The pixel grid of a raster as one immutable value, and opening a raster with a friendly error.

:class:`RasterGrid` is what every stage means by "a raster's grid" (in the spirit of
odc-geo's ``GeoBox``): CRS, affine transform and ``(height, width)``. It is small, hashable
and pickles as plain values, so it crosses a Dask worker boundary unchanged. Inputs, sinks,
label rasters and training scenes all carry one; nothing passes ``crs, transform, height,
width`` loose.

:func:`open_checked` opens a raster for reading and turns GDAL's failures into the one-line
errors of :mod:`pipeline.core.errors`, naming the file, the problem and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from affine import Affine

from pipeline.core.errors import EmptyRasterError, FootprintsError, InputNotFoundError, NotARasterError

if TYPE_CHECKING:  # rasterio is imported where a raster is opened: a datapack builds grids without GDAL
    from rasterio.crs import CRS
    from rasterio.windows import Window

#: A window as rasterio takes it: a ``Window`` or ``((row_start, row_stop), (col_start, col_stop))``.
WindowLike: TypeAlias = "Window | tuple[tuple[int, int], tuple[int, int]]"


@dataclass(frozen=True, slots=True)
class RasterGrid:
    """Pixel grid of a raster: CRS (None when not georeferenced), transform, ``height`` x ``width``.

    Equal grids have equal CRS, transform and size; :meth:`same_as` allows a tolerance.
    """

    crs: CRS | None
    transform: Affine
    height: int
    width: int

    @classmethod
    def of(cls, dataset: Any) -> RasterGrid:
        """The grid of an open rasterio dataset."""
        return cls(
            crs=dataset.crs, transform=dataset.transform, height=int(dataset.height), width=int(dataset.width)
        )

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in the grid's CRS: the extent of the four corners."""
        w, h = self.width, self.height
        corners = [self.transform @ xy for xy in ((0, 0), (w, 0), (0, h), (w, h))]
        xs, ys = [float(x) for x, _ in corners], [float(y) for _, y in corners]
        return (min(xs), min(ys), max(xs), max(ys))

    def window_transform(self, window: WindowLike) -> Affine:
        """The transform of a window of this grid: ``transform @ translation(col_off, row_off)``."""
        from rasterio.windows import Window

        w = window if isinstance(window, Window) else Window.from_slices(*window)
        return self.transform @ Affine.translation(w.col_off, w.row_off)

    def gsd_m(self) -> float:
        """Ground sample distance in metres (georeferenced grids only)."""
        from pipeline.core.geo import pixel_size_m  # pyproj and shapely: only where a CRS is read

        if self.crs is None:
            raise ValueError("a grid without a CRS has no ground sample distance")
        return pixel_size_m(self.crs, tuple(self.transform), self.bounds)

    def same_as(self, other: RasterGrid, *, tolerance_px: float = 0.01) -> bool:
        """Same shape and CRS, and transforms within ``tolerance_px`` of a pixel."""
        if self.shape != other.shape or self.crs != other.crs:
            return False
        a, b = np.asarray(self.transform)[:6], np.asarray(other.transform)[:6]
        px = max(abs(self.transform.a), abs(self.transform.e))
        return bool(np.allclose(a, b, rtol=0, atol=tolerance_px * px))


def is_remote(path: str) -> bool:
    """A URL or a GDAL virtual file system path: not a local file to stat."""
    return "://" in path or path.startswith("/vsi")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (GDAL's can run to several)."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def open_checked(
    path: str | os.PathLike[str],
    *,
    unreadable: str,
    missing: str | None = None,
    what: str = "file",
    error: type[FootprintsError] = NotARasterError,
    env: Mapping[str, Any] | None = None,
) -> Any:
    """Open a raster for reading, or raise a one-line error naming the file, the problem and the fix.

    ``missing`` is the fix for a local file that does not exist (``"{path}: {what} not found;
    {missing}"``; None leaves that check to the caller); ``unreadable`` the fix for a file GDAL
    cannot read, raised as ``error``. An empty file (0 bytes) and a raster of zero size are
    :class:`EmptyRasterError`. ``env`` are GDAL options for the open. Returns the open dataset
    (a context manager).
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    name = os.fspath(path)
    local = not is_remote(name)
    if missing is not None and local and not os.path.exists(name):
        raise InputNotFoundError(f"{name}: {what} not found; {missing}")
    if local and os.path.isfile(name) and os.path.getsize(name) == 0:
        raise EmptyRasterError(f"{name}: file is empty (0 bytes); re-download or re-export it")
    try:
        with rasterio.Env(**(env or {})):
            ds = rasterio.open(name)
    except RasterioIOError as exc:
        if "dimensions" in str(exc).lower():
            raise EmptyRasterError(
                f"{name}: raster has zero size ({exc}); re-export it with its pixels"
            ) from exc
        raise error(f"{name}: not a raster GDAL can read ({first_line(exc)}); {unreadable}") from exc
    if ds.width == 0 or ds.height == 0:
        ds.close()
        raise EmptyRasterError(
            f"{name}: raster has zero size ({ds.height} x {ds.width} pixels); re-export it with its pixels"
        )
    return ds
