"""Buildings: filter and outline the polygonized regions of a raster, in metres.

Polygonization is block-wise and seam-exact (:mod:`pipeline.vectorize.polygonize`); this module
turns its :class:`~pipeline.vectorize.polygonize.Regions` into :class:`Buildings`. The
regions go into the scene's metric frame once (:class:`~pipeline.core.geo.MetricFrame`;
for a metric projected scene that is the scene CRS and nothing is reprojected), and
everything after works in metres on those polygons: areas in m², the ``min_area_m2``
filter applied *after* seams are merged (a building cut by a block edge is never dropped
piecewise), the scorer's shape features, post-processing (:mod:`pipeline.vectorize.postprocess`)
and the clip to the scene's outline. The delivered outlines go back to the scene CRS once.
Ids are stable, from the scene id and each building's first pixel. Rings are made
canonical first (:mod:`pipeline.vectorize.rings`), so the delivered polygons do not depend
on the block size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import rasterio
import shapely
from numpy.typing import NDArray
from rasterio.crs import CRS

from pipeline.config import VectorizeConfig
from pipeline.core.errors import MissingCRSError
from pipeline.core.geo import MetricFrame, pixel_size_m
from pipeline.vectorize.overlaps import polygonal_part
from pipeline.vectorize.polygonize import Regions, polygonize_blocks
from pipeline.vectorize.postprocess import outline_each, postprocess, separable, settle
from pipeline.vectorize.priors import Priors
from pipeline.vectorize.rings import CHUNK, canonical_rings
from pipeline.vectorize.scoring import ScoreContext, candidate_features

Geoms = NDArray[np.object_]
Outlines = Callable[..., Geoms]

OUTLINE_SEGMENT_M = 500.0  # a scene edge reprojected in pieces this long is within 1 cm of its curve
EARTH_RADIUS_M = 6_371_000.0  # metres per radian, to size those pieces in a geographic CRS


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
    features: NDArray[np.float64] | None = None  # pipeline.vectorize.scoring.FEATURES, when scored

    def __len__(self) -> int:
        return int(self.geometry.shape[0])


@dataclass(frozen=True)
class OutlineOptions:
    """How polygons become delivered outlines; every length and area is metric."""

    min_area_m2: float = 8.0
    min_confidence: float = 0.0
    simplify_m: float = 0.3
    fill_holes_m2: float = 0.0
    regularize: bool = False
    angle_tolerance_deg: float = 15.0
    min_edge_m: float = 0.5
    orientation: str = "envelope"
    group_m: float = 0.0
    group_tolerance_deg: float = 5.0
    rectangle_iou: float = 0.0
    corner_area_ratio: float = 0.0

    @property
    def priors(self) -> Priors:
        """The building-shaped priors of the regularizer (:mod:`pipeline.vectorize.priors`)."""
        return Priors(
            orientation=self.orientation,
            group_m=self.group_m,
            group_tolerance_deg=self.group_tolerance_deg,
            rectangle_iou=self.rectangle_iou,
            corner_area_ratio=self.corner_area_ratio,
        )


def outline_options(section: VectorizeConfig) -> OutlineOptions:
    """The config's ``vectorize:`` section as :class:`OutlineOptions` (its fields of the same names)."""
    return OutlineOptions(**{f.name: getattr(section, f.name) for f in fields(OutlineOptions)})


def make_ids(scene: str, rows: NDArray[np.int64], cols: NDArray[np.int64]) -> NDArray[np.str_]:
    """Stable ids ``{scene}-{row}-{col}`` from each building's first pixel."""
    pos = np.char.add(rows.astype(str), np.char.add("-", cols.astype(str)))
    return np.char.add(f"{scene}-", pos)


