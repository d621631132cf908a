"""Coordinate reference systems and metric units.

Areas and tolerances are always in metres. A projected CRS in metres is used as
is where its scale at the scene's centre is within 1 % of true; anything else (a
geographic CRS, feet, Web Mercator away from the equator, where a "metre" is
1 / cos(latitude) metres on the ground) works in the UTM zone of the scene's
centre, so ``min_area_m2`` means square metres on Rio's EPSG:4326 tiles too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import NDArray
from pyproj import CRS as ProjCRS
from pyproj import Proj, Transformer
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from rasterio.crs import CRS

WGS84 = ProjCRS.from_epsg(4326)
MAX_SCALE_ERROR = 0.01
"""A metric CRS is measured in directly only where its point scale is within 1 % of true."""


def _is_metric_projected(crs: ProjCRS) -> bool:
    if not crs.is_projected:
        return False
    units = {ax.unit_name.lower() for ax in crs.axis_info}
    return units <= {"metre", "meter", "m"}


def _true_scale(crs: ProjCRS, lon: float, lat: float) -> bool:
    """Whether ``crs``'s areal scale at ``(lon, lat)`` is within :data:`MAX_SCALE_ERROR` of 1."""
    if not (np.isfinite(lon) and np.isfinite(lat)):
        return True
    try:
        factors = Proj(crs).get_factors(lon, lat)
    except Exception:  # pyproj raises ProjError or RuntimeError for points it cannot project
        return True
    scale = float(np.sqrt(factors.areal_scale))
    return not np.isfinite(scale) or abs(scale - 1.0) <= MAX_SCALE_ERROR


def utm_for(lon: float, lat: float) -> ProjCRS:
    """The WGS 84 UTM zone containing ``(lon, lat)``."""
    infos = query_utm_crs_info(
        datum_name="WGS 84",
        area_of_interest=AreaOfInterest(lon, lat, lon, lat),
    )
    if not infos:
        zone = int((lon + 180) // 6) + 1
        return ProjCRS.from_epsg((32600 if lat >= 0 else 32700) + zone)
    return ProjCRS.from_authority(infos[0].auth_name, infos[0].code)


@dataclass(frozen=True)
class MetricFrame:
    """Transforms between a scene CRS and the metric CRS its measurements use."""

    scene: ProjCRS
    metric: ProjCRS

    @classmethod
    def for_scene(cls, crs: CRS | ProjCRS, bounds: tuple[float, float, float, float]) -> MetricFrame:
        scene = ProjCRS.from_user_input(crs.to_wkt() if isinstance(crs, CRS) else crs)
        left, bottom, right, top = bounds
        to_ll = Transformer.from_crs(scene, WGS84, always_xy=True)
        lon, lat = (float(v) for v in to_ll.transform((left + right) / 2, (bottom + top) / 2))
        if _is_metric_projected(scene) and _true_scale(scene, lon, lat):
            return cls(scene=scene, metric=scene)
        return cls(scene=scene, metric=utm_for(lon, lat))

    @property
    def identity(self) -> bool:
        return self.scene == self.metric

    def to_metric(self, geoms: NDArray[np.object_]) -> NDArray[np.object_]:
        if self.identity:
            return geoms
        return reproject(geoms, src=self.scene, dst=self.metric)

    def to_scene(self, geoms: NDArray[np.object_]) -> NDArray[np.object_]:
        if self.identity:
            return geoms
        return reproject(geoms, src=self.metric, dst=self.scene)


def reproject(geoms: NDArray[np.object_], *, src: ProjCRS, dst: ProjCRS) -> NDArray[np.object_]:
    """Reproject a shapely array with pyproj (x/y = lon/lat order for geographic CRSs)."""
    tr = Transformer.from_crs(src, dst, always_xy=True)

    def fn(coords: NDArray[np.float64]) -> NDArray[np.float64]:
        x, y = tr.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return np.asarray(shapely.transform(geoms, fn), dtype=object)


def pixel_size_m(crs: CRS, transform: tuple[float, ...], bounds: tuple[float, float, float, float]) -> float:
    """Mean ground sample distance in metres of a raster's pixels.

    The square root of one pixel's ground area: the parallelogram spanned by the
    transform's column and row steps, so a rotated grid has the size of its pixels too.
    """
    frame = MetricFrame.for_scene(crs, bounds)
    a, b, _, d, e = transform[:5]
    left, bottom, right, top = bounds
    cx, cy = (left + right) / 2, (bottom + top) / 2
    pixel = shapely.Polygon([(cx, cy), (cx + a, cy + d), (cx + a + b, cy + d + e), (cx + b, cy + e)])
    metric = frame.to_metric(np.array([pixel], dtype=object))[0]
    return float(np.sqrt(shapely.area(metric)))


#: Rows and columns of a pixel grid may deviate this much from a right angle (degrees).
SHEAR_TOLERANCE_DEG = 0.01


def shear_deg(transform: tuple[float, ...]) -> float:
    """How far the angle between a geotransform's columns and rows is from 90 degrees."""
    a, b, _, d, e = transform[:5]
    norm = float(np.hypot(a, d) * np.hypot(b, e))
    if norm == 0.0:
        return 0.0
    cos = float(np.clip((a * b + d * e) / norm, -1.0, 1.0))
    return abs(90.0 - float(np.degrees(np.arccos(cos))))
