"""Evaluate pipeline outputs against ground truth: pixel metrics and SpaceNet object metrics.

Predictions are a ``footprints segment`` output folder: the pixel mask comes from
``mask.tif`` (its nodata pixels are left out) and the polygons from ``buildings.gpkg``
(scene CRS). Ground truth is either

* a label raster (GeoTIFF, PNG, ...): building = value > 0, or = ``truth_value``.
  A georeferenced raster on another grid is warped onto the prediction grid (nearest);
  a raster without georeferencing must have the prediction's shape and is taken to
  lie on its grid. Truth polygons are its 4-connected components, polygonized with
  :mod:`pipeline.vectorize`. A nodata value other than 0 marks pixels to leave out
  (nodata = 0 is read as background: label masks are often tagged that way); or
* a vector file (GeoJSON, GPKG, ...), reprojected to the prediction CRS and rasterized
  onto the prediction grid (pixel centres) for the pixel metrics. Polygons are clipped
  to the prediction raster's extent.

Pixels where either side has no data are left out, and so are polygons whose point on
surface falls on such a pixel (a truth building where the imagery is missing is not a
miss).

Object metrics follow SpaceNet: a prediction and a truth polygon match when their IoU
is at least 0.5, each polygon matches at most once, and polygons under ``min_area_m2``
(measured in metres, see :class:`pipeline.geo.MetricFrame`) are dropped on both sides
first. The one-to-one matching is *optimal*, not greedy: it maximises the number of
matches (then the summed IoU) with ``scipy.optimize.linear_sum_assignment``, solved
separately on each connected group of candidate pairs, so the cost stays near linear.
Ratios with a zero denominator are 1.0 when there is nothing to find and nothing was
found (tp = fp = fn = 0) and 0.0 otherwise, so the JSON never holds NaN.
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
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.features import rasterize
from rasterio.warp import Resampling, reproject
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.errors import ConfigError, EvaluationInputError, InputNotFoundError, MissingCRSError
from pipeline.geo import MetricFrame
from pipeline.geo import reproject as reproject_geoms
from pipeline.polygonize import reference_polygons

MASK_NODATA = 255
IOU_THRESHOLD = 0.5
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".img", ".vrt"})
VECTOR_SUFFIXES = frozenset({".geojson", ".json", ".gpkg", ".shp", ".fgb", ".gml", ".kml"})

Polygons = NDArray[np.object_] | Sequence[Any]


@dataclass(frozen=True)
class Grid:
    """The prediction raster's grid: every truth is brought onto it."""

    crs: CRS
    transform: Affine
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))


@dataclass(frozen=True)
class Labels:
    """Building pixels, the pixels to score, and polygons in the grid's CRS."""

    mask: NDArray[np.bool_]
    valid: NDArray[np.bool_]
    polygons: NDArray[np.object_]


# --------------------------------------------------------------------------- metrics


def _ratio(num: int, den: int, *, perfect: bool) -> float:
    if den == 0:
        return 1.0 if perfect else 0.0
    return float(num) / float(den)


def pixel_scores(*, tp: int, fp: int, fn: int) -> dict[str, float | int]:
    """Precision, recall and IoU from pixel counts (so scenes can be pooled)."""
    perfect = tp == fp == fn == 0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, tp + fp, perfect=perfect),
        "recall": _ratio(tp, tp + fn, perfect=perfect),
        "iou": _ratio(tp, tp + fp + fn, perfect=perfect),
    }


def object_scores(*, tp: int, fp: int, fn: int) -> dict[str, float | int]:
    """Precision, recall and F1 from matched-object counts (so scenes can be pooled)."""
    perfect = tp == fp == fn == 0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, tp + fp, perfect=perfect),
        "recall": _ratio(tp, tp + fn, perfect=perfect),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, perfect=perfect),
    }


def pixel_metrics(
    pred: NDArray[np.bool_], truth: NDArray[np.bool_], valid: NDArray[np.bool_] | None = None
) -> dict[str, float | int]:
    """Pixel tp/fp/fn, precision, recall and IoU over the ``valid`` pixels (all if None)."""
    if pred.shape != truth.shape or (valid is not None and valid.shape != pred.shape):
        raise ValueError(
            f"pixel_metrics: pred {pred.shape}, truth {truth.shape} and valid "
            f"{None if valid is None else valid.shape} must have one shape; bring them onto one grid"
        )
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if valid is not None:
        v = np.asarray(valid, dtype=bool)
        p, t = p & v, t & v
    tp = int(np.count_nonzero(p & t))
    return pixel_scores(tp=tp, fp=int(np.count_nonzero(p)) - tp, fn=int(np.count_nonzero(t)) - tp)


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