def buildings_from_regions(
    regions: Regions,
    *,
    scene: str,
    bounds: tuple[float, float, float, float],
    options: OutlineOptions,
    pixel_m: float | None = None,
    stats_scale: float = 255.0,
    scoring: ScoreContext | None = None,
    outlines: Outlines = postprocess,
) -> Buildings:
    """Filter by area (m², after merging) and confidence, then fill holes and square or simplify.

    ``min_confidence`` applies where the regions carry probability statistics (their mean
    probability, the delivered ``confidence``). ``area_m2`` is the area of the delivered
    polygon. Buildings that post-processing empties (degenerate slivers, or ones covered by a
    larger neighbour) are dropped. With ``scoring`` each candidate's features are computed
    on its raw outline (:mod:`pipeline.vectorize.scoring`), and its scorer, if any, drops those under
    its threshold. ``outlines`` is the post-processing (``postprocess``'s signature;
    ``scripts/compare_regularizers.py`` passes others to compare them).

    With ``postprocess`` and outlines that depend on each building alone (``separable``), the
    regions are filtered, scored and outlined :data:`~pipeline.vectorize.rings.CHUNK` at a time
    and only the overlaps are settled over the whole scene: the same buildings, in less memory
    (:class:`Outliner`).
    """
    if regions.crs is None:
        raise MissingCRSError(f"{scene}: regions have no CRS, so areas in m² are unknown; assign one")
    outliner = Outliner.start(
        regions.crs, bounds=bounds, options=options, pixel_m=pixel_m, stats_scale=stats_scale,
        scoring=scoring, outlines=outlines,
    )  # fmt: skip
    outliner.add(regions)
    return outliner.buildings(regions, scene=scene)


@dataclass
class Outliner:
    """Buildings from a scene's regions added in groups: each group is filtered, scored (and
    outlined, when the outlines are ``separable``) as it comes, :data:`CHUNK` regions at a time;
    :meth:`buildings` puts the candidates in the scene's region order and settles the overlaps
    (or outlines all of them together, when outlines depend on their neighbours). A candidate
    depends on its own region alone, so the grouping does not change the buildings.

    :func:`vectorize_scene` adds each band's finished regions while the workers polygonize the
    next bands; :func:`buildings_from_regions` adds all of them at once.
    """

    frame: MetricFrame
    outline: shapely.Geometry  # the scene's, in the metric frame
    options: OutlineOptions
    scoring: ScoreContext | None
    stats_scale: float
    outlines: Outlines
    kw: dict[str, Any]
    each: bool
    parts: list[_Chunk] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        crs: CRS,
        *,
        bounds: tuple[float, float, float, float],
        options: OutlineOptions,
        pixel_m: float | None,
        stats_scale: float = 255.0,
        scoring: ScoreContext | None = None,
        outlines: Outlines = postprocess,
    ) -> Outliner:
        kw: dict[str, Any] = dict(
            fill_holes_m2=options.fill_holes_m2, simplify_m=options.simplify_m,
            regularize=options.regularize, angle_tolerance_deg=options.angle_tolerance_deg,
            min_edge_m=options.min_edge_m, pixel_m=pixel_m, priors=options.priors,
        )  # fmt: skip
        each = outlines is postprocess and separable(
            regularize=options.regularize, pixel_m=pixel_m, priors=options.priors
        )
        frame = MetricFrame.for_scene(crs, bounds)
        outline = _scene_outline(frame, bounds)
        return cls(frame, outline, options, scoring, stats_scale, outlines, kw, each)

    def add(self, regions: Regions) -> None:
        """The candidates of ``regions``: a group of the scene's regions, each added once."""
        step = functools.partial(outline_each, **self.kw) if self.each else None
        for i in range(0, len(regions), CHUNK):
            self.parts.append(self._candidates(regions, slice(i, i + CHUNK), step))

    def _candidates(self, regions: Regions, part: slice, step: Any) -> _Chunk:
        return _candidates(
            regions, part, frame=self.frame, options=self.options, scoring=self.scoring,
            stats_scale=self.stats_scale, outliner=step,
        )  # fmt: skip

    def buildings(self, regions: Regions, *, scene: str) -> Buildings:
        """The scene's buildings, once every region of ``regions`` (the whole scene's) was added."""
        parts = self.parts or [self._candidates(regions, slice(0, 0), None)]  # no regions
        keys, geoms, area, table = _Chunk.join(parts)
        keep = np.searchsorted(pixel_keys(regions.first_row, regions.first_col), keys)
        order = np.argsort(keep, kind="stable")  # the scene's region order
        keep, geoms, table = keep[order], geoms[order], None if table is None else table[order]
        geoms = settle(geoms, area[order]) if self.each else self.outlines(geoms, **self.kw)
        return self._delivered(regions, keep, geoms, table, scene=scene)

    def _delivered(
        self, regions: Regions, keep: NDArray[np.int64], geoms: Geoms, table: NDArray[np.float64] | None,
        *, scene: str,
    ) -> Buildings:  # fmt: skip
        """Outlines clipped to the scene, back in its CRS, with their ids, areas and confidences."""
        # squaring may push a wall a few centimetres past the raster's edge: stay inside the scene
        geoms = polygonal_part(shapely.intersection(geoms, self.outline)) if geoms.size else geoms
        delivered = _out_of_metric(self.frame, geoms)
        alive = ~shapely.is_empty(delivered) if geoms.size else np.zeros(0, bool)
        keep, geoms, delivered = keep[alive], geoms[alive], delivered[alive]
        mean = (
            regions.mean[keep] / self.stats_scale if regions.mean is not None else np.full(keep.size, np.nan)
        )
        return Buildings(
            geometry=delivered,
            id=make_ids(scene, regions.first_row[keep], regions.first_col[keep]),
            area_m2=np.asarray(shapely.area(geoms) if geoms.size else np.empty(0), dtype=np.float64),
            confidence=mean.astype(np.float64),
            crs=regions.crs,
            keep=keep.astype(np.int64),
            features=None if table is None else table[alive],
        )


