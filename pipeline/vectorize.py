"""Vectorize: regions raster -> building polygons with metric post-processing.

Polygonization is block-wise and seam-exact (:mod:`pipeline.polygonize`); this module
turns its :class:`~pipeline.polygonize.Regions` into :class:`Buildings`: areas in m²
(measured in a metric CRS, also for geographic scenes, see :mod:`pipeline.geo`), the
``min_area_m2`` filter applied *after* seams are merged (a building cut by a block edge is
never dropped piecewise), simplification with a tolerance in metres, and stable ids from
the scene id and each building's first pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
from numpy.typing import NDArray
from rasterio.crs import CRS

from pipeline.errors import MissingCRSError
from pipeline.geo import MetricFrame
from pipeline.polygonize import Regions, polygonize_blocks


@dataclass(frozen=True)
class Buildings:
    """Building polygons in the scene CRS with their per-feature properties.

    ``keep`` indexes the source :class:`Regions` each building came from.
    """

    geometry: NDArray[np.object_]
    id: NDArray[np.str_]
    area_m2: NDArray[np.float64]
    confidence: NDArray[np.float64]
    crs: CRS
    keep: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.geometry.shape[0])


def make_ids(scene: str, rows: NDArray[np.int64], cols: NDArray[np.int64]) -> NDArray[np.str_]:
    """Stable ids ``{scene}-{row}-{col}`` from each building's first pixel."""
    pos = np.char.add(rows.astype(str), np.char.add("-", cols.astype(str)))
    return np.char.add(f"{scene}-", pos)


def simplify_metric(
    geoms: NDArray[np.object_], *, frame: MetricFrame, tolerance_m: float
) -> NDArray[np.object_]:
    """Topology-preserving Douglas-Peucker simplification with a tolerance in metres."""
    if tolerance_m <= 0 or geoms.size == 0:
        return geoms
    metric = shapely.simplify(frame.to_metric(geoms), tolerance_m, preserve_topology=True)
    return frame.to_scene(np.asarray(shapely.make_valid(metric), dtype=object))


def buildings_from_regions(
    regions: Regions,
    *,
    scene: str,
    bounds: tuple[float, float, float, float],
    min_area_m2: float,
    simplify_m: float,
    stats_scale: float = 255.0,
) -> Buildings:
    """Filter by area (m², after merging), simplify (m), and attach ids and confidence."""
    if regions.crs is None:
        raise MissingCRSError(f"{scene}: regions have no CRS, so areas in m² are unknown; assign one")
    frame = MetricFrame.for_scene(regions.crs, bounds)
    area = shapely.area(frame.to_metric(regions.geometry)) if len(regions) else np.empty(0)
    keep = np.flatnonzero(area >= min_area_m2)
    geoms = simplify_metric(regions.geometry[keep], frame=frame, tolerance_m=simplify_m)
    mean = regions.mean[keep] / stats_scale if regions.mean is not None else np.full(keep.size, np.nan)
    return Buildings(
        geometry=geoms,
        id=make_ids(scene, regions.first_row[keep], regions.first_col[keep]),
        area_m2=area[keep].astype(np.float64),
        confidence=mean.astype(np.float64),
        crs=regions.crs,
        keep=keep.astype(np.int64),
    )


def vectorize_scene(
    *,
    values_path: str,
    probability_path: str | None,
    scene: str,
    min_area_m2: float,
    simplify_m: float,
    block_size: int = 1024,
) -> Buildings:
    """Polygonize a mask or region raster block by block into :class:`Buildings`.

    ``confidence`` is the mean of ``probability_path`` (uint8 0-255) inside each building.
    """
    with rasterio.open(values_path) as ds:
        b = ds.bounds
    regions = polygonize_blocks(values_path, block_size=block_size, stats_path=probability_path)
    return buildings_from_regions(
        regions,
        scene=scene,
        bounds=(float(b.left), float(b.bottom), float(b.right), float(b.top)),
        min_area_m2=min_area_m2,
        simplify_m=simplify_m,
    )
