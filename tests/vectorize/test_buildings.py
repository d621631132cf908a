"""The vectorize boundary: regions in the scene CRS, measured and outlined in metres.

A geographic scene's polygons go into its metric frame once and come back once; a metric
projected scene is not reprojected at all, and its buildings are those of the chain that
went back to the scene CRS between the steps, byte for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from pyproj import CRS as ProjCRS

from pipeline.config import load_config
from pipeline.core import geo
from pipeline.core.geo import MetricFrame
from pipeline.vectorize import buildings
from pipeline.vectorize.buildings import (
    OutlineOptions,
    SceneRegions,
    buildings_from_regions,
    outline_options,
    scene_regions,
    vectorize_scene,
)
from pipeline.vectorize.overlaps import polygonal_part
from pipeline.vectorize.postprocess import outline_each, postprocess
from pipeline.vectorize.rings import canonical_rings
from pipeline.vectorize.scoring import FEATURES, ScoreContext
from tests.conftest import DEMO_LABELS, REAL, requires_real, write_tif

RIO = REAL / "spacenet1_rio" / "building_mask_vis"
DEFAULT = outline_options(load_config(None).vectorize)
PRIORS = OutlineOptions(
    min_area_m2=8.0, fill_holes_m2=1.0, regularize=True, orientation="walls", group_m=3.0, rectangle_iou=0.8
)
DEG_PER_MM = 1e-3 / 111_000.0  # a millimetre on the ground, in degrees (at most)

Geoms = NDArray[np.object_]


@pytest.fixture
def reprojections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of geometries in each call of :func:`pipeline.core.geo.reproject`."""
    sizes: list[int] = []
    real = geo.reproject

    def counting(geoms: Geoms, *, src: ProjCRS, dst: ProjCRS) -> Geoms:
        sizes.append(len(geoms))
        return real(geoms, src=src, dst=dst)

    monkeypatch.setattr(geo, "reproject", counting)
    return sizes


def reprojected_at_every_step(
    sr: SceneRegions, options: OutlineOptions
) -> tuple[NDArray[np.int64], Geoms, NDArray[np.float64]]:
    """The chain before the metric frame was entered once: back in the scene CRS between the
    steps (area filter, post-processing, clip, delivered area). Kept regions, outlines, areas."""
    regions, bounds = sr.regions, sr.bounds
    frame = MetricFrame.for_scene(regions.crs, bounds)
    raw = canonical_rings(regions.geometry)
    keep = np.flatnonzero(shapely.area(frame.to_metric(raw)) >= options.min_area_m2)
    metric = postprocess(
        frame.to_metric(raw[keep]), fill_holes_m2=options.fill_holes_m2, simplify_m=options.simplify_m,
        regularize=options.regularize, angle_tolerance_deg=options.angle_tolerance_deg,
        min_edge_m=options.min_edge_m, pixel_m=sr.pixel_m, priors=options.priors,
    )  # fmt: skip
    out = frame.to_scene(metric)
    bad = ~shapely.is_valid(out)
    out[bad] = polygonal_part(out[bad])
    out = polygonal_part(shapely.intersection(out, shapely.box(*bounds)))
    alive = ~shapely.is_empty(out)
    return keep[alive], out[alive], np.asarray(shapely.area(frame.to_metric(out[alive])))


def _regions(path: Path) -> SceneRegions:
    return scene_regions(values_path=str(path), probability_path=None, block_size=128)


@requires_real
@pytest.mark.parametrize("tile", ["img53", "img54", "img57"])
@pytest.mark.parametrize("options", [DEFAULT, PRIORS], ids=["default", "priors"])
def test_geographic_scene_enters_the_metric_frame_once_with_the_same_buildings(
    tile: str, options: OutlineOptions, reprojections: list[int]
) -> None:
    """SpaceNet Rio masks (EPSG:4326): regions in once, buildings back once, same outlines."""
    sr = _regions(RIO / f"3band_013022223130_Public_{tile}.tif")
    keep, before, area = reprojected_at_every_step(sr, options)
    reprojections.clear()
    b = buildings_from_regions(sr.regions, scene=tile, bounds=sr.bounds, options=options, pixel_m=sr.pixel_m)
    assert reprojections == [1, len(sr.regions), len(b)]  # the scene's outline, the regions, the buildings
    assert len(b) > 10 and np.array_equal(b.keep, keep)
    assert np.all(shapely.is_valid(b.geometry))
    np.testing.assert_allclose(b.area_m2, area, rtol=0, atol=5e-3)  # measured: 8e-4 m² at most
    distance = shapely.hausdorff_distance(b.geometry, before)
    assert distance.max() < DEG_PER_MM  # measured: 0.2 mm at most, on the scene's edge
    inside = shapely.distance(before, shapely.box(*sr.bounds).exterior) > 0
    assert inside.sum() > 5 and np.all(distance[inside] == 0.0)  # away from the edge: the same vertices


