"""End-to-end: the CLI writes exactly the known outputs, georeferenced, atomic and self-describing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
from typer.testing import CliRunner

import pipeline
from pipeline.cli.main import app
from pipeline.config import load_config
from pipeline.describe.output_files import OUTPUT_NAMES
from pipeline.run.model_choice import choose_model, probability_classes
from tests.conftest import UTM_CRS, coordinate_image

OUTPUTS = set(OUTPUT_NAMES)
runner = CliRunner()


@pytest.fixture(scope="module")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text("tiling: {tile_size: 256, overlap: 32, batch_size: 2}\nvectorize: {min_area_m2: 0}\n")
    return path


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory: pytest.TempPathFactory, small_config: Path) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("scene")
    image = coordinate_image(600, 700)
    image[:, :, :300] = 0  # nodata margin on the left, wider than a tile
    from tests.conftest import write_tif

    src = write_tif(tmp / "scene.tif", image, nodata=0)
    out = tmp / "out"
    result = runner.invoke(app, ["segment", str(src), "--out", str(out), "--config", str(small_config)])
    assert result.exit_code == 0, result.output
    return src, out


def test_exactly_the_known_outputs(scene_run: tuple[Path, Path]) -> None:
    _, out = scene_run
    assert {p.name for p in out.iterdir()} == OUTPUTS


def test_rasters_match_the_input_grid_and_are_cogs(scene_run: tuple[Path, Path]) -> None:
    src, out = scene_run
    with rasterio.open(src) as s:
        crs, transform, shape, valid = s.crs, s.transform, s.shape, s.dataset_mask() > 0
    for name, dtype in [("probability.tif", "uint8"), ("mask.tif", "uint8")]:
        with rasterio.open(out / name) as ds:
            assert ds.crs == crs and ds.transform == transform and ds.shape == shape
            assert ds.dtypes[0] == dtype and ds.profile["tiled"] and ds.compression.name == "deflate"
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert ds.overviews(1), "COG needs internal overviews"
            np.testing.assert_array_equal(ds.dataset_mask() > 0, valid)
    with rasterio.open(out / "mask.tif") as ds:
        values = set(np.unique(ds.read(1, masked=True).compressed()).tolist())
        assert values <= {0, 1} and ds.nodata == 255


def test_run_record(scene_run: tuple[Path, Path]) -> None:
    _, out = scene_run
    rec = json.loads((out / "run.json").read_text())
    assert rec["config"]["tiling"]["tile_size"] == 256
    assert len(rec["input"]["sha256"]) == 64 and rec["model"]["id"]
    assert rec["counts"]["tiles"] == rec["counts"]["tiles_inferred"] + rec["counts"]["tiles_skipped"]
    assert rec["counts"]["tiles_skipped"] >= 1
    assert set(rec["seconds"]) >= {"plan", "infer_stitch", "vectorize", "write_vectors"}
    assert rec["versions"]["torch"] and rec["versions"]["rasterio"]
    assert rec["footprints_version"] == pipeline.__version__
    assert rec["started"] <= rec["finished"] and rec["finished"].endswith("Z")
    assert rec["device"] == "cpu" and rec["devices"][0].startswith("cpu (") and rec["gpus"] == []
    assert rec["host"]["cpu"] and rec["host"]["cpus"] >= 1 and rec["host"]["name"]
    assert set(rec["checksums"]) == OUTPUTS - {"run.json"}
    assert set(rec["summary"]) >= {"buildings", "total_area_m2", "median_area_m2", "nodata_share"}
    assert rec["summary"]["nodata_share"] == pytest.approx(300 / 700, abs=0.01)
    assert any("nodata" in w for w in rec["warnings"])


def test_probability_bands_describe_themselves(scene_run: tuple[Path, Path]) -> None:
    _, out = scene_run
    with rasterio.open(out / "probability.tif") as ds:
        # the shipped model's classes after building: boundary, contact, or both ("separator")
        classes = probability_classes(choose_model(model_path=None, config=load_config(None)))
        assert ds.count == 2 and ds.descriptions == tuple(f"{c} probability" for c in classes)
        assert ds.descriptions[0] == "building probability"
        assert ds.scales == pytest.approx((1 / 255, 1 / 255)) and ds.offsets == (0.0, 0.0)
    with rasterio.open(out / "mask.tif") as ds:
        assert ds.descriptions[0].startswith("building mask")


def test_non_finite_float_pixels_are_nodata_in_every_output(tmp_path: Path, small_config: Path) -> None:
    """A float32 scene without a nodata tag: its NaN/inf strip is nodata, and no building."""
    import geopandas as gpd
    from shapely.geometry import box

    from tests.conftest import ORIGIN, write_tif

    image = coordinate_image(300, 300).astype(np.float32)
    image[:, 100:160] = np.nan
    image[0, 160:200] = np.inf
    image[1, 200:210] = -np.inf
    src = write_tif(tmp_path / "float.tif", image)
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(src), "--out", str(out), "--config", str(small_config)])
    assert result.exit_code == 0, result.output
    bad = np.zeros((300, 300), bool)
    bad[100:210] = True
    with rasterio.open(out / "probability.tif") as prob, rasterio.open(out / "mask.tif") as mask:
        np.testing.assert_array_equal(prob.dataset_mask() > 0, ~bad)
        values = mask.read(1)
        assert (values[bad] == mask.nodata).all() and (values[~bad] != mask.nodata).all()
    strip = box(*(ORIGIN * (0, 209)), *(ORIGIN * (300, 100))).buffer(-0.5)
    frame = gpd.read_file(out / "buildings.gpkg")
    # no building found in the strip; squaring may move a wall of a building beside it a pixel or two
    assert not frame.geometry.centroid.within(strip).any()
    assert (frame.geometry.intersection(strip).area <= 0.01 * frame.geometry.area).all()


BAD_CASES = ["missing", "not-raster", "no-crs", "zero-size", "bands"]


def _bad_input(kind: str, tmp: Path, make_tif: Any) -> tuple[Path, list[str]]:
    extra: list[str] = []
    if kind == "missing":
        return tmp / "missing.tif", extra
    if kind == "not-raster":
        p = tmp / "table.tif"
        p.write_text("id,name\n1,a\n")
        return p, extra
    if kind == "no-crs":
        return make_tif(coordinate_image(40, 40), crs=None), extra
    if kind == "zero-size":
        p = tmp / "empty.tif"
        p.write_bytes(b"")
        return p, extra
    cfg = tmp / "bands.yaml"
    cfg.write_text("input: {bands: [1, 2, 7]}\n")
    return make_tif(coordinate_image(40, 40)), ["--config", str(cfg)]


@pytest.mark.parametrize("kind", BAD_CASES)
def test_bad_input_exits_2_with_one_line_and_no_outputs(kind: str, tmp_path: Path, make_tif: Any) -> None:
    path, extra = _bad_input(kind, tmp_path, make_tif)
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(path), "--out", str(out), *extra])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and path.name in lines[0], result.output
    assert not out.exists() or not any(out.iterdir())


def test_interrupted_run_leaves_no_partial_outputs(
    tmp_path: Path, make_tif: Any, small_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from pipeline.run import job

    def boom(*_: Any) -> Any:
        raise KeyboardInterrupt

    stages = tuple(dataclasses.replace(s, run=boom) if s.name == "vectorize" else s for s in job.STAGES)
    monkeypatch.setattr(job, "STAGES", stages)
    src = make_tif(coordinate_image(300, 300))
    out = tmp_path / "out"
    runner.invoke(app, ["segment", str(src), "--out", str(out), "--config", str(small_config)])
    assert not out.exists() or list(out.iterdir()) == []


def test_geojson_is_rfc7946(tmp_path: Path) -> None:
    """Exact synthetic case: known squares in a UTM mask become CCW lon/lat polygons."""
    from pipeline.config import PipelineConfig
    from pipeline.run.model_choice import ModelChoice
    from pipeline.run.vectorizing import vectorize_rasters, write_vectors
    from tests.conftest import ORIGIN, write_tif

    mask = np.zeros((200, 300), np.uint8)
    mask[20:60, 30:90] = 1  # 40 x 60 px at 0.5 m = 600 m²
    mask[100:140, 200:220] = 1
    mask[110:120, 205:210] = 0  # a hole
    prob = np.where(mask == 1, 200, 10).astype(np.uint8)
    labels = write_tif(tmp_path / "mask.tif", mask, nodata=255)
    probability = write_tif(tmp_path / "probability.tif", prob)
    model = ModelChoice.of(None, {"id": "m1", "threshold": 0.5})  # type: ignore[arg-type]
    cfg = PipelineConfig.model_validate(
        {"vectorize": {"min_area_m2": 1, "simplify_m": 0, "min_confidence": 0}}
    )
    buildings = vectorize_rasters(
        labels=labels, probability=probability, scene="synthetic", model=model, config=cfg
    )
    written = write_vectors(buildings=buildings, scene="synthetic", model=model, workdir=tmp_path)
    assert [p.name for p in written] == ["buildings.gpkg", "buildings.parquet", "buildings.geojson"]
    doc = json.loads((tmp_path / "buildings.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and "crs" not in doc
    feats = doc["features"]
    assert len(feats) == 2
    by_area = sorted(feats, key=lambda f: f["properties"]["area_m2"])
    assert by_area[1]["properties"]["area_m2"] == pytest.approx(600.0, rel=1e-6)
    assert by_area[0]["properties"]["area_m2"] == pytest.approx(200.0 - 12.5, rel=1e-6)
    assert by_area[1]["properties"]["confidence"] == pytest.approx(200 / 255, abs=1e-4)
    assert {f["properties"]["scene"] for f in feats} == {"synthetic"}
    assert {f["properties"]["model"] for f in feats} == {"m1"}
    assert by_area[1]["properties"]["id"] == "synthetic-20-30"
    left, top = ORIGIN.c, ORIGIN.f
    from pyproj import Transformer

    tr = Transformer.from_crs(UTM_CRS, 4326, always_xy=True)
    lon0, lat0 = tr.transform(left, top)
    for f in feats:
        geom = shapely.geometry.shape(f["geometry"])
        ext = np.asarray(geom.exterior.coords)
        assert np.all(np.abs(ext[:, 0] - lon0) < 0.01) and np.all(np.abs(ext[:, 1] - lat0) < 0.01)
        assert geom.exterior.is_ccw
        for ring in geom.interiors:
            assert not ring.is_ccw
        text = json.dumps(f["geometry"]["coordinates"])
        assert all(len(tok.split(".")[-1].strip("]")) <= 7 for tok in text.split(",") if "." in tok)
    with rasterio.open(tmp_path / "mask.tif") as ds:
        assert ds.crs.to_epsg() == 32614
    import geopandas as gpd

    gpkg = gpd.read_file(tmp_path / "buildings.gpkg")
    assert gpkg.crs.to_epsg() == 32614 and len(gpkg) == 2


@pytest.mark.parametrize(("min_confidence", "kept"), [(0.0, [0.7, 0.9]), (0.8, [0.9]), (0.95, [])])
def test_buildings_below_min_confidence_are_dropped_after_seams_merge(
    tmp_path: Path, min_confidence: float, kept: list[float]
) -> None:
    """Exact synthetic case: the mean probability over the whole building decides, not a block's."""
    from pipeline.config import PipelineConfig
    from pipeline.run.model_choice import ModelChoice
    from pipeline.run.vectorizing import vectorize_rasters
    from tests.conftest import write_tif

    mask = np.zeros((64, 64), np.uint8)
    mask[4:60, 4:20] = 1  # crosses the block seam at row 32
    mask[4:20, 40:60] = 1
    prob = np.zeros((64, 64), np.uint8)
    prob[4:32, 4:20], prob[32:60, 4:20] = 255, 102  # mean (1.0 + 0.4) / 2 = 0.7; upper block alone 1.0
    prob[4:20, 40:60] = round(0.9 * 255)
    labels = write_tif(tmp_path / "mask.tif", mask, nodata=255)
    probability = write_tif(tmp_path / "probability.tif", prob)
    model = ModelChoice.of(None, {"id": "m1", "threshold": 0.5})  # type: ignore[arg-type]
    options = {"min_area_m2": 1, "simplify_m": 0, "block_size": 32, "min_confidence": min_confidence}
    cfg = PipelineConfig.model_validate({"vectorize": options})
    buildings = vectorize_rasters(labels=labels, probability=probability, scene="s", model=model, config=cfg)
    assert sorted(np.round(buildings.confidence, 2).tolist()) == kept


@pytest.mark.parametrize(
    ("classes", "enabled", "expected"),
    [
        (["building", "boundary"], True, True),
        (["building", "contact"], True, True),
        (["building", "contact"], False, False),
        (["building"], True, False),
    ],
)
def test_split_runs_for_boundary_and_contact_models(
    classes: list[str], enabled: bool, expected: bool
) -> None:
    from pipeline.config import load_config
    from pipeline.run.model_choice import ModelChoice, splits

    model = ModelChoice.of(None, {"classes": classes})  # type: ignore[arg-type]
    config = load_config(None, **{"split.enabled": enabled})
    assert splits(model, config) is expected
