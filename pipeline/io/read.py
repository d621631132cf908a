"""Open, validate and read input rasters window by window.

The raster is never read whole: tiles are windowed reads, and the scaling of
uint16/float inputs comes from percentiles of a decimated read (GDAL serves it from
overviews when the file has them). Every tile leaves this module as uint8
``(3, height, width)`` pixels plus a boolean validity mask.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from pipeline.core.errors import (
    BandMappingError,
    GeoreferenceError,
    InputNotFoundError,
    MissingCRSError,
    RasterReadError,
    cause_text,
)
from pipeline.core.geo import SHEAR_TOLERANCE_DEG, shear_deg
from pipeline.core.raster import RasterGrid, is_remote, open_checked
from pipeline.tiling.grid import Tile

#: Longest side of the decimated read used for percentile statistics.
STATS_MAX_SIDE = 1024


@dataclass(frozen=True, slots=True)
class BandScaling:
    """Linear scaling of one band to 0-255: ``(value - low) / (high - low) * 255``."""

    low: float
    high: float

    @classmethod
    def of(cls, values: NDArray[Any], percentiles: tuple[float, float] = (2.0, 98.0)) -> BandScaling:
        """The scaling between two percentiles of a band's values (non-finite ones left out)."""
        values = values[np.isfinite(values)]
        if values.size == 0:
            return cls(0.0, 1.0)
        low, high = np.percentile(values.astype(np.float64), percentiles)
        return cls(float(low), float(max(high, low + 1e-6)))


@dataclass(frozen=True)
class RasterInfo:
    """Everything a worker needs to read tiles of one input; small enough to ship.

    ``grid`` is the input's pixel grid. ``bands`` are the 1-based band indexes mapped onto
    the model's three channels (one band is replicated three times). ``scaling`` is empty
    for uint8 inputs.
    """

    path: str
    grid: RasterGrid
    count: int
    dtype: str
    nodata: float | None
    bands: tuple[int, int, int]
    block_shape: tuple[int, int] | None
    scaling: tuple[BandScaling, ...] = field(default=())


def map_bands(path: str, *, count: int, bands: tuple[int, ...] | None) -> tuple[int, int, int]:
    """Map configured 1-based band indexes to three model channels.

    ``None`` means the first three bands, or band 1 three times for a 1-band raster.
    """
    if bands is None:
        if count == 1:
            return (1, 1, 1)
        if count >= 3:
            return (1, 2, 3)
        raise BandMappingError(
            f"{path}: has {count} bands and the default takes the first three; "
            "set input.bands in the config to three band indexes, e.g. [1, 2, 1]"
        )
    if len(bands) == 1:
        bands = (bands[0], bands[0], bands[0])
    if len(bands) != 3:
        raise BandMappingError(
            f"{path}: input.bands={list(bands)} must name 1 or 3 bands; "
            "give three 1-based band indexes for the R, G and B channels"
        )
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise BandMappingError(
            f"{path}: input.bands={list(bands)} names band(s) {bad} but the raster has "
            f"{count} band(s); choose indexes between 1 and {count}"
        )
    return (bands[0], bands[1], bands[2])


def check_vrt_sources(path: str) -> None:
    """Name the first source file of a local VRT that does not exist.

    GDAL opens such a VRT and fails only when a worker reads the missing part.
    """
    if is_remote(path) or not path.lower().endswith(".vrt"):
        return
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return  # GDAL's own error says more
    base = os.path.dirname(os.path.abspath(path))
    for element in root.iter("SourceFilename"):
        name = (element.text or "").strip()
        if not name or is_remote(name):
            continue
        source = os.path.join(base, name) if element.get("relativeToVRT") == "1" else name
        if not os.path.exists(source):
            raise InputNotFoundError(
                f"{path}: VRT source {source} not found; restore that file, or fix its path in the VRT "
                "(gdalbuildvrt rebuilds it from the files that exist)"
            )


def check_pixel_grid(path: str, transform: Affine) -> None:
    """Refuse a sheared geotransform (rows not at a right angle to columns)."""
    shear = shear_deg(tuple(transform))
    if shear > SHEAR_TOLERANCE_DEG:
        raise GeoreferenceError(
            f"{path}: the pixel grid is sheared ({shear:.2f} degrees off a right angle), so pixel sizes "
            "and areas are undefined; warp it to a north-up grid first, e.g. `gdalwarp IN OUT`"
        )


def _block_shape(ds: Any) -> tuple[int, int] | None:
    if not ds.profile.get("tiled", False):
        return None
    bh, bw = ds.block_shapes[0]
    return (int(bh), int(bw))


