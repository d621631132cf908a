"""Building-shaped priors: neighbours share directions, blobs become rectangles (exact synthetic cases)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from shapely import affinity

from pipeline.config import load_config
from pipeline.vectorize.buildings import outline_options
from pipeline.vectorize.measure import orientation as orientation_of
from pipeline.vectorize.postprocess import postprocess
from pipeline.vectorize.priors import Priors, folded_difference, moment_rectangles, shared_orientations
from pipeline.vectorize.regularize import regularize
from tests.vectorize.test_regularize import corner_cosines, iou, pixels, rectangle
from tests.vectorize.test_rings import assert_block_independent, building

Geoms = NDArray[np.object_]
GROUP = Priors(group_m=3.0, group_tolerance_deg=5.0)
RECTANGLES = Priors(rectangle_iou=0.85)


def edge_directions(poly: shapely.Polygon) -> NDArray[np.float64]:
    """Direction of every exterior edge, in degrees mod 90."""
    d = np.diff(np.asarray(poly.exterior.coords), axis=0)
    return np.asarray(np.mod(np.degrees(np.arctan2(d[:, 1], d[:, 0])), 90.0))


def spread(angles: NDArray[np.float64]) -> float:
    """Largest folded difference (mod 90°) between any two directions, in degrees."""
    a = np.radians(angles)
    return float(np.degrees(folded_difference(a[:, None], a[None, :]).max()))


def neighbours(angle_a: float, angle_b: float) -> Geoms:
    """Two 10 x 8 m houses side by side along x, 10.5 m apart, each rotated about its own centre."""
    a = affinity.rotate(shapely.box(-5, -4, 5, 4), angle_a, origin=(0, 0))
    b = affinity.rotate(shapely.box(-5, -4, 5, 4), angle_b, origin=(0, 0))
    return pixels(affinity.translate(a, 600020.0, 3300030.0), affinity.translate(b, 600030.5, 3300030.0))


def test_two_adjacent_rectangles_rotated_3_degrees_apart_come_out_parallel() -> None:
    raw = neighbours(20.0, 23.0)
    assert raw.size == 2
    plain = regularize(raw)
    assert spread(np.concatenate([edge_directions(p) for p in plain])) > 2.0  # each squared on its own
    out = regularize(raw, priors=GROUP)
    dirs = np.concatenate([edge_directions(p) for p in out])
    assert spread(dirs) < 1e-6  # every wall of both houses parallel or perpendicular
    assert np.all(shapely.get_num_coordinates(out) == 5)
    assert 20.0 < float(np.mean(dirs)) < 23.0  # the shared direction lies between the two


def test_far_or_differently_oriented_neighbours_keep_their_own_direction() -> None:
    out = regularize(neighbours(20.0, 35.0), priors=GROUP)  # 15° apart: beyond the 5° tolerance
    assert spread(edge_directions(out[0])) < 1e-6
    assert abs(float(np.mean(edge_directions(out[1]))) - float(np.mean(edge_directions(out[0])))) > 10.0
    far = pixels(rectangle(20.0, 8.0, 6.0, x=10.0, y=10.0), rectangle(23.0, 8.0, 6.0, x=45.0, y=45.0))
    dirs = [float(np.mean(edge_directions(p))) for p in regularize(far, priors=GROUP)]
    assert abs(dirs[1] - dirs[0]) > 2.0


def test_shared_walls_stay_aligned_and_nothing_overlaps() -> None:
    """Touching houses 3° apart: parallel walls, no overlap, and the shared wall is one line."""
    a = affinity.rotate(shapely.box(-5, -4, 5, 4), 20.0, origin=(0, 0))
    b = affinity.rotate(shapely.box(-4, -4, 4, 4), 23.0, origin=(0, 0))
    step = 9.0 * np.array([np.cos(np.radians(21.5)), np.sin(np.radians(21.5))])
    raw = pixels(
        affinity.translate(a, 600025.0, 3300030.0),
        affinity.translate(b, 600025.0 + step[0], 3300030.0 + step[1]),
    )
    assert raw.size == 2 and shapely.touches(raw[0], raw[1])
    v = load_config(None).vectorize
    out = postprocess(
        raw, fill_holes_m2=1.0, simplify_m=v.simplify_m, regularize=True,
        angle_tolerance_deg=15.0, min_edge_m=v.min_edge_m, pixel_m=0.3, priors=GROUP,
    )  # fmt: skip
    assert np.all(shapely.is_valid(out))
    assert shapely.area(shapely.intersection(out[0], out[1])) < 1e-6
    # parallel walls; snapping the smaller house onto its neighbour's corners may tilt an end by < 1°
    assert spread(np.concatenate([edge_directions(p) for p in out])) < 1.0
    shared = shapely.intersection(shapely.boundary(out[0]), shapely.boundary(out[1]))
    assert shapely.length(shared) > 6.0  # they share most of an 8 m wall, not a corner


def noisy_rectangle() -> Geoms:
    """A 14 x 9 m rectangle at 17° with noise on its walls: bumps and dents 1.5-1.8 m wide, 0.6 m deep."""
    truth = rectangle(17.0, 14.0, 9.0)
    bumps = [affinity.translate(shapely.box(-0.75, -0.6, 0.75, 0.6), x, y) for x, y in
             [(3.0, 4.5), (-4.0, -4.5), (7.0, 1.0)]]  # fmt: skip
    dents = [
        affinity.translate(shapely.box(-0.9, -0.6, 0.9, 0.6), x, y) for x, y in [(0.0, 4.5), (-7.0, -2.0)]
    ]
    shape = affinity.rotate(shapely.box(-7, -4.5, 7, 4.5), 17.0, origin=(0, 0))
    for g in bumps:
        shape = shape.union(affinity.rotate(g, 17.0, origin=(0, 0)))
    for g in dents:
        shape = shape.difference(affinity.rotate(g, 17.0, origin=(0, 0)))
    raw = pixels(affinity.translate(shape, 600030.0, 3300030.0))
    assert raw.size == 1 and iou(raw[0], truth) > 0.9
    return raw


@pytest.mark.parametrize("orientation", ["envelope", "walls"])
def test_slightly_noisy_rectangle_becomes_exactly_four_vertices(orientation: str) -> None:
    """With either orientation; the envelope's is the bumps' (3° off here), the walls' is within 1°."""
    raw = noisy_rectangle()
    truth = rectangle(17.0, 14.0, 9.0)
    squared = regularize(raw, min_edge_m=0.5, priors=Priors(orientation=orientation))[0]
    assert shapely.get_num_coordinates(squared) > 10  # the config's min_edge_m: squaring keeps the jogs
    out = regularize(raw, min_edge_m=0.5, priors=Priors(orientation=orientation, rectangle_iou=0.85))[0]
    assert out.is_valid and shapely.get_num_coordinates(out) == 5  # 4 vertices, closed
    assert np.all(corner_cosines(out) < 1e-9)
    assert iou(out, truth) > max(0.94, iou(squared, truth))
    assert float(orientation_of(np.array([out]))[0]) == pytest.approx(17.0, abs=3.5)


