"""The demo scene end to end, with the default model (realdata)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.warp import transform_bounds
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.config import load_config
from pipeline.describe.output_files import OUTPUT_NAMES
from pipeline.run.model_choice import choose_model
from pipeline.run.plan import plan_for
from pipeline.tiling.stitch import threshold_u8
from tests.conftest import DEMO_SCENE, requires_real

pytestmark = [requires_real, pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    result = CliRunner().invoke(app, ["segment", str(DEMO_SCENE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_demo_writes_georeferenced_outputs(demo_out: Path) -> None:
    assert {p.name for p in demo_out.iterdir()} == set(OUTPUT_NAMES)
    with rasterio.open(DEMO_SCENE) as src:
        crs, transform, shape, bounds = src.crs, src.transform, src.shape, src.bounds
    for name in ("probability.tif", "mask.tif"):
        with rasterio.open(demo_out / name) as ds:
            assert (ds.crs, ds.transform, ds.shape) == (crs, transform, shape)
    doc = json.loads((demo_out / "buildings.geojson").read_text())
    lon0, lat0, lon1, lat1 = transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)
    for feat in doc["features"]:
        geom = shapely.geometry.shape(feat["geometry"])
        for poly in getattr(geom, "geoms", [geom]):
            assert poly.exterior.is_ccw
            xy = np.asarray(poly.exterior.coords)
            assert (lon0 - 1e-6 <= xy[:, 0]).all() and (xy[:, 0] <= lon1 + 1e-6).all()
            assert (lat0 - 1e-6 <= xy[:, 1]).all() and (xy[:, 1] <= lat1 + 1e-6).all()
        assert feat["properties"]["area_m2"] > 0 and 0 <= feat["properties"]["confidence"] <= 1


@pytest.mark.xfail(
    strict=True,
    reason="the default model is not fully tile-invariant: with tiles on its stride-8 lattice the "
    "stitched vs one-pass IoU is 0.940 (0.933 for the OS-16 stage-3 model, 0.901 for stage 2); context "
    "within ~300 model px of tile edges still flips its many near-threshold pixels (see DESIGN.md)",
)
def test_stitched_mask_agrees_with_one_pass_prediction(demo_out: Path) -> None:
    cfg = load_config()
    model = choose_model(model_path=None, config=cfg)
    plan = plan_for(model, input_path=str(DEMO_SCENE), config=cfg)
    with rasterio.open(DEMO_SCENE) as src:
        pixels = src.read([1, 2, 3])
    whole = model.source.load().predict(pixels[None], scale=plan.scale)[0, 0]
    one_pass = whole >= threshold_u8(model.threshold)
    with rasterio.open(demo_out / "mask.tif") as ds:
        stitched = ds.read(1) == 1
    union = (one_pass | stitched).sum()
    iou = (one_pass & stitched).sum() / max(union, 1)
    print(f"stitched vs one-pass IoU: {iou:.4f} ({union} px in the union)")
    assert union > 1000 and iou >= 0.97


def test_delivered_polygons_are_valid_single_and_disjoint(demo_out: Path) -> None:
    import geopandas as gpd

    frame = gpd.read_file(demo_out / "buildings.gpkg")
    geoms = frame.geometry.to_numpy()
    assert len(geoms) > 0
    assert set(shapely.get_type_id(geoms).tolist()) == {3}  # Polygon only
    assert shapely.is_valid(geoms).all()
    union = shapely.union_all(geoms)
    assert shapely.area(geoms).sum() == pytest.approx(union.area, rel=1e-6)
    assert frame["id"].is_unique
