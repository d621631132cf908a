"""Inputs of ``footprints evaluate``: a prediction folder and its ground truth on one grid.

Predictions are a ``footprints segment`` output folder: the pixel mask comes from
``mask.tif`` (its nodata pixels are left out) and the polygons from ``buildings.gpkg``
(the delivered buildings, scene CRS). Ground truth is either

* a one-band label raster (GeoTIFF, PNG, ...): building = value > 0, or = ``truth_value``.
  A georeferenced raster on another grid is warped onto the prediction grid (nearest);
  a raster without georeferencing must have the prediction's shape and is taken to
  lie on its grid. Truth polygons are its 4-connected components, polygonized with
  :func:`pipeline.vectorize.polygonize.reference_polygons` (GDAL's exact pixel outlines, one vertex
  per corner, as ``footprints vectorize --exact``). A nodata value other than 0 marks pixels
  to leave out (nodata = 0 is read as background: label masks are often tagged that way); or
* a vector file (GeoJSON, GPKG, ...), reprojected to the prediction CRS and rasterized
  onto the prediction grid (pixel centres) for the pixel metrics. Polygons are clipped
  to the prediction raster's extent (a label file may cover a whole city).

What cannot be scored is refused with an :class:`~pipeline.core.errors.EvaluationInputError`:
a label raster with more than one band (an image passed as truth), a label raster or a
vector file whose extent does not overlap the prediction's, and a pair without a single
pixel that has data on both sides. A label raster whose extent differs from the
prediction's but overlaps it is scored on the overlap, and :func:`extent_shares` says
which share of each side that is (the CLI prints it as a warning).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from numpy.typing import NDArray
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import rasterize
from rasterio.warp import Resampling, reproject

from pipeline.core.errors import EvaluationInputError, InputNotFoundError, MissingCRSError
from pipeline.core.geo import reproject as reproject_geoms
from pipeline.core.raster import RasterGrid, open_checked
from pipeline.tiling.stitch import MASK_NODATA
from pipeline.vectorize.polygonize import reference_polygons

RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".img", ".vrt"})
VECTOR_SUFFIXES = frozenset({".geojson", ".json", ".gpkg", ".shp", ".fgb", ".gml", ".kml"})
#: Extents that agree to this share of each side are the same extent (no warning).
FULL_SHARE = 0.999
_SEGMENTS_PER_SIDE = 64

Polygons = NDArray[np.object_] | Sequence[Any]


@dataclass(frozen=True)
class Labels:
    """Building pixels, the pixels to score, and polygons in the grid's CRS.

    ``shares`` is the share of the prediction's extent covered by the truth's and the
    share of the truth's extent covered by the prediction's (1, 1 for vector truth and
    for rasters on the prediction's extent).
    """

    mask: NDArray[np.bool_]
    valid: NDArray[np.bool_]
    polygons: NDArray[np.object_]
    shares: tuple[float, float] = (1.0, 1.0)


def _require(path: Path, *, what: str, fix: str) -> None:
    if not path.exists():
        raise InputNotFoundError(f"{path}: {what} not found; {fix}")


def _open_raster(path: Path) -> Any:
    fix = "pass a GeoTIFF or PNG label mask, or a GeoJSON/GPKG of polygons"
    return open_checked(path, unreadable=fix, error=EvaluationInputError)


def _read_mask_raster(path: Path) -> tuple[RasterGrid, NDArray[np.bool_], NDArray[np.bool_]]:
    """``mask.tif`` of a run: its grid, building pixels (== 1) and valid pixels."""
    with _open_raster(path) as ds:
        data = ds.read(1)
        nodata = MASK_NODATA if ds.nodata is None else ds.nodata
        grid = RasterGrid.of(ds)
    if grid.crs is None:
        raise MissingCRSError(f"{path}: prediction mask has no CRS; re-run `footprints segment` on the scene")
    valid = data != nodata
    return grid, (data == 1) & valid, valid


def _read_frame(path: Path, *, layer: str | None, crs: CRS, what: str) -> gpd.GeoDataFrame:
    try:
        frame = gpd.read_file(path, layer=layer, engine="pyogrio")
    except Exception as exc:  # pyogrio raises several unrelated types for unreadable files
        raise EvaluationInputError(
            f"{path}: cannot read {what} ({str(exc).splitlines()[0]}); pass a GeoJSON or GPKG file"
        ) from exc
    if len(frame) and frame.crs is None:
        raise MissingCRSError(f"{path}: {what} have no CRS; set one, e.g. `ogr2ogr -a_srs EPSG:4326 OUT IN`")
    return frame.to_crs(crs.to_wkt()) if len(frame) else frame


def _polygonal(frame: gpd.GeoDataFrame) -> NDArray[np.object_]:
    geoms = np.asarray(frame.geometry.values, dtype=object)
    kind = shapely.get_type_id(geoms)
    polygonal: NDArray[np.object_] = geoms[(kind == 3) | (kind == 6)]
    return polygonal


def clean_polygons(geoms: Polygons) -> NDArray[np.object_]:
    """Drop missing and empty geometries; repair invalid ones, keeping their polygonal part."""
    arr = np.asarray(list(geoms) if not isinstance(geoms, np.ndarray) else geoms, dtype=object)
    arr = arr.reshape(-1)
    arr = arr[~shapely.is_missing(arr)]
    bad = ~shapely.is_valid(arr)
    if bad.any():
        arr = arr.copy()
        arr[bad] = shapely.make_valid(arr[bad], method="structure", keep_collapsed=False)
    out: NDArray[np.object_] = arr[~shapely.is_empty(arr)]
    return out


def read_scene_name(out_dir: Path) -> tuple[str, str | None]:
    """Scene name and input path from ``run.json`` (the folder name when it is unreadable)."""
    try:
        record = json.loads((out_dir / "run.json").read_text())
        scene = str(record.get("scene") or out_dir.name)
        source = record.get("input", {}).get("path")
        return scene, None if source is None else str(source)
    except (OSError, ValueError, AttributeError):
        return out_dir.resolve().name, None


def read_prediction(out_dir: Path) -> tuple[RasterGrid, Labels]:
    """The prediction grid, pixel mask (nodata left out) and delivered buildings of an OUTDIR."""
    fix = "--pred must be the --out folder of a finished `footprints segment` run"
    _require(out_dir, what="prediction folder", fix=fix)
    mask_path, gpkg = out_dir / "mask.tif", out_dir / "buildings.gpkg"
    _require(mask_path, what="prediction mask", fix=fix)
    _require(gpkg, what="prediction polygons", fix=fix)
    grid, mask, valid = _read_mask_raster(mask_path)
    frame = _read_frame(gpkg, layer="buildings", crs=grid.crs, what="predicted buildings")
    return grid, Labels(mask=mask, valid=valid, polygons=_polygonal(frame))


def _label_pixels(
    data: NDArray[Any], *, value: int | None, nodata: float | None
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Building and valid pixels of a label band (nodata 0 is background, not a hole)."""
    if nodata is None or nodata == 0:
        valid = np.ones(data.shape, dtype=bool)
    elif np.isnan(nodata):
        valid = ~np.isnan(data)
    else:
        valid = data != nodata
    building = (data == value) if value is not None else (data > 0)
    return building & valid, valid


def _same_grid(a: RasterGrid, b: RasterGrid) -> bool:
    """Same CRS and shape, and corners within a thousandth of a pixel."""
    if a.shape != b.shape or a.crs != b.crs:
        return False
    corners = [(0, 0), (a.width, 0), (0, a.height), (a.width, a.height)]
    back = [~b.transform @ (a.transform @ xy) for xy in corners]
    return bool(np.allclose(np.asarray(back), np.asarray(corners, dtype=float), rtol=0, atol=1e-3))


def _proj(grid: RasterGrid) -> ProjCRS:
    """The grid's CRS for pyproj (every grid scored here has one)."""
    assert grid.crs is not None
    return ProjCRS(grid.crs.to_wkt())


def extent_shares(src: RasterGrid, dst: RasterGrid) -> tuple[float, float]:
    """Share of ``dst``'s extent inside ``src``'s, and of ``src``'s inside ``dst``'s.

    Measured in ``dst``'s CRS (``src``'s outline densified, then reprojected); (0, 0) when
    the extents do not overlap or ``src``'s cannot be expressed in ``dst``'s CRS.
    """
    outline = shapely.box(*src.bounds)
    if src.crs != dst.crs:
        left, bottom, right, top = src.bounds
        step = max(right - left, top - bottom) / _SEGMENTS_PER_SIDE
        dense = np.array([shapely.segmentize(outline, step)], dtype=object)
        outline = reproject_geoms(dense, src=_proj(src), dst=_proj(dst))[0]
        if not np.isfinite(shapely.get_coordinates(outline)).all():
            return 0.0, 0.0
        outline = shapely.make_valid(outline)
    own = shapely.box(*dst.bounds)
    inter = float(shapely.area(shapely.intersection(outline, own)))
    areas = float(shapely.area(own)), float(shapely.area(outline))
    if inter <= 0 or min(areas) <= 0:
        return 0.0, 0.0
    return min(inter / areas[0], 1.0), min(inter / areas[1], 1.0)


def _warp(
    building: NDArray[np.bool_], valid: NDArray[np.bool_], *, src: RasterGrid, dst: RasterGrid
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Nearest-neighbour warp of a label mask onto ``dst``; pixels it does not cover are invalid."""
    source = np.where(valid, building.astype(np.uint8), MASK_NODATA).astype(np.uint8)
    out = np.full(dst.shape, MASK_NODATA, dtype=np.uint8)
    reproject(
        source,
        out,
        src_transform=src.transform,
        src_crs=src.crs,
        src_nodata=MASK_NODATA,
        dst_transform=dst.transform,
        dst_crs=dst.crs,
        dst_nodata=MASK_NODATA,
        resampling=Resampling.nearest,
    )
    return out == 1, out != MASK_NODATA


def _read_label_band(path: Path, *, pred: str) -> tuple[NDArray[Any], RasterGrid, float | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with _open_raster(path) as ds:
            if ds.count != 1:
                raise EvaluationInputError(
                    f"{path}: truth raster has {ds.count} bands, but a label mask has one (buildings > 0); "
                    f"pass the label mask of {pred}, not an image (`gdal_translate -b 1` keeps one band)"
                )
            data = ds.read(1)
            src = RasterGrid.of(ds)
            return data, src, ds.nodata


def _raster_labels(path: Path, *, grid: RasterGrid, value: int | None, pred: str) -> Labels:
    data, src, nodata = _read_label_band(path, pred=pred)
    if src.crs is None:
        if src.shape != grid.shape:
            raise EvaluationInputError(
                f"{path}: label raster has no CRS and is {src.height} x {src.width} pixels, not the "
                f"prediction's {grid.height} x {grid.width}; georeference it or use labels on the scene grid"
            )
        src = grid
    building, valid = _label_pixels(data, value=value, nodata=nodata)
    polys = reference_polygons(building.astype(np.uint8), transform=src.transform).geometry
    if _same_grid(src, grid):
        return Labels(mask=building, valid=valid, polygons=polys)
    shares = extent_shares(src, grid)
    if shares[0] <= 0:
        raise EvaluationInputError(
            f"{path}: label raster (bounds {_fmt_bounds(src.bounds)}, {src.crs}) does not overlap the "
            f"prediction {pred} (bounds {_fmt_bounds(grid.bounds)}, {grid.crs}), so nothing can be "
            "scored; pass the labels of the same scene"
        )
    if src.crs != grid.crs:
        polys = reproject_geoms(polys, src=_proj(src), dst=_proj(grid))
    mask, warped_valid = _warp(building, valid, src=src, dst=grid)
    return Labels(mask=mask, valid=warped_valid, polygons=polys, shares=shares)


def _fmt_bounds(bounds: tuple[float, float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


def _vector_layer(path: Path) -> str | None:
    """The ``buildings`` layer when a multi-layer file has one, else the first layer."""
    try:
        names = [str(name) for name in pyogrio.list_layers(path)[:, 0]]
    except Exception:  # unreadable: gpd.read_file raises the error with its message
        return None
    return "buildings" if "buildings" in names else None


def _vector_labels(path: Path, *, grid: RasterGrid, pred: str) -> Labels:
    frame = _read_frame(path, layer=_vector_layer(path), crs=grid.crs, what="truth polygons")
    polys = clean_polygons(_polygonal(frame))
    extent = shapely.box(*grid.bounds)
    if polys.size and not shapely.intersects(shapely.box(*shapely.total_bounds(polys)), extent):
        raise EvaluationInputError(
            f"{path}: none of its {polys.size} truth polygons lies within the prediction {pred} "
            f"(bounds {_fmt_bounds(grid.bounds)}, {grid.crs}), so nothing can be scored; "
            "pass the labels of the same scene"
        )
    polys = polys[shapely.intersects(polys, extent)]
    polys = polys[shapely.area(polys) > 0]
    polys = np.asarray(shapely.intersection(polys, extent), dtype=object)
    mask = np.zeros(grid.shape, dtype=bool)
    if polys.size:
        burned = rasterize(((g, 1) for g in polys), out_shape=grid.shape, transform=grid.transform, fill=0)
        mask = burned.astype(bool)
    return Labels(mask=mask, valid=np.ones(grid.shape, dtype=bool), polygons=polys)


def read_truth(path: Path, *, grid: RasterGrid, value: int | None = None, pred: str = "--pred") -> Labels:
    """Ground truth on the prediction grid: a one-band label raster or a vector file of polygons.

    ``pred`` names the prediction in error messages.
    """
    _require(path, what="ground-truth labels", fix="check the --truth path")
    suffix = path.suffix.lower()
    if suffix in VECTOR_SUFFIXES:
        return _vector_labels(path, grid=grid, pred=pred)
    if suffix in RASTER_SUFFIXES:
        return _raster_labels(path, grid=grid, value=value, pred=pred)
    raise EvaluationInputError(
        f"{path}: unknown label format '{suffix}'; pass a raster mask ({', '.join(sorted(RASTER_SUFFIXES))}) "
        f"or polygons ({', '.join(sorted(VECTOR_SUFFIXES))})"
    )


def extent_warning(truth: Path, pred: str, shares: tuple[float, float]) -> str | None:
    """One line saying which share of each side was scored, when the extents differ."""
    if min(shares) >= FULL_SHARE:
        return None
    return (
        f"{truth}: label raster and prediction {pred} cover different extents; only their overlap "
        f"was scored: {100 * shares[0]:.1f} % of the prediction and {100 * shares[1]:.1f} % of the labels"
    )


def in_valid(polys: NDArray[np.object_], *, grid: RasterGrid, valid: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Whether each polygon's point on surface falls on a valid pixel of the grid."""
    if polys.size == 0:
        return np.zeros(0, dtype=bool)
    xy = shapely.get_coordinates(shapely.point_on_surface(polys))
    inv = ~grid.transform
    cols = np.floor(inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c).astype(np.int64)
    rows = np.floor(inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f).astype(np.int64)
    inside = (rows >= 0) & (rows < grid.height) & (cols >= 0) & (cols < grid.width)
    out = np.zeros(polys.shape[0], dtype=bool)
    out[inside] = valid[rows[inside], cols[inside]]
    return out