def pixel_keys(rows: NDArray[np.int64], cols: NDArray[np.int64]) -> NDArray[np.int64]:
    """One int64 per first pixel, increasing in raster scan order (row, col)."""
    return (rows.astype(np.int64) << 32) | cols.astype(np.int64)


@dataclass(frozen=True)
class _Chunk:
    """One chunk's candidates: the first pixels of their regions (:func:`pixel_keys`), their
    outlines (or metric polygons, when they are outlined together later), areas deciding
    overlaps (with outlines) and features (when scored)."""

    keys: NDArray[np.int64]
    geoms: Geoms
    area: NDArray[np.float64]
    table: NDArray[np.float64] | None

    @staticmethod
    def join(
        parts: list[_Chunk],
    ) -> tuple[NDArray[np.int64], Geoms, NDArray[np.float64], NDArray[np.float64] | None]:
        """The chunks' candidates in order: keys, polygons, areas and features (None unscored)."""
        tables = [p.table for p in parts if p.table is not None]
        return (
            np.concatenate([p.keys for p in parts]),
            np.concatenate([p.geoms for p in parts]),
            np.concatenate([p.area for p in parts]),
            np.concatenate(tables) if tables else None,
        )


def _candidates(
    regions: Regions,
    part: slice,
    *,
    frame: MetricFrame,
    options: OutlineOptions,
    scoring: ScoreContext | None,
    stats_scale: float,
    outliner: Callable[[Geoms], tuple[Geoms, NDArray[np.float64]]] | None,
) -> _Chunk:
    """The regions ``part`` in metres, filtered by area, confidence and scorer; outlined by
    ``outliner`` (:func:`~pipeline.vectorize.postprocess.outline_each`) where given."""
    raw = canonical_rings(regions.geometry[part])  # same rings whatever the block size: see vectorize.rings
    metric = frame.to_metric(raw)
    area = shapely.area(metric) if raw.size else np.empty(0)
    keep = np.flatnonzero(area >= options.min_area_m2)
    first = part.start or 0
    if options.min_confidence > 0 and regions.mean is not None:
        keep = keep[regions.mean[first + keep] / stats_scale >= options.min_confidence]
    table = None
    if scoring is not None:
        table = _score(regions, keep, first, raw, metric, scoring, stats_scale)
        if scoring.scorer is not None:
            passed = scoring.scorer.keep(table)
            keep, table = keep[passed], table[passed]
    geoms, kept_area = metric[keep], np.empty(0)
    if outliner is not None:
        geoms, kept_area = outliner(geoms)
    at = first + keep
    return _Chunk(
        keys=pixel_keys(regions.first_row[at], regions.first_col[at]),
        geoms=geoms,
        area=kept_area,
        table=table,
    )


def _scene_outline(frame: MetricFrame, bounds: tuple[float, float, float, float]) -> shapely.Geometry:
    """The scene's outline in the metric frame.

    A straight edge of a geographic scene is a curve in the metric CRS, so the outline is
    densified first, to pieces of about :data:`OUTLINE_SEGMENT_M` (a piece of a parallel
    that long deviates from its chord by under a centimetre up to 60° of latitude).
    """
    box = shapely.box(*bounds)
    if frame.identity:
        return box
    axis = frame.scene.axis_info[0]
    unit_m = axis.unit_conversion_factor * (EARTH_RADIUS_M if frame.scene.is_geographic else 1.0)
    return frame.to_metric(np.array([shapely.segmentize(box, OUTLINE_SEGMENT_M / unit_m)], dtype=object))[0]


