"""Chip sets: web-map (XYZ) chip grids from file names, and mosaics of adjacent chips.

Several training sources ship a region as many small chips (256 or 512 px) rather than one
scene: OpenAerialMap chips named ``OAM-{x}-{y}-{z}.png`` (PNG, no georeference in the file),
or JPEG data in ``.tif`` files whose georeference is in a ``.aux.xml`` sidecar (GDAL reads
both). A 256 px chip is smaller than one training crop, so :func:`group_chips` joins the
chips that touch into connected groups and :func:`mosaic` pastes (or, off-lattice, warps) a
group onto one grid: one scene per group, split as a whole, never chip by chip.

XYZ bounds (EPSG:3857, as in ``PROVENANCE.md``): ``s = 2 pi R / 2**z``,
``minx = -pi R + x s``, ``maxy = pi R - y s`` with ``R = 6378137``; the chip covers
``(minx, maxy - s, minx + s, maxy)``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.warp
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.transform import Affine

from pipeline.core.errors import ConfigError, RasterReadError
from pipeline.core.raster import RasterGrid, open_checked
from pipeline.io.storage import LOCAL_SIDECARS

__all__ = ["WEB_MERCATOR", "Chip", "group_chips", "mosaic", "xyz_bounds", "xyz_from_name"]

WEB_MERCATOR = CRS.from_epsg(3857)
_R = 6378137.0
_XYZ = re.compile(r"(\d+)-(\d+)-(\d+)$")


def xyz_from_name(path: Path) -> tuple[int, int, int]:
    """``(x, y, z)`` from a chip name ending in ``-{x}-{y}-{z}`` (e.g. ``OAM-319292-270960-19.png``)."""
    match = _XYZ.search(path.stem)
    if match is None:
        raise ConfigError(
            f"{path}: georef: xyz needs a name ending in -X-Y-Z (e.g. OAM-319292-270960-19.png); "
            "rename the chip or drop georef: xyz"
        )
    x, y, z = (int(g) for g in match.groups())
    if not (0 <= z <= 30 and 0 <= x < 2**z and 0 <= y < 2**z):
        raise ConfigError(f"{path}: tile {x}/{y} does not exist at zoom {z}; check the chip name")
    return x, y, z


def xyz_bounds(x: int, y: int, z: int) -> tuple[float, float, float, float]:
    """EPSG:3857 bounds ``(minx, miny, maxx, maxy)`` of web-map tile ``x, y`` at zoom ``z``."""
    size = 2.0 * math.pi * _R / 2**z
    minx = -math.pi * _R + x * size
    maxy = math.pi * _R - y * size
    return minx, maxy - size, minx + size, maxy


def _open_chip(path: Path) -> Any:
    return open_checked(path, unreadable="re-copy the chip", error=RasterReadError, env=LOCAL_SIDECARS)


@dataclass(frozen=True)
class Chip:
    """One chip file and its pixel grid (always georeferenced)."""

    path: Path
    grid: RasterGrid

    @classmethod
    def open(cls, path: Path, *, georef: str) -> Chip:
        """The chip's grid: from the file (``georef="file"``) or from its XYZ name (``"xyz"``)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with _open_chip(path) as ds:
                grid = RasterGrid.of(ds)
        if georef == "xyz":
            minx, miny, maxx, maxy = xyz_bounds(*xyz_from_name(path))
            h, w = grid.shape
            transform = Affine((maxx - minx) / w, 0.0, minx, 0.0, -(maxy - miny) / h, maxy)
            grid = RasterGrid(crs=WEB_MERCATOR, transform=transform, height=h, width=w)
        if grid.crs is None:
            raise ConfigError(
                f"{path}: chip has no georeference; give a .aux.xml sidecar, or set georef: xyz "
                "for web-map chips named -X-Y-Z"
            )
        return cls(path=path, grid=grid)


def group_chips(chips: Sequence[Chip]) -> list[list[Chip]]:
    """Chips that touch or overlap (8-connected, within half a pixel), as groups in name order."""
    n = len(chips)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    boxes = np.array([c.grid.bounds for c in chips], np.float64).reshape(n, 4)
    tol = np.array([0.5 * abs(c.grid.transform.a) for c in chips]).reshape(n, 1)
    for i in range(n):
        near = (
            (boxes[:, 0] <= boxes[i, 2] + tol[:, 0])
            & (boxes[:, 2] >= boxes[i, 0] - tol[:, 0])
            & (boxes[:, 1] <= boxes[i, 3] + tol[:, 0])
            & (boxes[:, 3] >= boxes[i, 1] - tol[:, 0])
        )
        for j in np.flatnonzero(near):
            parent[find(int(j))] = find(i)
    groups: dict[int, list[Chip]] = {}
    for i in sorted(range(n), key=lambda k: chips[k].path.name):
        groups.setdefault(find(i), []).append(chips[i])
    return sorted(groups.values(), key=lambda g: g[0].path.name)