def test_an_l_shape_stays_an_l() -> None:
    ell = shapely.Polygon([(0, 0), (12, 0), (12, 5), (6, 5), (6, 10), (0, 10)])
    truth = affinity.translate(
        affinity.rotate(affinity.translate(ell, -6, -5), 20.0, origin=(0, 0)), 600030, 3300030
    )
    out = regularize(pixels(truth), priors=Priors(group_m=3.0, group_tolerance_deg=5.0, rectangle_iou=0.85))[
        0
    ]
    assert shapely.get_num_coordinates(out) == 7
    assert np.all(corner_cosines(out) < 1e-6) and iou(out, truth) > 0.95


def test_moment_rectangle_of_an_exact_rectangle_is_itself() -> None:
    box = affinity.rotate(shapely.box(0, 0, 12, 5), 30.0, origin=(0, 0))
    rect = moment_rectangles(np.array([box], dtype=object), np.radians([30.0]))[0]
    assert rect.is_valid and rect.exterior.is_ccw
    assert shapely.hausdorff_distance(rect, box) < 1e-9


def test_shared_orientations_groups_are_components_with_one_value() -> None:
    boxes = np.array([shapely.box(x, 0, x + 5, 5) for x in (0.0, 6.0, 12.0, 40.0)], dtype=object)
    theta = np.radians([10.0, 12.0, 14.0, 11.0])
    out = shared_orientations(
        boxes, theta, weight=np.ones(4), ok=np.ones(4, bool), distance_m=2.0, tolerance_deg=3.0
    )
    assert out[0] == out[1] == out[2] and out[0] == pytest.approx(np.radians(12.0), abs=1e-9)
    assert out[3] == theta[3]  # alone: untouched
    wrapped = shared_orientations(  # 89° and 1° are 2° apart mod 90°
        boxes[:2], np.radians([89.0, 1.0]), weight=np.ones(2), ok=np.ones(2, bool), distance_m=2.0,
        tolerance_deg=3.0,
    )  # fmt: skip
    assert wrapped[0] == wrapped[1] and float(np.degrees(wrapped[0])) == pytest.approx(0.0, abs=1e-9)


