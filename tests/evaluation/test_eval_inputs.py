"""Evaluation inputs that cannot be scored are refused; differing extents are scored with a warning."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely.affinity
from affine import Affine
from typer.testing import CliRunner

from pipeline.core.errors import EvaluationInputError
from pipeline.evaluation.evaluate import evaluate
from tests.conftest import write_tif
from tests.evaluation.test_evaluate import (
    FAR,
    GRID,
    SIZE,
    UTM,
    X0,
    Y0,
    A,
    B,
    C,
    D,
    _app,
    _counts,
    _raster,
    make_outdir,
    px_box,
    truth_tif,
)


def test_rgb_image_as_truth_is_refused(tmp_path: Path) -> None:
    out = make_outdir(tmp_path)
    rgb = write_tif(tmp_path / "image.tif", np.zeros((3, SIZE, SIZE), np.uint8), crs=UTM, transform=GRID)
    with pytest.raises(EvaluationInputError, match=r"image\.tif: truth raster has 3 bands.*label mask"):
        evaluate(pairs=[(out, rgb)])


@pytest.mark.parametrize(
    ("crs", "transform"),
    [(UTM, FAR), ("EPSG:4326", Affine(1e-5, 0.0, 10.0, 0.0, -1e-5, 50.0))],  # Europe, in lon/lat
    ids=["same-crs", "other-crs"],
)
def test_truth_raster_elsewhere_is_refused(tmp_path: Path, crs: str, transform: Affine) -> None:
    out = make_outdir(tmp_path)
    path = write_tif(tmp_path / "far.tif", _raster([A, D]), crs=crs, transform=transform)
    with pytest.raises(
        EvaluationInputError, match=r"far\.tif: label raster .* does not overlap the prediction"
    ):
        evaluate(pairs=[(out, path)])


def test_vector_truth_elsewhere_is_refused(tmp_path: Path) -> None:
    out = make_outdir(tmp_path)
    path = tmp_path / "far.geojson"
    polys = [shapely.affinity.translate(px_box(*b), 5000.0) for b in (A, D)]
    gpd.GeoDataFrame(geometry=polys, crs=UTM).to_file(path, driver="GeoJSON", engine="pyogrio")
    with pytest.raises(EvaluationInputError, match=r"far\.geojson: none of its 2 truth polygons"):
        evaluate(pairs=[(out, path)])


def test_truth_without_a_valid_pixel_is_refused(tmp_path: Path) -> None:
    out = make_outdir(tmp_path)
    path = write_tif(
        tmp_path / "holes.tif", np.full((SIZE, SIZE), 9, np.uint8), crs=UTM, transform=GRID, nodata=9
    )
    with pytest.raises(EvaluationInputError, match=r"holes\.tif: no pixel has data"):
        evaluate(pairs=[(out, path)])


def partial_truth(root: Path) -> Path:
    """Truth A, B, C, D on a raster that starts 10 px east of the prediction (same size)."""
    wide = np.zeros((SIZE, SIZE + 10), np.uint8)
    for r0, r1, c0, c1 in (A, B, C, D):
        wide[r0:r1, c0:c1] = 1
    shifted = Affine(1.0, 0.0, X0 + 10, 0.0, -1.0, Y0)
    return write_tif(root / "partial.tif", wide[:, 10:], crs=UTM, transform=shifted)


def test_partly_overlapping_truth_is_scored_on_the_overlap_with_a_warning(tmp_path: Path) -> None:
    out = make_outdir(tmp_path)
    scene = evaluate(pairs=[(out, partial_truth(tmp_path))])["scenes"][0]
    assert scene["extent"] == {"pred_share": 0.75, "truth_share": 0.75}
    (warning,) = scene["warnings"]
    assert "partial.tif" in warning and "75.0 % of the prediction and 75.0 % of the labels" in warning
    # Columns 10-39 are scored: B matches, D is missed, A and C lie outside, the speck is 4 px.
    assert _counts(scene["pixel"]) == {"tp": 64, "fp": 4, "fn": 64}
    assert _counts(scene["object"]) == {"tp": 1, "fp": 0, "fn": 1}


def test_same_extent_has_no_warning(tmp_path: Path) -> None:
    scene = evaluate(pairs=[(make_outdir(tmp_path), truth_tif(tmp_path))])["scenes"][0]
    assert scene["warnings"] == [] and scene["extent"] == {"pred_share": 1.0, "truth_share": 1.0}


def test_cli_warns_on_stderr_when_extents_differ(tmp_path: Path) -> None:
    out = make_outdir(tmp_path)
    result = CliRunner().invoke(
        _app(), ["evaluate", "--pred", str(out), "--truth", str(partial_truth(tmp_path))]
    )
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:") and "75.0 % of the prediction" in lines[0]
    assert "overall" in result.stdout and "polygon metrics" in result.stdout
