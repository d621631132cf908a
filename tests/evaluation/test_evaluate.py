"""Evaluation: pixel and SpaceNet object metrics, truth loading, and the ``evaluate`` CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import typer
from affine import Affine
from numpy.typing import NDArray
from typer.testing import CliRunner

from pipeline.cli.evaluate import register
from pipeline.core.errors import FootprintsError, InputNotFoundError
from pipeline.core.geo import MetricFrame
from pipeline.evaluation.evaluate import (
    candidate_ious,
    evaluate,
    match_one_to_one,
    object_metrics,
    pixel_metrics,
)
from tests.conftest import DEMO_LABELS, REAL, requires_real, write_tif

UTM = "EPSG:32614"
X0, Y0 = 600000.0, 3300000.0
GRID = Affine(1.0, 0.0, X0, 0.0, -1.0, Y0)  # 1 m pixels
SIZE = 40


def sq(x: float, y: float, side: float = 10.0) -> shapely.Polygon:
    return shapely.box(x, y, x + side, y + side)


def px_box(r0: int, r1: int, c0: int, c1: int) -> shapely.Polygon:
    """Rows r0..r1-1, columns c0..c1-1 of ``GRID`` as a polygon in UTM."""
    return shapely.box(X0 + c0, Y0 - r1, X0 + c1, Y0 - r0)


# ------------------------------------------------------------------ object metrics


def test_identical_sets_score_one() -> None:
    polys = [sq(20.0 * i, 0.0) for i in range(5)]
    m = object_metrics(polys, list(polys))
    assert (m["tp"], m["fp"], m["fn"]) == (5, 0, 0)
    assert m["precision"] == m["recall"] == m["f1"] == 1.0


def test_shifted_polygon_is_a_false_positive_and_a_miss() -> None:
    truth = [sq(20.0 * i, 0.0) for i in range(5)]
    pred = [*truth[:4], sq(80.0 + 7.0, 0.0)]  # IoU 30 / 170 < 0.5
    m = object_metrics(pred, truth)
    assert (m["tp"], m["fp"], m["fn"]) == (4, 1, 1)
    assert m["precision"] == m["recall"] == m["f1"] == pytest.approx(0.8)


def test_iou_at_exactly_half_matches() -> None:
    truth = [shapely.box(0, 0, 10, 10)]
    pred = [shapely.box(0, 0, 10, 5)]  # IoU 50 / 100
    assert object_metrics(pred, truth)["tp"] == 1
    assert object_metrics([shapely.box(0, 0, 10, 4.9)], truth)["tp"] == 0


def test_one_truth_matches_only_one_of_two_predictions() -> None:
    truth = [sq(0.0, 0.0)]
    pred = [sq(0.0, 0.0), sq(1.0, 0.0)]  # both IoU >= 0.5 with the one truth
    m = object_metrics(pred, truth)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 0)


def test_matching_is_optimal_not_greedy() -> None:
    # Greedy would take the best pair (P1, T2: 0.958) first and leave one match;
    # the optimal one-to-one matching finds two (P1-T1 0.870, P2-T2 0.571).
    t1, t2 = shapely.box(0, 0, 10, 10), shapely.box(0, 0, 10, 12)
    p1, p2 = shapely.box(0, 0, 10, 11.5), shapely.box(0, 0, 10, 21)
    pred, truth = np.array([p1, p2], dtype=object), np.array([t1, t2], dtype=object)
    pi, ti, iou = candidate_ious(pred, truth)
    mp, mt = match_one_to_one(pred_idx=pi, truth_idx=ti, iou=iou)
    assert sorted(zip(mp.tolist(), mt.tolist(), strict=True)) == [(0, 0), (1, 1)]
    assert object_metrics(pred, truth)["tp"] == 2


def test_grouped_matching_equals_a_dense_assignment() -> None:
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 60, (2, 40, 2))
    pred = shapely.box(corners[0, :, 0], corners[0, :, 1], corners[0, :, 0] + 10, corners[0, :, 1] + 10)
    truth = shapely.box(corners[1, :, 0], corners[1, :, 1], corners[1, :, 0] + 10, corners[1, :, 1] + 10)
    pi, ti, iou = candidate_ious(pred, truth)
    mp, mt = match_one_to_one(pred_idx=pi, truth_idx=ti, iou=iou)
    dense = np.zeros((40, 40))
    ok = iou >= 0.5
    dense[pi[ok], ti[ok]] = 41 + iou[ok]
    rows, cols = linear_sum_assignment(dense, maximize=True)
    assert mp.size == int(np.count_nonzero(dense[rows, cols])) > 3
    assert np.unique(mp).size == mp.size and np.unique(mt).size == mt.size
    lookup = dict(zip(zip(pi.tolist(), ti.tolist(), strict=True), iou.tolist(), strict=True))
    assert all(lookup[(p, t)] >= 0.5 for p, t in zip(mp.tolist(), mt.tolist(), strict=True))


def test_candidate_pairs_come_from_the_tree_not_all_pairs() -> None:
    pred = np.array([sq(20.0 * i, 0.0) for i in range(50)], dtype=object)
    pi, ti, iou = candidate_ious(pred, pred)
    assert pi.size == 50  # squares 10 m apart never intersect each other
    np.testing.assert_array_equal(pi, ti)
    np.testing.assert_allclose(iou, 1.0)


def test_min_area_filter_both_sides() -> None:
    truth = [sq(0.0, 0.0), sq(50.0, 0.0, side=2.5)]  # 6.25 m² truth without prediction
    pred = [sq(0.0, 0.0), sq(80.0, 0.0, side=2.0)]  # 4 m² prediction without truth
    m = object_metrics(pred, truth, min_area_m2=8.0)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0)
    m = object_metrics(pred, truth, min_area_m2=0.0)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 1)


def test_min_area_is_in_square_metres_for_geographic_polygons() -> None:
    frame = MetricFrame.for_scene("EPSG:4326", (-43.69, -22.95, -43.68, -22.94))
    metric = np.array([sq(680000.0, 7460000.0), sq(680050.0, 7460000.0, side=2.0)], dtype=object)
    degrees = frame.to_scene(metric)  # a 100 m² and a 4 m² square in lon/lat
    m = object_metrics(degrees, degrees[:1], min_area_m2=8.0, frame=frame)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0)


def test_empty_sides() -> None:
    both = object_metrics([], [])
    assert (both["tp"], both["fp"], both["fn"], both["f1"]) == (0, 0, 0, 1.0)
    missed = object_metrics([], [sq(0.0, 0.0)])
    assert (missed["fn"], missed["precision"], missed["recall"], missed["f1"]) == (1, 0.0, 0.0, 0.0)


def test_invalid_and_missing_geometries_are_repaired_or_dropped() -> None:
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    m = object_metrics([bowtie, None, shapely.Polygon()], [bowtie])
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0)


# ------------------------------------------------------------------ pixel metrics


def test_pixel_metrics_with_nodata() -> None:
    pred = np.array([[1, 1, 0, 0], [1, 0, 1, 1]], bool)
    truth = np.array([[1, 0, 1, 0], [1, 1, 1, 1]], bool)
    valid = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    m = pixel_metrics(pred, truth, valid)
    assert (m["tp"], m["fp"], m["fn"]) == (3, 1, 2)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 5)
    assert m["iou"] == pytest.approx(3 / 6)
    everything = pixel_metrics(pred, truth)
    assert (everything["tp"], everything["fp"], everything["fn"]) == (4, 1, 2)


def test_pixel_metrics_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="one shape"):
        pixel_metrics(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


# ------------------------------------------------------------------ end to end

# Prediction: A, B, C (8 x 8 px) and a 2 x 2 px speck; rows 36-39 are nodata.
# Truth:      A, C identical, B shifted 5 columns (IoU 24/104), D only in truth,
#             E inside the nodata rows (left out on both counts).
A, B, C = (2, 10, 2, 10), (2, 10, 20, 28), (20, 28, 2, 10)
SPECK = (30, 32, 30, 32)
B_SHIFTED, D, E = (2, 10, 25, 33), (20, 28, 20, 28), (37, 40, 10, 20)
PIXEL = {"tp": 152, "fp": 44, "fn": 104}
OBJECT = {"tp": 2, "fp": 1, "fn": 2}


def _raster(boxes: list[tuple[int, int, int, int]], *, value: int = 1) -> NDArray[np.uint8]:
    data = np.zeros((SIZE, SIZE), np.uint8)
    for r0, r1, c0, c1 in boxes:
        data[r0:r1, c0:c1] = value
    return data


def make_outdir(root: Path, *, scene: str = "tile-a") -> Path:
    out = root / "run"
    out.mkdir()
    mask = _raster([A, B, C, SPECK])
    mask[36:, :] = 255
    write_tif(out / "mask.tif", mask, crs=UTM, transform=GRID, nodata=255)
    polys = [px_box(*b) for b in (A, B, C, SPECK)]
    frame = gpd.GeoDataFrame(
        {"id": [f"{scene}-{i}" for i in range(4)], "area_m2": shapely.area(polys), "confidence": 0.9,
         "scene": scene, "model": "test"},
        geometry=polys,
        crs=UTM,
    )  # fmt: skip
    frame.to_file(out / "buildings.gpkg", layer="buildings", driver="GPKG", engine="pyogrio")
    (out / "run.json").write_text(json.dumps({"scene": scene, "input": {"path": f"/data/{scene}.tif"}}))
    return out


def truth_tif(root: Path) -> Path:
    return write_tif(root / "truth.tif", _raster([A, B_SHIFTED, C, D, E], value=255), crs=UTM, transform=GRID)


def truth_geojson(root: Path) -> Path:
    polys = [px_box(*b) for b in (A, B_SHIFTED, C, D, E)]
    frame = gpd.GeoDataFrame({"kind": ["building"] * len(polys)}, geometry=polys, crs=UTM).to_crs(4326)
    path = root / "truth.geojson"
    frame.to_file(path, driver="GeoJSON", engine="pyogrio")
    return path


def write_gpkg(path: Path, polys: Any, *, crs: Any) -> None:
    gpd.GeoDataFrame(geometry=list(polys), crs=crs).to_file(path, layer="buildings", engine="pyogrio")


def _counts(metrics: dict[str, Any]) -> dict[str, int]:
    return {k: metrics[k] for k in ("tp", "fp", "fn")}


def test_evaluate_against_mask_and_vector_truth(tmp_path: Path) -> None:
    out = make_outdir(tmp_path)
    report = evaluate(pairs=[(out, truth_tif(tmp_path)), (out, truth_geojson(tmp_path))])
    for scene in report["scenes"]:
        assert scene["scene"] == "tile-a" and scene["input"] == "/data/tile-a.tif"
        assert _counts(scene["pixel"]) == PIXEL
        assert _counts(scene["object"]) == OBJECT
        assert scene["object"]["f1"] == pytest.approx(4 / 7)
    overall = report["overall"]
    assert _counts(overall["pixel"]) == {k: 2 * v for k, v in PIXEL.items()}
    assert _counts(overall["object"]) == {k: 2 * v for k, v in OBJECT.items()}
    assert overall["pixel"]["iou"] == pytest.approx(152 / 300)


def test_truth_raster_on_another_grid_is_warped(tmp_path: Path) -> None:
    out = make_outdir(tmp_path)
    big = np.zeros((SIZE + 20, SIZE + 30), np.uint8)  # starts 10 px left and 5 px above
    big[5:-15, 10:-20] = _raster([A, B_SHIFTED, C, D, E])
    shifted = Affine(1.0, 0.0, X0 - 10, 0.0, -1.0, Y0 + 5)
    path = write_tif(tmp_path / "big.tif", big, crs=UTM, transform=shifted)
    scene = evaluate(pairs=[(out, path)])["scenes"][0]
    assert _counts(scene["pixel"]) == PIXEL
    assert _counts(scene["object"]) == OBJECT
    assert scene["extent"] == {"pred_share": 1.0, "truth_share": pytest.approx(1600 / 4200)}
    assert "100.0 % of the prediction and 38.1 % of the labels" in scene["warnings"][0]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_unreferenced_png_truth_on_the_prediction_grid(tmp_path: Path) -> None:
    out = make_outdir(tmp_path)
    png = tmp_path / "truth.png"
    with rasterio.open(png, "w", driver="PNG", height=SIZE, width=SIZE, count=1, dtype="uint8") as ds:
        ds.write(_raster([A, B_SHIFTED, C, D, E], value=7), 1)
    scene = evaluate(pairs=[(out, png)], truth_value=7)["scenes"][0]
    assert _counts(scene["pixel"]) == PIXEL
    assert _counts(scene["object"]) == OBJECT


def test_missing_inputs_raise_footprints_errors(tmp_path: Path) -> None:
    out = make_outdir(tmp_path)
    with pytest.raises(InputNotFoundError, match=r"nope\.tif"):
        evaluate(pairs=[(out, tmp_path / "nope.tif")])
    with pytest.raises(InputNotFoundError, match=r"mask\.tif"):
        evaluate(pairs=[(tmp_path, truth_tif(tmp_path))])
    (tmp_path / "labels.xyz").write_text("?")
    with pytest.raises(FootprintsError, match="unknown label format"):
        evaluate(pairs=[(out, tmp_path / "labels.xyz")])


FAR = Affine(1.0, 0.0, X0 + 5000, 0.0, -1.0, Y0)  # 5 km east of the prediction (see test_eval_inputs)


# ------------------------------------------------------------------ object F1 at 0.25 and polygon metrics


def test_scene_reports_loose_f1_and_polygon_metrics(tmp_path: Path) -> None:
    scene = evaluate(pairs=[(make_outdir(tmp_path), truth_tif(tmp_path))])["scenes"][0]
    assert _counts(scene["object_iou25"]) == OBJECT  # B against B shifted: IoU 24/104 < 0.25 too
    poly = scene["polygon"]  # A and C: pixel boxes, 4 vertices on both sides
    assert poly["pairs"] == 2 and poly["tangent_pairs"] == 2
    assert (poly["mean_iou"], poly["c_iou"], poly["n_ratio"]) == (1.0, 1.0, 1.0)
    assert (poly["polis_m"], poly["max_tangent_deg"], poly["rotation_deg"]) == (0.0, 0.0, 0.0)


def test_sources_add_per_source_and_macro(tmp_path: Path) -> None:
    out = make_outdir(tmp_path)
    report = evaluate(pairs=[(out, truth_tif(tmp_path))] * 2, sources=["x", "y"])
    assert [s["source"] for s in report["scenes"]] == ["x", "y"]
    assert list(report["sources"]) == ["x", "y"] and report["macro"]["sources"] == 2
    assert report["macro"]["object"]["f1"] == pytest.approx(4 / 7)
    with pytest.raises(FootprintsError, match="one --source per --pred"):
        evaluate(pairs=[(out, truth_tif(tmp_path))], sources=["x", "y"])


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    register(app)
    return app


def test_cli_table_and_json_file(tmp_path: Path) -> None:
    out = make_outdir(tmp_path)
    target = tmp_path / "report.json"
    args = ["evaluate", "--pred", str(out), "--truth", str(truth_tif(tmp_path))]
    args += ["--pred", str(out), "--truth", str(truth_geojson(tmp_path)), "--json", str(target)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "overall" in result.stdout and "tile-a" in result.stdout
    report = json.loads(target.read_text())
    assert len(report["scenes"]) == 2
    assert report["overall"]["object"]["tp"] == 4
    assert not list(tmp_path.glob(".report.json*"))


def test_cli_json_to_stdout(tmp_path: Path) -> None:
    out = make_outdir(tmp_path)
    args = [
        "evaluate",
        "--pred",
        str(out),
        "--truth",
        str(truth_tif(tmp_path)),
        "--min-area",
        "0",
        "--json",
        "-",
    ]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["params"]["min_area_m2"] == 0.0
    assert _counts(report["overall"]["object"]) == {"tp": 2, "fp": 2, "fn": 2}  # the speck counts now
    assert "overall" in result.stderr


@pytest.mark.parametrize("case", ["missing", "mismatch", "rgb", "elsewhere"])
def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    out = make_outdir(tmp_path)
    truth, expect = {
        "missing": (tmp_path / "missing.geojson", "missing.geojson"),
        "mismatch": (truth_tif(tmp_path), "--truth"),
        "rgb": (write_tif(tmp_path / "rgb.tif", np.zeros((3, SIZE, SIZE), np.uint8), crs=UTM, transform=GRID),
                "rgb.tif: truth raster has 3 bands"),
        "elsewhere": (write_tif(tmp_path / "far.tif", _raster([A]), crs=UTM, transform=FAR), "far.tif"),
    }[case]  # fmt: skip
    args = ["evaluate", "--pred", str(out), "--truth", str(truth)]
    if case == "mismatch":
        args = ["evaluate", "--pred", str(out), "--pred", str(out), "--truth", str(truth)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert expect in lines[0]


def test_cli_sources_print_macro_first(tmp_path: Path) -> None:
    out, truth = make_outdir(tmp_path), truth_tif(tmp_path)
    args = ["evaluate", "--pred", str(out), "--truth", str(truth), "--source", "x"]
    args += ["--pred", str(out), "--truth", str(truth), "--source", "y"]
    result = CliRunner().invoke(_app(), args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.index("macro") < text.index("pooled") < text.index("per source")


# ------------------------------------------------------------------ real data


@pytest.mark.realdata
@requires_real
def test_real_inria_labels_against_themselves(tmp_path: Path) -> None:
    """The Austin label mask as a prediction scores 1 everywhere (EPSG:26914, float-noisy transform)."""
    from pipeline.vectorize.polygonize import reference_polygons

    with rasterio.open(DEMO_LABELS) as ds:
        labels, crs, transform = ds.read(1), ds.crs, ds.transform
    out = tmp_path / "run"
    out.mkdir()
    write_tif(
        out / "mask.tif", (labels > 0).astype(np.uint8), crs=crs.to_string(), transform=transform, nodata=255
    )
    polys = reference_polygons((labels > 0).astype(np.uint8), transform=transform).geometry
    gpd.GeoDataFrame(geometry=polys, crs=crs).to_file(
        out / "buildings.gpkg", layer="buildings", engine="pyogrio"
    )
    scene = evaluate(pairs=[(out, DEMO_LABELS)])["scenes"][0]
    assert scene["pixel"]["iou"] == 1.0 and scene["pixel"]["fp"] == 0
    assert scene["object"]["f1"] == 1.0 and scene["object"]["tp"] > 100
    poly = scene["polygon"]  # the truth's own pixel outlines: every shape figure is perfect
    assert poly["pairs"] == scene["object"]["tp"] and poly["n_ratio"] == 1.0 and poly["c_iou"] == 1.0
    assert poly["polis_m"] == pytest.approx(0.0, abs=1e-9)
    assert poly["max_tangent_deg"] == pytest.approx(0.0, abs=1e-6)
    assert poly["rotation_deg"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.realdata
@requires_real
def test_real_tanzania_geojson_in_crs84_over_utm_south(tmp_path: Path) -> None:
    """CRS84 polygons over an EPSG:32737 scene: clipped to the scene, reprojected, rasterized."""
    image = REAL / "open_ai_tanzania" / "images" / "tanzania_sample.tif"
    truth = REAL / "open_ai_tanzania" / "labels" / "tanzania_sample.geojson"
    with rasterio.open(image) as ds:
        crs, transform, shape, bounds = ds.crs, ds.transform, ds.shape, ds.bounds
    frame = gpd.read_file(truth, engine="pyogrio").to_crs(crs)
    polys = shapely.intersection(np.asarray(frame.geometry.values), shapely.box(*bounds))
    polys = polys[~shapely.is_empty(polys)]
    from rasterio.features import rasterize

    mask = rasterize(((p, 1) for p in polys), out_shape=shape, transform=transform, fill=0, dtype="uint8")
    out = tmp_path / "run"
    out.mkdir()
    write_tif(out / "mask.tif", mask, crs=crs.to_string(), transform=transform, nodata=255)
    gpd.GeoDataFrame(geometry=polys, crs=crs).to_file(
        out / "buildings.gpkg", layer="buildings", engine="pyogrio"
    )
    scene = evaluate(pairs=[(out, truth)])["scenes"][0]
    assert scene["pixel"]["iou"] == 1.0
    assert scene["object"]["f1"] == 1.0 and scene["object"]["tp"] > 0