def test_priors_leave_no_overlap_and_stay_in_the_scene() -> None:
    """A dense block of touching houses at 0-6°, cut by the scene's edge."""
    houses = [
        rectangle(2.0 * (i % 4), 7.0, 6.0, x=4.0 + 6.6 * (i % 8), y=4.0 + 6.2 * (i // 8)) for i in range(40)
    ]
    raw = pixels(*houses)
    v = load_config(None).vectorize
    priors = Priors(group_m=3.0, group_tolerance_deg=8.0, rectangle_iou=0.8)
    out = postprocess(
        raw, fill_holes_m2=1.0, simplify_m=v.simplify_m, regularize=True, angle_tolerance_deg=15.0,
        min_edge_m=v.min_edge_m, pixel_m=0.3, priors=priors,
    )  # fmt: skip
    out = out[~shapely.is_empty(out)]
    assert out.size > 30 and np.all(shapely.is_valid(out))
    a, b = shapely.STRtree(out).query(out, predicate="intersects")
    keep = a < b
    assert shapely.area(shapely.intersection(out[a[keep]], out[b[keep]])).max() < 1e-6


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(buildings=st.lists(building, min_size=1, max_size=6), blocks=st.lists(st.integers(1, 70), max_size=3))
def test_property_priors_keep_delivered_polygons_independent_of_blocks(
    buildings: list[tuple[int, int, int, int, int, float]], blocks: list[int]
) -> None:
    options = dataclasses.replace(
        outline_options(load_config(None).vectorize), group_m=3.0, group_tolerance_deg=8.0, rectangle_iou=0.8
    )
    assert_block_independent(buildings, blocks, options)


# --------------------------------------------------------------------------- corner areas (issue 12)


def default_outlines(*truth: shapely.Geometry) -> Geoms:
    """Pixel outlines of ``truth`` (0.3 m) post-processed with the default config's settings."""
    o = outline_options(load_config(None).vectorize)
    return postprocess(
        pixels(*truth), fill_holes_m2=o.fill_holes_m2, simplify_m=o.simplify_m, regularize=True,
        angle_tolerance_deg=o.angle_tolerance_deg, min_edge_m=o.min_edge_m, pixel_m=0.3, priors=o.priors,
    )  # fmt: skip


def test_default_corner_area_ratio() -> None:
    assert outline_options(load_config(None).vectorize).priors.corner_area_ratio == 0.01


def test_small_cut_corner_goes_by_area() -> None:
    # a 2.5 m cut corner (3.5 m long, so the length rule keeps it) moves 3.125 m² of 596.9 m²: 0.52%
    cut = shapely.Polygon([(0, 0), (30, 0), (30, 17.5), (27.5, 20), (0, 20)])
    kept = regularize(np.array([cut]), priors=Priors())[0]
    assert kept.normalize().equals(cut.normalize())
    out = regularize(np.array([cut]), priors=Priors(corner_area_ratio=0.01))[0]
    assert out.normalize().equals(shapely.box(0, 0, 30, 20).normalize())


def test_real_diagonal_wall_is_kept_by_area() -> None:
    # a 7 m diagonal wall: dropping it moves 12.5 m² of 127.5 m² (9.8%)
    wall = shapely.Polygon([(0, 0), (14, 0), (14, 5), (9, 10), (0, 10)])
    out = regularize(np.array([wall]), priors=Priors(corner_area_ratio=0.01))[0]
    assert out.normalize().equals(wall.normalize())
    gone = regularize(np.array([wall]), priors=Priors(corner_area_ratio=0.1))[0]
    assert gone.normalize().equals(shapely.box(0, 0, 14, 10).normalize())


@pytest.mark.parametrize("angle", [0.0, 20.0, 33.0])
def test_rounded_corners_of_a_blob_become_right_angles(angle: float) -> None:
    rounded = shapely.box(3, 3, 21, 13).buffer(3, quad_segs=2)  # 24 x 16 m, 3 m radius corners
    truth = affinity.translate(affinity.rotate(affinity.translate(rounded, -12, -8), angle, origin=(0, 0)),
                               600030.0, 3300030.0)  # fmt: skip
    assert shapely.get_num_coordinates(regularize(pixels(truth), priors=Priors())[0]) > 9
    out = default_outlines(truth)[0]
    assert shapely.get_num_coordinates(out) == 5
    assert np.all(corner_cosines(out) < 1e-6)
    assert iou(out, truth) > 0.95


def test_default_outlines_drop_noise_jog_keep_real_wing() -> None:
    jog = shapely.Polygon([(0, 0), (12, 0), (12, 8), (6, 8), (6, 8.4), (0, 8.4)])  # 0.4 m noise jog
    ell = shapely.Polygon([(0, 0), (12, 0), (12, 5), (4, 5), (4, 8), (0, 8)])  # a real 3 m wing
    placed = [affinity.translate(affinity.rotate(g, 25.0, origin=(0, 0)), 600000.0 + x, 3300020.0)
              for g, x in ((jog, 15.0), (ell, 40.0))]  # fmt: skip
    out = default_outlines(*placed)
    assert [shapely.get_num_coordinates(g) for g in out] == [5, 7]
    assert all(np.all(corner_cosines(g) < 1e-6) for g in out)
    assert iou(out[1], placed[1]) > 0.95