def mosaic_grid(chips: Sequence[Chip]) -> RasterGrid:
    """One north-up grid covering every chip, at the finest chip resolution."""
    crs = chips[0].grid.crs
    for chip in chips[1:]:
        if chip.grid.crs != crs:
            raise ConfigError(
                f"{chip.path}: chip CRS {chip.grid.crs} differs from {crs} of {chips[0].path.name}; "
                "a mosaic needs one CRS"
            )
    res_x = min(abs(c.grid.transform.a) for c in chips)
    res_y = min(abs(c.grid.transform.e) for c in chips)
    boxes = np.array([c.grid.bounds for c in chips])
    left, bottom = boxes[:, 0].min(), boxes[:, 1].min()
    right, top = boxes[:, 2].max(), boxes[:, 3].max()
    width = max(1, round((right - left) / res_x))
    height = max(1, round((top - bottom) / res_y))
    return RasterGrid(
        crs=crs, transform=Affine(res_x, 0.0, left, 0.0, -res_y, top), height=height, width=width
    )


def _offset(chip: Chip, transform: Affine) -> tuple[int, int] | None:
    """``(row_off, col_off)`` when the chip lies on the mosaic lattice (same pixel, 1 % tolerance)."""
    t = chip.grid.transform
    if (
        t.b
        or t.d
        or not math.isclose(t.a, transform.a, rel_tol=0.01)
        or not math.isclose(t.e, transform.e, rel_tol=0.01)
    ):
        return None
    col = (t.c - transform.c) / transform.a
    row = (t.f - transform.f) / transform.e
    if abs(col - round(col)) > 0.01 or abs(row - round(row)) > 0.01:
        return None
    return round(row), round(col)


def _read_rgb(chip: Chip) -> tuple[NDArray[Any], NDArray[np.bool_]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            with _open_chip(chip.path) as ds:
                if ds.count == 2 or ds.count < 1:
                    raise RasterReadError(
                        f"{chip.path}: has {ds.count} bands; give RGB chips (3+ bands) or one grey band"
                    )
                data = ds.read([1, 2, 3] if ds.count >= 3 else [1, 1, 1])
                valid = ds.dataset_mask() > 0
        except rasterio.errors.RasterioIOError as exc:
            raise RasterReadError(
                f"{chip.path}: read failed ({exc}); the chip is corrupt, re-copy it"
            ) from exc
    return data, valid


def mosaic(chips: Sequence[Chip]) -> tuple[NDArray[Any], NDArray[np.bool_], RasterGrid]:
    """Bands ``(3, H, W)``, validity ``(H, W)`` and grid of a chip group on its :func:`mosaic_grid`.

    Chips on the grid's lattice are pasted (exact); others are warped bilinearly. Gaps between
    chips are invalid. Where chips overlap, the later one (in name order) wins.
    """
    grid = mosaic_grid(chips)
    height, width = grid.shape
    bands: NDArray[Any] | None = None
    valid = np.zeros((height, width), bool)
    for chip in chips:
        data, ok = _read_rgb(chip)
        if bands is None:
            bands = np.zeros((3, height, width), data.dtype)
        off = _offset(chip, grid.transform)
        if off is None:  # off the lattice: warp onto the mosaic window the chip covers
            data, ok, off = _warp(chip, data, ok, grid)
        r, c = off
        h, w = ok.shape
        r0, c0 = max(r, 0), max(c, 0)
        r1, c1 = min(r + h, height), min(c + w, width)
        sub = (slice(r0 - r, r1 - r), slice(c0 - c, c1 - c))
        bands[:, r0:r1, c0:c1] = np.where(ok[sub], data[(slice(None), *sub)], bands[:, r0:r1, c0:c1])
        valid[r0:r1, c0:c1] |= ok[sub]
    assert bands is not None  # a group has at least one chip
    return bands, valid, grid


def _warp(
    chip: Chip, data: NDArray[Any], ok: NDArray[np.bool_], grid: RasterGrid
) -> tuple[NDArray[Any], NDArray[np.bool_], tuple[int, int]]:
    """The chip warped bilinearly onto the window of the mosaic grid its bounds cover (plus a pixel)."""
    left, bottom, right, top = chip.grid.bounds
    col0, row0 = ~grid.transform @ (left, top)
    col1, row1 = ~grid.transform @ (right, bottom)
    r0, c0 = max(math.floor(row0) - 1, 0), max(math.floor(col0) - 1, 0)
    r1, c1 = min(math.ceil(row1) + 1, grid.height), min(math.ceil(col1) + 1, grid.width)
    warped = np.zeros((4, r1 - r0, c1 - c0), np.float32)
    src = np.concatenate([data.astype(np.float32), ok[None].astype(np.float32)])
    rasterio.warp.reproject(
        src, warped, src_transform=chip.grid.transform, src_crs=chip.grid.crs,
        dst_transform=grid.window_transform(((r0, r1), (c0, c1))), dst_crs=grid.crs,
        resampling=rasterio.warp.Resampling.bilinear, src_nodata=None, dst_nodata=0,
    )  # fmt: skip
    inside = warped[3] >= 0.999
    return np.round(warped[:3]).astype(data.dtype), inside, (r0, c0)