def _percentile_scaling(
    ds: Any, *, bands: tuple[int, int, int], percentiles: tuple[float, float], nodata: float | None
) -> tuple[BandScaling, ...]:
    """Per-band percentiles of a decimated read (overview level), never a full read."""
    factor = max(1, int(np.ceil(max(ds.height, ds.width) / STATS_MAX_SIDE)))
    out_h, out_w = max(1, ds.height // factor), max(1, ds.width // factor)
    unique = sorted(set(bands))
    data = ds.read(unique, out_shape=(len(unique), out_h, out_w), masked=True)
    result: dict[int, BandScaling] = {}
    for i, band in enumerate(unique):
        values = np.ma.compressed(data[i]).astype(np.float64)
        if nodata is not None:
            values = values[values != nodata]
        result[band] = BandScaling.of(values, percentiles)
    return tuple(result[b] for b in bands)


def open_raster(
    path: str | os.PathLike[str],
    *,
    bands: tuple[int, ...] | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
    nodata: float | None = None,
) -> RasterInfo:
    """Open and validate an input raster, returning its :class:`RasterInfo`.

    Raises a :class:`~pipeline.core.errors.FootprintsError` subclass whose message names
    the file, the problem and the fix for: a missing file (or VRT source), a non-raster,
    a raster without CRS, a zero-size raster, a sheared pixel grid and bands the config
    cannot map.
    """
    path = os.fspath(path)
    check_vrt_sources(path)
    with open_checked(
        path, missing="check the path or mount the imagery bucket",
        unreadable="pass a GeoTIFF or another GDAL raster format",
    ) as ds:  # fmt: skip
        if ds.crs is None:
            raise MissingCRSError(
                f"{path}: raster has no CRS; assign one, e.g. "
                "`gdal_edit.py -a_srs EPSG:32614 FILE`, and run again"
            )
        check_pixel_grid(path, ds.transform)
        mapped = map_bands(path, count=ds.count, bands=bands)
        nd = nodata if nodata is not None else ds.nodata
        scaling: tuple[BandScaling, ...] = ()
        if ds.dtypes[mapped[0] - 1] != "uint8":
            scaling = _percentile_scaling(ds, bands=mapped, percentiles=percentiles, nodata=nd)
        return RasterInfo(
            path=path,
            grid=RasterGrid.of(ds),
            count=ds.count,
            dtype=ds.dtypes[0],
            nodata=None if nd is None else float(nd),
            bands=mapped,
            block_shape=_block_shape(ds),
            scaling=scaling,
        )


def to_uint8(data: NDArray[Any], scaling: tuple[BandScaling, ...]) -> NDArray[np.uint8]:
    """Bands ``(n, h, w)`` scaled to uint8 by ``scaling``, one per band (none: already uint8)."""
    if not scaling:
        return data.astype(np.uint8, copy=False)
    out = np.empty(data.shape, dtype=np.uint8)
    for i, s in enumerate(scaling):
        scaled = (data[i].astype(np.float32) - s.low) * (255.0 / (s.high - s.low))
        out[i] = np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).round().astype(np.uint8)
    return out


def _same_value(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (np.isnan(a) and np.isnan(b))


def _valid_mask(ds: Any, info: RasterInfo, window: Window, data: NDArray[Any]) -> NDArray[np.bool_]:
    """Where the pixel is data: the declared nodata or mask says so, and it is finite.

    NaN and ±inf are nodata in every float raster, whether or not it declares a nodata
    value or a mask (a strip of NaN would otherwise be scaled to 0 and segmented).
    """
    valid = _declared_valid(ds, info, window, data)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.all(np.isfinite(data), axis=0)
    return valid


def _declared_valid(ds: Any, info: RasterInfo, window: Window, data: NDArray[Any]) -> NDArray[np.bool_]:
    unique = sorted(set(info.bands))
    if info.nodata is not None and not _same_value(info.nodata, ds.nodata):
        planes = [
            ~np.isnan(data[info.bands.index(b)]) if np.isnan(info.nodata)
            else data[info.bands.index(b)] != info.nodata
            for b in unique
        ]  # fmt: skip
        return np.asarray(np.any(planes, axis=0), dtype=np.bool_)
    flags = [ds.mask_flag_enums[b - 1] for b in unique]
    if all(f == [MaskFlags.all_valid] for f in flags):
        return np.ones(data.shape[1:], dtype=np.bool_)
    masks = ds.read_masks(unique, window=window)
    return np.asarray(np.any(masks > 0, axis=0), dtype=np.bool_)


def read_tile(
    info: RasterInfo, tile: Tile, *, dataset: Any | None = None
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """Read one tile as uint8 ``(3, height, width)`` pixels and its validity mask."""
    window = Window.from_slices(*tile.window)
    try:
        if dataset is None:
            with rasterio.open(info.path) as ds:
                return read_tile(info, tile, dataset=ds)
        data = dataset.read(list(info.bands), window=window)
        valid = _valid_mask(dataset, info, window, data)
    except RasterioIOError as exc:
        raise RasterReadError(
            f"{info.path}: reading window {tile.window} failed ({cause_text(exc)}); check that "
            "the file is complete and readable (re-download or re-export it)"
        ) from exc
    pixels = to_uint8(data, info.scaling)
    pixels[:, ~valid] = 0
    return pixels, valid


def read_rgb(
    info: RasterInfo, *, window: Window | None = None, out_shape: tuple[int, int] | None = None
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """uint8 ``(3, h, w)`` pixels of ``window`` (the whole raster by default) and their validity.

    With ``out_shape`` the read is decimated by GDAL (averaged; served from the overviews
    when the file has them), so its memory is that of ``out_shape``, whatever the raster's
    size. Pixels are scaled as for inference; nodata pixels are 0 and False.
    """
    window = window or Window(0, 0, info.grid.width, info.grid.height)
    h, w = out_shape or (int(window.height), int(window.width))
    unique = sorted(set(info.bands))
    with rasterio.open(info.path) as ds:
        data = ds.read(list(info.bands), window=window, out_shape=(3, h, w), resampling=Resampling.average)
        masks = ds.read_masks(unique, window=window, out_shape=(len(unique), h, w))
    valid = np.any(masks > 0, axis=0)
    if info.nodata is not None and not np.isnan(info.nodata):
        valid &= np.any(data != info.nodata, axis=0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.all(np.isfinite(data), axis=0)
    pixels = to_uint8(data, info.scaling)
    pixels[:, ~valid] = 0
    return pixels, valid