@requires_real
def test_metric_scene_is_not_reprojected_and_its_buildings_are_unchanged(reprojections: list[int]) -> None:
    """The Austin labels (EPSG:26914): no reprojection, the same bytes as the stepwise chain."""
    sr = _regions(DEMO_LABELS)
    keep, before, area = reprojected_at_every_step(sr, PRIORS)
    b = buildings_from_regions(sr.regions, scene="a", bounds=sr.bounds, options=PRIORS, pixel_m=sr.pixel_m)
    assert reprojections == []
    assert len(b) > 100 and np.array_equal(b.keep, keep)
    assert shapely.to_wkb(b.geometry).tolist() == shapely.to_wkb(before).tolist()
    assert b.area_m2.tobytes() == area.tobytes()


def _whole(geoms: Geoms, **kw: Any) -> Geoms:
    """``postprocess`` under another name: buildings_from_regions then outlines the scene at once."""
    return postprocess(geoms, **kw)


SCENES = pytest.mark.parametrize(
    "path", [DEMO_LABELS, RIO / "3band_013022223130_Public_img53.tif"], ids=["metric", "geographic"]
)


def _outlined_at_once(path: Path, tmp_path: Path) -> tuple[SceneRegions, ScoreContext, buildings.Buildings]:
    """The scene's regions (bands of 128 rows) under a coordinate-encoded probability raster, and
    the buildings of outlining all of them together."""
    prob = _coordinate_probability(path, tmp_path / "p.tif")
    sr = scene_regions(values_path=str(path), probability_path=str(prob), block_size=128)
    scoring = ScoreContext(str(prob))
    whole = buildings_from_regions(
        sr.regions, scene="s", bounds=sr.bounds, options=DEFAULT, pixel_m=sr.pixel_m, scoring=scoring,
        outlines=_whole,
    )  # fmt: skip
    return sr, scoring, whole


