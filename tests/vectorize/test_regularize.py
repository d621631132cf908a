"""Regularization of building polygons: exact synthetic cases in a metric CRS."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.features import rasterize
from shapely import affinity

from pipeline.config import REPO_ROOT, PipelineConfig, load_config
from pipeline.core.errors import ConfigError
from pipeline.core.geo import MetricFrame
from pipeline.vectorize import regularize as regularize_module
from pipeline.vectorize import rings
from pipeline.vectorize.measure import orientation, polygon_iou
from pipeline.vectorize.overlaps import remove_overlaps
from pipeline.vectorize.polygonize import reference_polygons
from pipeline.vectorize.postprocess import estimate_pixel_m, fill_holes, postprocess
from pipeline.vectorize.regularize import regularize
from pipeline.vectorize.rings import canonical_rings
from tests.conftest import DEMO_LABELS, requires_real

PIXEL = 0.3
GRID = Affine(PIXEL, 0.0, 600000.0, 0.0, -PIXEL, 3300060.0)
UTM = MetricFrame.for_scene("EPSG:32614", (600000.0, 3300000.0, 600060.0, 3300060.0))

Geoms = NDArray[np.object_]


def pixels(*shapes: shapely.Geometry, size: int = 200) -> Geoms:
    """Rasterize shapes (pixel centres, one value each) onto the 0.3 m grid and vectorize."""
    burned = rasterize([(g, i + 1) for i, g in enumerate(shapes)], out_shape=(size, size), transform=GRID)
    return reference_polygons(burned.astype(np.uint8), transform=GRID).geometry


def place(geom: shapely.Geometry, angle: float, x: float = 30.0, y: float = 30.0) -> shapely.Geometry:
    """Rotate about the origin by ``angle`` degrees, then move to (x, y) m inside the grid."""
    return affinity.translate(affinity.rotate(geom, angle, origin=(0, 0)), 600000.0 + x, 3300000.0 + y)


def rectangle(angle: float, w: float = 12.0, h: float = 8.0, **at: float) -> shapely.Geometry:
    return place(shapely.box(-w / 2, -h / 2, w / 2, h / 2), angle, **at)


def corner_cosines(poly: shapely.Polygon) -> NDArray[np.float64]:
    """|cos| of every corner angle of the exterior (0 at a right angle)."""
    xy = np.asarray(poly.exterior.coords)[:-1]
    a, b = np.roll(xy, 1, axis=0) - xy, np.roll(xy, -1, axis=0) - xy
    cos = np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.asarray(np.abs(cos), dtype=np.float64)


def iou(a: shapely.Geometry, b: shapely.Geometry) -> float:
    return float(polygon_iou(np.array([a], dtype=object), np.array([b], dtype=object))[0])


# --------------------------------------------------------------------------- regularize


def test_rotated_staircase_rectangle_becomes_exact_rectangle() -> None:
    truth = rectangle(30.0)
    raw = pixels(truth)
    assert raw.size == 1 and shapely.get_num_coordinates(raw[0]) > 40  # a pixel staircase
    out = regularize(raw)[0]
    assert out.is_valid and out.geom_type == "Polygon"
    assert shapely.get_num_coordinates(out) == 5
    assert np.all(corner_cosines(out) < 1e-6)
    assert orientation(np.array([out]))[0] == pytest.approx(30.0, abs=2.0)
    assert iou(out, truth) > 0.95
    assert iou(out, truth) > iou(raw[0], truth)  # closer to the true walls than the staircase


@pytest.mark.parametrize("angle", [0.0, 90.0, 180.0, 270.0])
def test_orientation_axis_aligned_square_is_zero(angle: float) -> None:
    square = affinity.rotate(shapely.box(0, 0, 10, 10), angle, origin="centroid")
    assert orientation(np.array([square]))[0] == pytest.approx(0.0, abs=1e-9)


def test_orientation_folds_into_0_90() -> None:
    geoms = np.array([affinity.rotate(shapely.box(0, 0, 10, 6), a) for a in (-20.0, 70.0, 160.0, 250.0)])
    np.testing.assert_allclose(orientation(geoms), 70.0, atol=1e-9)


def test_l_shape_keeps_six_corners() -> None:
    ell = shapely.Polygon([(0, 0), (12, 0), (12, 5), (6, 5), (6, 10), (0, 10)])
    truth = place(affinity.translate(ell, -6, -5), 20.0)
    out = regularize(pixels(truth))[0]
    assert shapely.get_num_coordinates(out) == 7
    assert np.all(corner_cosines(out) < 1e-6)
    assert iou(out, truth) > 0.95


def test_diagonal_wall_is_kept() -> None:
    cut = shapely.Polygon([(0, 0), (14, 0), (14, 5), (9, 10), (0, 10)])  # a 45° wall of 7 m
    truth = place(affinity.translate(cut, -7, -5), 10.0)
    out = regularize(pixels(truth))[0]
    assert shapely.get_num_coordinates(out) == 6
    cos = np.sort(corner_cosines(out))
    assert np.all(cos[:3] < 1e-6) and np.all(np.abs(cos[3:] - np.cos(np.radians(45))) < 0.1)
    assert iou(out, truth) > 0.95


def test_axis_aligned_rectangle_is_unchanged() -> None:
    box = shapely.box(600010.0, 3300010.0, 600022.0, 3300018.0)
    out = regularize(np.array([box]))[0]
    assert out.equals(box)


def test_degenerate_sliver_falls_back_to_valid() -> None:
    sliver = shapely.Polygon([(0, 0), (10, 0), (10, 0.001), (0, 0.0005)])
    spike = shapely.Polygon([(0, 0), (10, 0), (10, 10), (5, 10), (5, 30), (4.99, 10), (0, 10)])
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    out = regularize(np.array([sliver, spike, bowtie, shapely.Polygon(), None], dtype=object))
    assert out.shape == (5,)
    assert np.all(shapely.is_valid(out[:4]))
    assert shapely.area(out[1]) == pytest.approx(100.0, rel=0.05)


def test_too_large_area_change_falls_back() -> None:
    raw = pixels(rectangle(30.0))
    out = regularize(raw, max_area_change=0.0)  # any change is too much: simplified input
    assert out[0].equals(shapely.simplify(raw[0], 0.5))


def test_holes_are_kept_and_valid() -> None:
    outer, inner = rectangle(25.0, 20.0, 14.0), rectangle(25.0, 6.0, 4.0)
    raw = pixels(outer.difference(inner))
    out = regularize(raw)[0]
    assert out.is_valid and len(out.interiors) == 1
    assert iou(out, outer.difference(inner)) > 0.93


# --------------------------------------------------------------------------- holes


def test_fill_holes_removes_small_keeps_large() -> None:
    shell = shapely.box(0, 0, 30, 30)
    small, large = shapely.box(2, 2, 3, 3), shapely.box(10, 10, 14, 15)  # 1 m² and 20 m²
    poly = shell.difference(small).difference(large)
    plain = shapely.box(40, 0, 50, 10)
    multi = shapely.MultiPolygon(
        [poly, shapely.box(100, 100, 110, 110).difference(shapely.box(101, 101, 101.5, 102))]
    )
    out = fill_holes(np.array([poly, plain, multi], dtype=object), max_hole_m2=1.5)
    assert len(out[0].interiors) == 1 and out[0].interiors[0].equals(large.exterior)
    assert out[0].area == pytest.approx(900.0 - 20.0)
    assert out[1] is plain
    assert out[2].geom_type == "MultiPolygon" and out[2].area == pytest.approx(900.0 - 20.0 + 100.0)
    assert fill_holes(np.array([poly], dtype=object), max_hole_m2=0.5)[0].area == pytest.approx(879.0)


# --------------------------------------------------------------------------- postprocess


def two_touching_houses() -> Geoms:
    """A 10 x 8 m and an 8 x 8 m house at 30°, sharing a wall (9 m apart along their axis)."""
    a = rectangle(30.0, 10.0, 8.0, x=25.0, y=30.0)
    step = 9.0 * np.array([np.cos(np.radians(30.0)), np.sin(np.radians(30.0))])
    b = rectangle(30.0, 8.0, 8.0, x=25.0 + step[0], y=30.0 + step[1])
    return pixels(a, b)


def test_postprocess_valid_and_non_overlapping() -> None:
    raw = two_touching_houses()
    assert raw.size == 2 and shapely.touches(raw[0], raw[1])
    for reg in (True, False):
        out = postprocess(
            raw, fill_holes_m2=1.0, simplify_m=0.3, regularize=reg,
            angle_tolerance_deg=15.0, min_edge_m=1.0,
        )  # fmt: skip
        assert out.shape == (2,) and np.all(shapely.is_valid(out)) and not np.any(shapely.is_empty(out))
        assert shapely.area(shapely.intersection(out[0], out[1])) < 1e-6
        assert np.all(polygon_iou(out, raw) > 0.85)
    squared = postprocess(
        raw, fill_holes_m2=1.0, simplify_m=0.3, regularize=True, angle_tolerance_deg=15.0, min_edge_m=1.0
    )
    assert shapely.get_num_coordinates(squared).max() <= 7


def test_remove_overlaps_larger_keeps_the_overlap() -> None:
    big, small = shapely.box(0, 0, 10, 10), shapely.box(8, 0, 12, 4)
    out = remove_overlaps(np.array([small, big], dtype=object), priority=np.array([16.0, 100.0]))
    assert out[1].equals(big)
    assert out[0].area == pytest.approx(8.0) and shapely.area(out[0].intersection(big)) < 1e-9
    covered = remove_overlaps(
        np.array([shapely.box(1, 1, 2, 2), big], dtype=object), priority=np.array([1.0, 100.0])
    )
    assert covered[0].is_empty and covered[0].is_valid


def test_estimate_pixel_m() -> None:
    assert estimate_pixel_m(two_touching_houses()) == pytest.approx(PIXEL)


def test_throughput() -> None:
    """Regularization of ~12-vertex houses (DP vertices) runs at thousands per second."""
    houses = [rectangle(a, 9.0 + a % 5, 7.0, x=10.0 + (i % 4) * 13.0, y=10.0 + (i // 4) * 13.0)
              for i, a in enumerate(np.linspace(3.0, 84.0, 16))]  # fmt: skip
    raw = np.concatenate([pixels(*houses)] * 40)
    regularize(raw[:16])
    t0 = time.perf_counter()
    out = regularize(raw)
    rate = raw.size / (time.perf_counter() - t0)
    assert np.all(shapely.is_valid(out))
    assert rate > 1000  # about 10 000/s unloaded; generous for busy CI machines


# --------------------------------------------------------------------------- config


def test_config_fields() -> None:
    vc = PipelineConfig().vectorize
    assert (vc.fill_holes_m2, vc.regularize, vc.angle_tolerance_deg, vc.min_edge_m) == (1.0, True, 15.0, 0.5)
    priors = (vc.orientation, vc.group_m, vc.group_tolerance_deg, vc.rectangle_iou)
    assert priors == ("envelope", 0.0, 5.0, 0.0)
    cfg = load_config(None, **{"vectorize.regularize": False, "vectorize.min_edge_m": 2.0})
    assert cfg.vectorize.regularize is False and cfg.vectorize.min_edge_m == 2.0
    with pytest.raises(ConfigError):
        load_config(None, **{"vectorize.angle_tolerance_deg": 60.0})
    with pytest.raises(ConfigError):
        load_config(None, **{"vectorize.orientation": "north"})


def test_default_yaml_matches_model() -> None:
    assert load_config(REPO_ROOT / "configs" / "default.yaml").vectorize == PipelineConfig().vectorize


# --------------------------------------------------------------------------- bounded passes


@requires_real
def test_chunked_passes_give_the_same_outlines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Squaring and canonical rings run CHUNK buildings at a time; each building is treated on its
    own, so small chunks give the same polygons, vertex for vertex, on the demo's buildings."""
    with rasterio.open(DEMO_LABELS) as ds:  # UTM: metres already
        raw = reference_polygons((ds.read(1) > 0).astype(np.uint8), transform=ds.transform).geometry
    assert raw.size > 100
    whole = (canonical_rings(raw), regularize(raw, simplify_m=0.6))
    monkeypatch.setattr(rings, "CHUNK", 7)
    monkeypatch.setattr(regularize_module, "CHUNK", 7)
    chunked = (canonical_rings(raw), regularize(raw, simplify_m=0.6))
    for a, b in zip(whole, chunked, strict=True):
        assert shapely.to_wkb(a).tolist() == shapely.to_wkb(b).tolist()
