"""Polygon metrics on hand-made pairs whose values are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import shapely.affinity

from pipeline.core.geo import MetricFrame
from pipeline.evaluation import polygon_metrics as pm
from pipeline.evaluation.evaluate import Objects, object_metrics

X0, Y0 = 600000.0, 3300000.0  # UTM-sized coordinates, as in real scenes
SQUARE = shapely.box(X0, Y0, X0 + 10, Y0 + 10)


def one(geom: shapely.Geometry) -> np.ndarray:
    return np.array([geom], dtype=object)


def test_square_against_itself_is_perfect() -> None:
    s = pm.summarize(one(SQUARE), one(SQUARE))
    assert s == {
        "pairs": 1, "mean_iou": 1.0, "c_iou": 1.0, "n_ratio": 1.0, "pred_vertices": 4, "true_vertices": 4,
        "polis_m": 0.0, "max_tangent_deg": 0.0, "tangent_pairs": 1, "rotation_deg": 0.0,
    }  # fmt: skip


def test_square_rotated_by_five_degrees() -> None:
    rotated = shapely.affinity.rotate(SQUARE, 5.0, origin="centroid")
    s = pm.summarize(one(rotated), one(SQUARE))
    iou = shapely.area(shapely.intersection(rotated, SQUARE)) / shapely.area(shapely.union(rotated, SQUARE))
    assert s["mean_iou"] == pytest.approx(iou, abs=1e-9)
    assert s["c_iou"] == pytest.approx(iou, abs=1e-9)  # both have 4 vertices
    assert s["n_ratio"] == 1.0
    assert s["rotation_deg"] == pytest.approx(5.0, abs=1e-6)
    assert s["max_tangent_deg"] == pytest.approx(5.0, abs=1e-6)
    # Each rotated corner sits 5*sqrt(2)*sin(50°) from the centre along the other's normal,
    # so every vertex is that minus 5 m from the other square's boundary, both ways.
    assert s["polis_m"] == pytest.approx(5 * math.sqrt(2) * math.sin(math.radians(50)) - 5, abs=1e-9)


def test_rotation_error_folds_into_zero_to_45() -> None:
    turned = [shapely.affinity.rotate(SQUARE, a, origin="centroid") for a in (-5.0, 40.0, 50.0, 95.0)]
    errors = pm.rotation_error(np.array(turned, dtype=object), np.array([SQUARE] * 4, dtype=object))
    np.testing.assert_allclose(errors, [5.0, 40.0, 40.0, 5.0], atol=1e-6)


def test_extra_collinear_vertices_count() -> None:
    # Midpoints added on two sides: 6 vertices, same outline.
    six = shapely.Polygon(
        [(X0, Y0), (X0 + 5, Y0), (X0 + 10, Y0), (X0 + 10, Y0 + 10), (X0 + 5, Y0 + 10), (X0, Y0 + 10)]
    )
    assert pm.vertex_counts(one(six)).tolist() == [6]
    s = pm.summarize(one(six), one(SQUARE))
    assert s["mean_iou"] == 1.0
    assert s["c_iou"] == pytest.approx(1.0 - 2 / 10)  # |6 - 4| / (6 + 4)
    assert s["n_ratio"] == pytest.approx(6 / 4)
    assert (s["pred_vertices"], s["true_vertices"]) == (6, 4)
    assert s["polis_m"] == 0.0 and s["max_tangent_deg"] == 0.0 and s["rotation_deg"] == 0.0


def test_vertex_counts_cover_holes_and_parts_without_closing_vertices() -> None:
    holed = shapely.box(0, 0, 10, 10).difference(shapely.box(4, 4, 6, 6))
    multi = shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(3, 0, 4, 1)])
    assert pm.vertex_counts([holed, multi, SQUARE]).tolist() == [8, 8, 4]


def test_shifted_square_polis_is_half_a_metre() -> None:
    # 10 m square shifted 1 m in x: two vertices of each lie on the other's boundary and
    # two are 1 m from it, so each direction averages 0.5 m; PoLiS = (0.5 + 0.5) / 2.
    shifted = shapely.affinity.translate(SQUARE, 1.0, 0.0)
    s = pm.summarize(one(shifted), one(SQUARE))
    assert s["polis_m"] == pytest.approx(0.5, abs=1e-9)
    assert s["mean_iou"] == pytest.approx(90 / 110)
    assert s["max_tangent_deg"] == 0.0 and s["rotation_deg"] == 0.0


def test_polis_is_in_metres_for_geographic_polygons() -> None:
    frame = MetricFrame.for_scene("EPSG:4326", (-43.69, -22.95, -43.68, -22.94))
    metric = np.array([shapely.box(680000, 7460000, 680010, 7460010)], dtype=object)
    degrees = frame.to_scene(metric), frame.to_scene(np.array([shapely.affinity.translate(metric[0], 1.0)]))
    objects = Objects.prepare(degrees[1], degrees[0], min_area_m2=8.0, frame=frame)
    mp, mt = objects.match(0.5)
    s = pm.summarize(objects.pred[mp], objects.truth[mt])
    assert s["pairs"] == 1 and s["polis_m"] == pytest.approx(0.5, abs=1e-6)


def test_f1_at_025_counts_a_pair_at_iou_04() -> None:
    truth, pred = [shapely.box(0, 0, 10, 10)], [shapely.box(0, 0, 10, 4)]  # IoU 40 / 100
    strict = object_metrics(pred, truth, iou_threshold=0.5)
    loose = object_metrics(pred, truth, iou_threshold=0.25)
    assert (strict["tp"], strict["fp"], strict["fn"], strict["f1"]) == (0, 1, 1, 0.0)
    assert (loose["tp"], loose["fp"], loose["fn"], loose["f1"]) == (1, 0, 0, 1.0)


def test_tangent_error_leaves_out_pieces_across_a_corner_and_skips_unmeasurable_pairs() -> None:
    # An L-shaped prediction over a square: the notch walls project perpendicularly onto
    # the true walls (chords of zero length) and are not measurable; every measured piece
    # lies along a true wall, so the error is 0.
    notch = shapely.box(X0, Y0, X0 + 10, Y0 + 10).difference(shapely.box(X0 + 8, Y0 + 8, X0 + 10, Y0 + 10))
    assert pm.max_tangent_error(one(notch), one(SQUARE)).tolist() == [0.0]
    assert np.isnan(pm.max_tangent_error(one(shapely.Polygon()), one(SQUARE))).all()


def test_pool_equals_summarize_of_all_pairs() -> None:
    rng = np.random.default_rng(5)
    truth = np.array([shapely.box(x, 0, x + 10, 12) for x in range(0, 200, 20)], dtype=object)
    pred = np.array(
        [shapely.affinity.rotate(shapely.affinity.translate(t, *rng.uniform(-1, 1, 2)), rng.uniform(-8, 8))
         for t in truth], dtype=object,
    )  # fmt: skip
    whole = pm.summarize(pred, truth)
    pooled = pm.pool([pm.summarize(pred[:3], truth[:3]), pm.summarize(pred[3:], truth[3:])])
    assert pooled.keys() == whole.keys()
    for key, value in whole.items():
        assert pooled[key] == pytest.approx(value, rel=1e-12), key


def test_no_pairs_gives_none_not_nan() -> None:
    empty = np.array([], dtype=object)
    s = pm.summarize(empty, empty)
    assert s["pairs"] == 0 and s["mean_iou"] is None and s["n_ratio"] is None and s["max_tangent_deg"] is None
    assert pm.pool([s, s])["polis_m"] is None
    assert pm.macro([s, {**s, "polis_m": 2.0}])["polis_m"] == 2.0