@requires_real
@SCENES
def test_buildings_outlined_a_chunk_at_a_time_are_those_of_the_whole_scene(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filtered, scored and outlined 7 regions at a time, then the overlaps settled over the
    scene: the same buildings, byte for byte, as outlining all of them together."""
    sr, scoring, whole = _outlined_at_once(path, tmp_path)
    monkeypatch.setattr(buildings, "CHUNK", 7)
    outlined: list[int] = []

    def counting(geoms: Geoms, **kw: Any) -> tuple[Geoms, NDArray[np.float64]]:
        outlined.append(len(geoms))
        return outline_each(geoms, **kw)

    monkeypatch.setattr(buildings, "outline_each", counting)
    chunked = buildings_from_regions(
        sr.regions, scene="s", bounds=sr.bounds, options=DEFAULT, pixel_m=sr.pixel_m, scoring=scoring
    )
    assert len(sr.regions) > 5 * 7 and len(chunked) > 10
    assert len(outlined) == -(-len(sr.regions) // 7) and max(outlined) <= 7  # a chunk at a time
    assert_same_buildings(chunked, whole)


def assert_same_buildings(got: buildings.Buildings, want: buildings.Buildings) -> None:
    """The same buildings byte for byte: outlines, ids, regions, areas, confidences, features."""
    assert np.array_equal(got.keep, want.keep) and np.array_equal(got.id, want.id)
    assert shapely.to_wkb(got.geometry).tolist() == shapely.to_wkb(want.geometry).tolist()
    assert got.area_m2.tobytes() == want.area_m2.tobytes()
    assert got.confidence.tobytes() == want.confidence.tobytes()
    assert got.features is not None and want.features is not None
    assert got.features.tobytes() == want.features.tobytes()


@requires_real
@SCENES
def test_buildings_outlined_band_by_band_as_the_merge_finishes_them_are_those_of_the_whole_scene(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vectorize_scene outlines each band's finished regions while the next bands are polygonized
    (7 at a time here), in the merge's order: the buildings of outlining the whole scene at once."""
    sr, scoring, whole = _outlined_at_once(path, tmp_path)
    groups: list[int] = []
    add = buildings.Outliner.add

    def counting(self: buildings.Outliner, regions: Any) -> None:
        groups.append(len(regions))
        add(self, regions)

    monkeypatch.setattr(buildings.Outliner, "add", counting)
    monkeypatch.setattr(buildings, "CHUNK", 7)
    streamed = vectorize_scene(
        values_path=str(path), probability_path=scoring.probability_path, scene="s", options=DEFAULT,
        block_size=128, scoring=scoring,
    )  # fmt: skip
    assert len(groups) >= 4 and sum(groups) == len(sr.regions) and len(streamed) > 10
    assert_same_buildings(streamed, whole)


def _coordinate_probability(mask: Path, out: Path) -> Path:
    """A probability raster on ``mask``'s grid that varies with the pixel's position (0.6-1.0),
    so each building has its own confidence (some under ``min_confidence``) and edge features."""
    with rasterio.open(mask) as ds:
        rows, cols = np.indices(ds.shape)
        return write_tif(
            out, (153 + (rows * 7 + cols * 3) % 103).astype(np.uint8), crs=ds.crs, transform=ds.transform
        )


def test_no_regions_give_no_buildings_and_an_empty_feature_table(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "m.tif", np.zeros((16, 16), np.uint8), crs="EPSG:32614")
    b = vectorize_scene(
        values_path=str(path), probability_path=str(path), scene="s", options=DEFAULT,
        scoring=ScoreContext(str(path)),
    )  # fmt: skip
    assert len(b) == 0 and b.features is not None and b.features.shape == (0, len(FEATURES))


def _lonlat_mask(path: Path) -> tuple[Path, Affine]:
    """Two 12 x 8 m houses side by side and one 2 x 2 m shed at 22.94° S, pixels of 0.5 m."""
    px = 0.5 / 111_320.0
    transform = Affine(px / np.cos(np.radians(22.94)), 0.0, -43.69, 0.0, -px, -22.94)
    mask = np.zeros((80, 80), np.uint8)
    mask[10:26, 10:34] = 255  # 8 m x 12 m
    mask[10:26, 36:60] = 255
    mask[50:54, 50:54] = 255  # 2 m x 2 m: under min_area_m2
    return write_tif(path, mask, crs="EPSG:4326", transform=transform), transform


def test_lonlat_raster_is_outlined_in_metres_with_two_reprojections(
    tmp_path: Path, reprojections: list[int]
) -> None:
    path, transform = _lonlat_mask(tmp_path / "m.tif")
    b = vectorize_scene(values_path=str(path), probability_path=None, scene="s", options=DEFAULT)
    # one pixel measured when the raster is opened; the scene's outline and the three regions
    # into metres; the two buildings back
    assert reprojections == [1, 1, 3, 2]
    assert len(b) == 2 and b.id.tolist() == ["s-10-10", "s-10-36"]
    np.testing.assert_allclose(b.area_m2, 96.0, rtol=1e-2)  # 12 m x 8 m, not square degrees
    x0, y0, x1, y1 = shapely.total_bounds(b.geometry)
    assert transform.c < x0 < x1 < transform.c + 80 * transform.a
    assert transform.f + 80 * transform.e < y0 < y1 < transform.f
    assert np.all(shapely.get_num_coordinates(b.geometry) == 5)  # squared rectangles


def test_metric_raster_is_never_reprojected(tmp_path: Path, reprojections: list[int]) -> None:
    mask = np.zeros((40, 40), np.uint8)
    mask[5:25, 5:30] = 1
    path = write_tif(tmp_path / "m.tif", mask)
    b = vectorize_scene(values_path=str(path), probability_path=None, scene="s", options=DEFAULT)
    assert reprojections == [] and len(b) == 1
    assert b.area_m2[0] == pytest.approx(20 * 25 * 0.25)


def test_outline_options_take_the_vectorize_section() -> None:
    section = load_config(None, **{"vectorize.min_area_m2": 3.5, "vectorize.group_m": 2.0}).vectorize
    options = outline_options(section)
    assert options.min_area_m2 == 3.5 and options.group_m == 2.0 and options.priors.group_m == 2.0
    assert options.regularize is True and options.fill_holes_m2 == 1.0  # the config's defaults
    assert {k: getattr(options, k) for k in vars(options)} == {k: getattr(section, k) for k in vars(options)}
