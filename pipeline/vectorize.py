"""Vectorize the building mask into polygons with metric post-processing.

The core works on numpy label images and shapely 2 arrays: components are labelled
with scipy, polygonized by GDAL (through ``rasterio.features.shapes``) in the scene
CRS, then filtered by area and simplified in a metric CRS (see :mod:`pipeline.geo`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.features import shapes
from scipy import ndimage

from pipeline.geo import MetricFrame


@dataclass(frozen=True)
class Buildings:
    """Building polygons in the scene CRS with their per-feature properties."""

    geometry: NDArray[np.object_]
    id: NDArray[np.str_]
    area_m2: NDArray[np.float64]
    confidence: NDArray[np.float64]
    crs: CRS

    def __len__(self) -> int:
        return int(self.geometry.shape[0])


def label_components(mask: NDArray[np.uint8]) -> tuple[NDArray[np.int32], int]:
    """4-connected components of ``mask == 1``, numbered in raster scan order."""
    labels, n = ndimage.label(mask == 1)
    return labels.astype(np.int32, copy=False), int(n)


def first_pixels(labels: NDArray[np.int32], n: int) -> NDArray[np.int64]:
    """Row-major flat index of each component's first pixel (labels 1..n, in order).

    ``ndimage.label`` numbers components by first appearance in scan order, so the
    running maximum of the labels seen steps up exactly at each first pixel.
    """
    flat = labels.ravel()
    nz = np.flatnonzero(flat)
    running = np.maximum.accumulate(flat[nz])
    steps = np.flatnonzero(np.diff(running, prepend=0) > 0)
    out = nz[steps]
    assert out.shape[0] == n
    return out


def polygonize(labels: NDArray[np.int32], transform: Affine) -> tuple[NDArray[np.object_], NDArray[np.int64]]:
    """One polygon (with holes) per label, in the CRS of ``transform``."""
    geoms, values = [], []
    for geom, value in shapes(labels, mask=labels > 0, connectivity=4, transform=transform):
        geoms.append(geom)
        values.append(int(value))
    polys = shapely.from_geojson([_geojson(g) for g in geoms]) if geoms else np.empty(0, object)
    return np.asarray(polys, dtype=object), np.asarray(values, dtype=np.int64)


def _geojson(geom: dict[str, object]) -> str:
    return json.dumps(geom)


def postprocess(
    geoms: NDArray[np.object_], *, frame: MetricFrame, min_area_m2: float, simplify_m: float
) -> tuple[NDArray[np.object_], NDArray[np.float64], NDArray[np.bool_]]:
    """Simplify in metres, then drop polygons under ``min_area_m2``.

    Returns the kept geometries in the scene CRS, their areas in m², and the keep mask
    over the input.
    """
    metric = frame.to_metric(geoms)
    if simplify_m > 0:
        metric = shapely.make_valid(shapely.simplify(metric, simplify_m, preserve_topology=True))
    areas = shapely.area(metric)
    keep = areas >= min_area_m2
    kept = frame.to_scene(metric[keep]) if simplify_m > 0 else geoms[keep]
    return kept, areas[keep].astype(np.float64), keep


def vectorize_scene(
    *,
    mask_path: str,
    probability_path: str,
    scene: str,
    min_area_m2: float,
    simplify_m: float,
) -> Buildings:
    """Polygonize ``mask.tif`` and attach area and mean probability per building."""
    with rasterio.open(mask_path) as ds:
        mask = ds.read(1)
        crs, transform, bounds = ds.crs, ds.transform, tuple(ds.bounds)
    with rasterio.open(probability_path) as ds:
        prob = ds.read(1)
    width = mask.shape[1]
    labels, n = label_components(mask)
    if n == 0:
        empty = np.empty(0, dtype=object)
        return Buildings(empty, np.empty(0, np.str_), np.empty(0), np.empty(0), crs)
    index = np.arange(1, n + 1)
    confidence = np.asarray(ndimage.mean(prob.astype(np.float64), labels, index)) / 255.0
    firsts = first_pixels(labels, n)
    del prob, mask
    geoms, values = polygonize(labels, transform)
    del labels
    frame = MetricFrame.for_scene(crs, bounds)
    kept, areas, keep = postprocess(geoms, frame=frame, min_area_m2=min_area_m2, simplify_m=simplify_m)
    vals = values[keep] - 1
    rows, cols = np.divmod(firsts[vals], width)
    ids = np.char.add(f"{scene}-", np.char.add(rows.astype(str), np.char.add("-", cols.astype(str))))
    return Buildings(kept, ids, areas, confidence[vals], crs)