def _out_of_metric(frame: MetricFrame, geoms: Geoms) -> Geoms:
    """Metric polygons back in the scene CRS, repaired where the reprojection made one invalid."""
    if frame.identity or geoms.size == 0:
        return geoms
    scene = frame.to_scene(geoms)
    bad = ~shapely.is_valid(scene)
    if bad.any():
        scene[bad] = polygonal_part(scene[bad])
    return scene


def _score(
    regions: Regions,
    keep: NDArray[np.intp],
    first: int,
    raw: Geoms,
    metric: Geoms,
    scoring: ScoreContext,
    stats_scale: float,
) -> NDArray[np.float64]:
    """The feature table of the candidates ``keep`` (confidence NaN-free: 0 without stats)."""
    conf = regions.mean[first + keep] / stats_scale if regions.mean is not None else np.zeros(keep.size)
    return candidate_features(
        raw[keep], metric=metric[keep], confidence=conf.astype(np.float64),
        probability_path=scoring.probability_path,
    )  # fmt: skip


@dataclass(frozen=True)
class SceneRegions:
    """The polygonized regions of a raster, with what :func:`buildings_from_regions` needs."""

    regions: Regions
    bounds: tuple[float, float, float, float]
    pixel_m: float | None


def raster_extent(values_path: str) -> tuple[tuple[float, float, float, float], float | None, CRS | None]:
    """A raster's bounds (left, bottom, right, top), pixel size in metres (None without a CRS) and CRS."""
    with rasterio.open(values_path) as ds:
        b = ds.bounds
        bounds = (float(b.left), float(b.bottom), float(b.right), float(b.top))
        pixel_m = pixel_size_m(ds.crs, tuple(ds.transform), bounds) if ds.crs is not None else None
        return bounds, pixel_m, ds.crs


def scene_regions(
    *,
    values_path: str,
    probability_path: str | None,
    block_size: int = 1024,
    client: Any | None = None,
    max_in_flight: int = 4,
) -> SceneRegions:
    """Polygonize a mask or region raster block by block; ``confidence`` statistics from
    ``probability_path`` (uint8 0-255). With a Dask ``client``, the bands are polygonized on
    its workers (see :func:`~pipeline.vectorize.polygonize.polygonize_blocks`)."""
    bounds, pixel_m, _ = raster_extent(values_path)
    regions = polygonize_blocks(
        values_path, block_size=block_size, stats_path=probability_path, client=client,
        max_in_flight=max_in_flight,
    )  # fmt: skip
    return SceneRegions(regions=regions, bounds=bounds, pixel_m=pixel_m)


def vectorize_scene(
    *,
    values_path: str,
    probability_path: str | None,
    scene: str,
    options: OutlineOptions,
    block_size: int = 1024,
    scoring: ScoreContext | None = None,
    client: Any | None = None,
    max_in_flight: int = 4,
) -> Buildings:
    """Polygonize a mask or region raster block by block into :class:`Buildings`.

    ``confidence`` is the mean of ``probability_path`` (uint8 0-255) inside each building;
    ``scoring`` as in :func:`buildings_from_regions`; ``client`` and ``max_in_flight`` as in
    :func:`~pipeline.vectorize.polygonize.polygonize_blocks`. Each band's finished regions are
    filtered, scored and outlined (:class:`Outliner`) as soon as the merge closes them, while
    the workers polygonize the next bands: the buildings of :func:`buildings_from_regions`.
    """
    bounds, pixel_m, crs = raster_extent(values_path)
    if crs is None:
        raise MissingCRSError(f"{scene}: regions have no CRS, so areas in m² are unknown; assign one")
    outliner = Outliner.start(crs, bounds=bounds, options=options, pixel_m=pixel_m, scoring=scoring)
    regions = polygonize_blocks(
        values_path, block_size=block_size, stats_path=probability_path, client=client,
        max_in_flight=max_in_flight, on_regions=outliner.add,
    )  # fmt: skip
    return outliner.buildings(regions, scene=scene)
