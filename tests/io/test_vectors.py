"""The delivered vectors: GeoJSON, GeoPackage and GeoParquet hold the same features, and
``footprints vectorize OUTDIR/mask.tif`` gives them again."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from tests.conftest import requires_real

runner = CliRunner()
COLUMNS = ["id", "area_m2", "confidence", "scene", "model", "geometry"]


def _same(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame, *, tolerance: float = 0.0) -> None:
    assert list(a.columns) == list(b.columns) == COLUMNS and len(a) == len(b)
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert a.crs == b.crs
    # same vertices within tolerance, whatever the ring orientation (RFC 7946 turns exteriors CCW)
    assert a.geometry.normalize().geom_equals_exact(b.geometry.normalize(), tolerance).all()


@requires_real
@pytest.mark.realdata
def test_geoparquet_is_1_1_with_bbox_in_the_scene_crs_and_equals_the_geojson(demo_run: Path) -> None:
    meta = pq.read_metadata(demo_run / "buildings.parquet")
    geo = __import__("json").loads(meta.metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["columns"]["geometry"]["covering"]["bbox"]
    assert "bbox" in pq.read_schema(demo_run / "buildings.parquet").names
    parquet = gpd.read_parquet(demo_run / "buildings.parquet")
    gpkg = gpd.read_file(demo_run / "buildings.gpkg")
    geojson = gpd.read_file(demo_run / "buildings.geojson")
    published = json.loads((demo_run / "run.json").read_text())["counts"]["buildings"]
    assert parquet.crs.to_epsg() == 26914 and len(parquet) == published > 20
    _same(parquet, gpkg)
    _same(parquet.to_crs(4326), geojson, tolerance=1e-7)  # GeoJSON keeps 7 decimals


@requires_real
@pytest.mark.realdata
@pytest.mark.parametrize("suffix", [".geojson", ".parquet"])
def test_vectorize_of_an_outdirs_mask_equals_the_published_features(
    demo_run: Path, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"again{suffix}"
    result = runner.invoke(
        app, ["vectorize", str(demo_run / "mask.tif"), "--out", str(out), "--block-size", "128"]
    )
    assert result.exit_code == 0, result.output
    published = json.loads((demo_run / "run.json").read_text())["counts"]["buildings"]
    assert f"{published} polygons (as published" in result.output
    read = gpd.read_parquet if suffix == ".parquet" else gpd.read_file
    _same(read(out), read(demo_run / f"buildings{suffix}"))


@requires_real
@pytest.mark.realdata
def test_vectorize_of_a_copied_mask_alone_is_the_plain_polygonizer(demo_run: Path, tmp_path: Path) -> None:
    """Without run.json and probability.tif beside it, a mask is polygonized as any raster."""
    lone = tmp_path / "mask.tif"
    lone.write_bytes((demo_run / "mask.tif").read_bytes())
    out = tmp_path / "plain.geojson"
    result = runner.invoke(app, ["vectorize", str(lone), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "regions" in result.output and "pieces" in gpd.read_file(out).columns