def candidate_ious(
    pred: NDArray[np.object_], truth: NDArray[np.object_]
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """IoU of every intersecting (prediction, truth) pair, found with an STRtree."""
    if pred.size == 0 or truth.size == 0:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty, np.empty(0, dtype=np.float64)
    pi, ti = shapely.STRtree(truth).query(pred, predicate="intersects")
    inter = shapely.area(shapely.intersection(pred[pi], truth[ti]))
    union = shapely.area(pred)[pi] + shapely.area(truth)[ti] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return pi.astype(np.intp), ti.astype(np.intp), iou.astype(np.float64)


def _solve_group(
    p: NDArray[np.intp], t: NDArray[np.intp], w: NDArray[np.float64]
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Most matches, then most summed IoU, inside one connected group of pairs."""
    rows, r = np.unique(p, return_inverse=True)
    cols, c = np.unique(t, return_inverse=True)
    big = float(min(rows.size, cols.size) + 1)
    weight = np.zeros((rows.size, cols.size))
    weight[r, c] = big + w
    ri, ci = linear_sum_assignment(weight, maximize=True)
    hit = weight[ri, ci] > 0
    return rows[ri[hit]], cols[ci[hit]]


def match_one_to_one(
    *,
    pred_idx: NDArray[np.intp],
    truth_idx: NDArray[np.intp],
    iou: NDArray[np.float64],
    iou_threshold: float = IOU_THRESHOLD,
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Optimal one-to-one matching of pairs with ``iou >= iou_threshold``.

    Returns the matched prediction and truth indexes. Pairs are split into connected
    groups of the bipartite graph; a group of one pair is a match as is, larger groups
    (overlapping polygons) are solved with ``linear_sum_assignment``.
    """
    ok = iou >= iou_threshold
    p, t, w = pred_idx[ok], truth_idx[ok], iou[ok]
    if p.size == 0:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp)
    up, pc = np.unique(p, return_inverse=True)
    ut, tc = np.unique(t, return_inverse=True)
    n = up.size + ut.size
    graph = coo_matrix((np.ones(p.size), (pc, tc + up.size)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    edge_group = component[pc]
    single = np.bincount(edge_group)[edge_group] == 1
    out_p, out_t = [p[single]], [t[single]]
    multi = np.flatnonzero(~single)
    multi = multi[np.argsort(edge_group[multi], kind="stable")]
    cuts = np.flatnonzero(np.diff(edge_group[multi])) + 1
    for group in np.split(multi, cuts) if multi.size else []:
        gp, gt = _solve_group(p[group], t[group], w[group])
        out_p.append(gp)
        out_t.append(gt)
    return np.concatenate(out_p).astype(np.intp), np.concatenate(out_t).astype(np.intp)


def object_metrics(
    pred_polys: Polygons,
    truth_polys: Polygons,
    *,
    iou_threshold: float = IOU_THRESHOLD,
    min_area_m2: float = 8.0,
    frame: MetricFrame | None = None,
) -> dict[str, float | int]:
    """SpaceNet object tp/fp/fn, precision, recall and F1 with one-to-one IoU matching.

    ``frame`` maps the polygons' CRS to metres (areas and IoU are computed there);
    without it the polygons must already be in a metric CRS. Polygons under
    ``min_area_m2`` are ignored on both sides before matching.
    """
    pred, truth = clean_polygons(pred_polys), clean_polygons(truth_polys)
    if frame is not None:
        pred, truth = frame.to_metric(pred), frame.to_metric(truth)
    pred = pred[shapely.area(pred) >= min_area_m2]
    truth = truth[shapely.area(truth) >= min_area_m2]
    pi, ti, iou = candidate_ious(pred, truth)
    mp, _ = match_one_to_one(pred_idx=pi, truth_idx=ti, iou=iou, iou_threshold=iou_threshold)
    tp = int(mp.size)
    return object_scores(tp=tp, fp=int(pred.size) - tp, fn=int(truth.size) - tp)


# --------------------------------------------------------------------------- inputs


def _require(path: Path, *, what: str, fix: str) -> None:
    if not path.exists():
        raise InputNotFoundError(f"{path}: {what} not found; {fix}")


def _open_raster(path: Path) -> Any:
    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        raise EvaluationInputError(
            f"{path}: not a raster GDAL can read ({str(exc).splitlines()[0]}); "
            "pass a GeoTIFF or PNG label mask, or a GeoJSON/GPKG of polygons"
        ) from exc


def _read_mask_raster(path: Path) -> tuple[Grid, NDArray[np.bool_], NDArray[np.bool_]]:
    """``mask.tif`` of a run: its grid, building pixels (== 1) and valid pixels."""
    with _open_raster(path) as ds:
        data = ds.read(1)
        nodata = MASK_NODATA if ds.nodata is None else ds.nodata
        grid = Grid(crs=ds.crs, transform=ds.transform, height=ds.height, width=ds.width)
    if grid.crs is None:
        raise MissingCRSError(f"{path}: prediction mask has no CRS; re-run `footprints segment` on the scene")
    valid = data != nodata
    return grid, (data == 1) & valid, valid


def _read_polygons(path: Path, *, layer: str | None, crs: CRS, what: str) -> NDArray[np.object_]:
    """Polygonal geometries of a vector file, reprojected to ``crs`` (GeoSeries-free)."""
    try:
        frame = gpd.read_file(path, layer=layer, engine="pyogrio")
    except Exception as exc:  # pyogrio raises several unrelated types for unreadable files
        raise EvaluationInputError(
            f"{path}: cannot read {what} ({str(exc).splitlines()[0]}); pass a GeoJSON or GPKG file"
        ) from exc
    if len(frame) and frame.crs is None:
        raise MissingCRSError(f"{path}: {what} have no CRS; set one, e.g. `ogr2ogr -a_srs EPSG:4326 OUT IN`")
    if len(frame):
        frame = frame.to_crs(crs.to_wkt())
    geoms = np.asarray(frame.geometry.values, dtype=object)
    kind = shapely.get_type_id(geoms)
    polygonal: NDArray[np.object_] = geoms[(kind == 3) | (kind == 6)]
    return polygonal


def read_scene_name(out_dir: Path) -> tuple[str, str | None]:
    """Scene name and input path from ``run.json`` (the folder name when it is unreadable)."""
    try:
        record = json.loads((out_dir / "run.json").read_text())
        scene = str(record.get("scene") or out_dir.name)
        source = record.get("input", {}).get("path")
        return scene, None if source is None else str(source)
    except (OSError, ValueError, AttributeError):
        return out_dir.resolve().name, None


def read_prediction(out_dir: Path) -> tuple[Grid, Labels]:
    """The prediction grid, pixel mask (nodata left out) and polygons of an OUTDIR."""
    fix = "--pred must be the --out folder of a finished `footprints segment` run"
    _require(out_dir, what="prediction folder", fix=fix)
    mask_path, gpkg = out_dir / "mask.tif", out_dir / "buildings.gpkg"
    _require(mask_path, what="prediction mask", fix=fix)
    _require(gpkg, what="prediction polygons", fix=fix)
    grid, mask, valid = _read_mask_raster(mask_path)
    polys = _read_polygons(gpkg, layer="buildings", crs=grid.crs, what="predicted buildings")
    return grid, Labels(mask=mask, valid=valid, polygons=polys)


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


def _same_grid(a: Grid, b: Grid) -> bool:
    """Same CRS and shape, and corners within a thousandth of a pixel."""
    if a.shape != b.shape or a.crs != b.crs:
        return False
    corners = [(0, 0), (a.width, 0), (0, a.height), (a.width, a.height)]
    back = [~b.transform @ (a.transform @ xy) for xy in corners]
    return bool(np.allclose(np.asarray(back), np.asarray(corners, dtype=float), rtol=0, atol=1e-3))


def _warp(
    building: NDArray[np.bool_], valid: NDArray[np.bool_], *, src: Grid, dst: Grid
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


def _raster_labels(path: Path, *, grid: Grid, value: int | None) -> Labels:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with _open_raster(path) as ds:
            data = ds.read(1)
            src = Grid(crs=ds.crs, transform=ds.transform, height=ds.height, width=ds.width)
            nodata = ds.nodata
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
    if src.crs != grid.crs:
        polys = reproject_geoms(polys, src=ProjCRS(src.crs.to_wkt()), dst=ProjCRS(grid.crs.to_wkt()))
    mask, warped_valid = _warp(building, valid, src=src, dst=grid)
    return Labels(mask=mask, valid=warped_valid, polygons=polys)


def _vector_layer(path: Path) -> str | None:
    """The ``buildings`` layer when a multi-layer file has one, else the first layer."""
    try:
        names = [str(name) for name in pyogrio.list_layers(path)[:, 0]]
    except Exception:  # unreadable: gpd.read_file raises the error with its message
        return None
    return "buildings" if "buildings" in names else None


def _vector_labels(path: Path, *, grid: Grid) -> Labels:
    polys = clean_polygons(
        _read_polygons(path, layer=_vector_layer(path), crs=grid.crs, what="truth polygons")
    )
    extent = shapely.box(*grid.bounds)
    polys = polys[shapely.intersects(polys, extent)]
    polys = polys[shapely.area(polys) > 0]
    polys = np.asarray(shapely.intersection(polys, extent), dtype=object)
    mask = np.zeros(grid.shape, dtype=bool)
    if polys.size:
        burned = rasterize(((g, 1) for g in polys), out_shape=grid.shape, transform=grid.transform, fill=0)
        mask = burned.astype(bool)
    return Labels(mask=mask, valid=np.ones(grid.shape, dtype=bool), polygons=polys)


def read_truth(path: Path, *, grid: Grid, value: int | None = None) -> Labels:
    """Ground truth on the prediction grid: a label raster or a vector file of polygons."""
    _require(path, what="ground-truth labels", fix="check the --truth path")
    suffix = path.suffix.lower()
    if suffix in VECTOR_SUFFIXES:
        return _vector_labels(path, grid=grid)
    if suffix in RASTER_SUFFIXES:
        return _raster_labels(path, grid=grid, value=value)
    raise EvaluationInputError(
        f"{path}: unknown label format '{suffix}'; pass a raster mask ({', '.join(sorted(RASTER_SUFFIXES))}) "
        f"or polygons ({', '.join(sorted(VECTOR_SUFFIXES))})"
    )


def in_valid(polys: NDArray[np.object_], *, grid: Grid, valid: NDArray[np.bool_]) -> NDArray[np.bool_]:
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


# --------------------------------------------------------------------------- evaluation


def evaluate_scene(
    *,
    pred_dir: Path,
    truth_path: Path,
    min_area_m2: float = 8.0,
    truth_value: int | None = None,
    iou_threshold: float = IOU_THRESHOLD,
) -> dict[str, Any]:
    """Pixel and object metrics of one ``footprints segment`` output against its truth.

    Pixels and polygons (by their point on surface) where either side has no data
    are left out.
    """
    grid, pred = read_prediction(pred_dir)
    truth = read_truth(truth_path, grid=grid, value=truth_value)
    scene, source = read_scene_name(pred_dir)
    valid = pred.valid & truth.valid
    pred_polys, truth_polys = clean_polygons(pred.polygons), clean_polygons(truth.polygons)
    pred_polys = pred_polys[in_valid(pred_polys, grid=grid, valid=valid)]
    truth_polys = truth_polys[in_valid(truth_polys, grid=grid, valid=valid)]
    frame = MetricFrame.for_scene(grid.crs, grid.bounds)
    return {
        "scene": scene,
        "pred": str(pred_dir),
        "truth": str(truth_path),
        "input": source,
        "pixel": pixel_metrics(pred.mask, truth.mask, valid),
        "object": object_metrics(
            pred_polys, truth_polys, iou_threshold=iou_threshold, min_area_m2=min_area_m2, frame=frame
        ),
    }


def pool(scenes: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Overall metrics: pixel counts pooled over pixels, object counts over objects."""
    counts = {
        kind: {key: sum(int(s[kind][key]) for s in scenes) for key in ("tp", "fp", "fn")}
        for kind in ("pixel", "object")
    }
    return {"pixel": pixel_scores(**counts["pixel"]), "object": object_scores(**counts["object"])}


def evaluate(
    *,
    pairs: Sequence[tuple[Path, Path]],
    min_area_m2: float = 8.0,
    truth_value: int | None = None,
    iou_threshold: float = IOU_THRESHOLD,
) -> dict[str, Any]:
    """Evaluate (OUTDIR, LABELS) pairs: per-scene results and a pooled ``overall`` entry."""
    if not pairs:
        raise ConfigError("evaluate: no scenes given; pass --pred OUTDIR --truth LABELS at least once")
    if min_area_m2 < 0:
        raise ConfigError(f"evaluate: min_area_m2={min_area_m2} is negative; give 0 or more square metres")
    if not 0.0 < iou_threshold <= 1.0:
        raise ConfigError(f"evaluate: iou_threshold={iou_threshold} must lie in (0, 1]; SpaceNet uses 0.5")
    scenes = [
        evaluate_scene(
            pred_dir=Path(pred),
            truth_path=Path(truth),
            min_area_m2=min_area_m2,
            truth_value=truth_value,
            iou_threshold=iou_threshold,
        )
        for pred, truth in pairs
    ]
    return {
        "params": {
            "min_area_m2": min_area_m2,
            "iou_threshold": iou_threshold,
            "truth_value": truth_value,
            "matching": "optimal one-to-one (linear_sum_assignment)",
        },
        "scenes": scenes,
        "overall": pool(scenes),
    }
