"""The false-positive scorer: exact features on hand-made outlines and rasters, the file
format, the checkpoint check, and the filter inside the vectorizer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine

from pipeline.core.errors import ConfigError
from pipeline.vectorize.buildings import OutlineOptions, vectorize_scene
from pipeline.vectorize.scoring import (
    FEATURES,
    ScoreContext,
    Scorer,
    candidate_features,
    edge_features,
    resolve_scorer,
    shape_features,
)
from tests.conftest import write_tif

PX = 0.5
TRANSFORM = Affine(PX, 0, 600000.0, 0, -PX, 3300000.0)


def _box_px(r0: int, c0: int, r1: int, c1: int) -> shapely.Polygon:
    """The outline of pixel rows r0..r1-1, cols c0..c1-1 in the scene CRS."""
    x0, y0 = TRANSFORM @ (c0, r0)
    x1, y1 = TRANSFORM @ (c1, r1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def test_shape_features_of_a_square_and_an_l_shape_are_exact() -> None:
    square = shapely.box(0, 0, 10, 10)
    ell = shapely.Polygon([(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)])  # 3 unit squares
    f = shape_features(np.array([square, ell], dtype=object))
    assert f[0] == pytest.approx([2.0, 1.0, 1.0, math.pi / 4])
    # L: area 3, hull 3.5, minimum rectangle 2x2, perimeter 8
    assert f[1] == pytest.approx([math.log10(3), 3 / 3.5, 3 / 4, 4 * math.pi * 3 / 64])


def test_edge_features_read_just_inside_and_just_outside(tmp_path: Path) -> None:
    prob = np.zeros((40, 40), np.uint8)
    prob[10:30, 10:30] = 255  # a sharp roof
    prob[8:10, 10:30] = 51  # a 2-pixel apron above it (0.2)
    path = write_tif(tmp_path / "p.tif", prob, transform=TRANSFORM)
    sharp = _box_px(10, 10, 30, 30)
    f = edge_features(np.array([sharp], dtype=object), str(path))
    # outside band: pixels within city-block distance 2 (4-connected dilation): 24*24 - 20*20 = 176
    # less 3 at each corner = 164 px, of which 2*20 = 40 at 0.2
    assert f[0] == pytest.approx([1.0, 40 * 0.2 / 164])


def test_edge_bands_stop_at_the_raster_edge(tmp_path: Path) -> None:
    prob = np.zeros((20, 20), np.uint8)
    prob[0:10, 0:10] = 255
    path = write_tif(tmp_path / "p.tif", prob, transform=TRANSFORM)
    f = edge_features(np.array([_box_px(0, 0, 10, 10)], dtype=object), str(path))
    assert f[0] == pytest.approx([1.0, 0.0])


def test_candidate_features_order_follows_features(tmp_path: Path) -> None:
    prob = np.zeros((30, 30), np.uint8)
    prob[5:25, 5:25] = 204
    path = write_tif(tmp_path / "p.tif", prob, transform=TRANSFORM)
    box = np.array([_box_px(5, 5, 25, 25)], dtype=object)  # the raster's CRS is metric
    table = candidate_features(box, metric=box, confidence=np.array([0.8]), probability_path=str(path))
    row = dict(zip(FEATURES, table[0], strict=True))
    assert row["log_area"] == pytest.approx(2.0)  # 10 m x 10 m
    assert row["confidence"] == 0.8 and row["solidity"] == pytest.approx(1.0)
    assert row["edge_in"] == pytest.approx(0.8) and row["edge_out"] == 0.0
    assert row["contrast"] == pytest.approx(0.8)


def _scorer(sha: str = "a" * 64, threshold: float = 0.5) -> Scorer:
    """A LightGBM scorer that learnt 'real buildings have a sharp border' (contrast > 0.5)."""
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (400, len(FEATURES)))
    y = (x[:, FEATURES.index("contrast")] > 0.5).astype(float)
    params = {"objective": "binary", "num_leaves": 4, "verbose": -1, "num_threads": 1, "seed": 0}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=30)
    return Scorer(model_text=booster.model_to_string(), threshold=threshold, checkpoint_sha256=sha)


def test_scorer_round_trips_and_separates(tmp_path: Path) -> None:
    scorer = _scorer()
    scorer.save(tmp_path / "s.scorer.json")
    loaded = Scorer.load(tmp_path / "s.scorer.json")
    table = np.full((2, len(FEATURES)), 0.5)
    table[:, FEATURES.index("contrast")] = [0.9, 0.1]
    assert loaded.keep(table).tolist() == [True, False]
    assert loaded.score(table) == pytest.approx(scorer.score(table))
    assert not list(tmp_path.glob(".*tmp"))


def test_scorer_for_another_checkpoint_or_format_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"x")
    _scorer(sha="b" * 64).save(tmp_path / "m.scorer.json")
    with pytest.raises(ConfigError, match="fitted for checkpoint bbbbbbbbbbbb"):
        resolve_scorer("auto", checkpoint=str(ckpt), sha256="c" * 64)
    assert resolve_scorer("auto", checkpoint=str(ckpt), sha256="b" * 64) is not None
    assert resolve_scorer("none", checkpoint=str(ckpt), sha256="b" * 64) is None
    assert resolve_scorer("auto", checkpoint=str(tmp_path / "other.safetensors"), sha256="b" * 64) is None
    with pytest.raises(ConfigError, match="scorer file not found"):
        resolve_scorer(str(tmp_path / "missing.json"), checkpoint=str(ckpt), sha256="b" * 64)
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match="not a footprints-scorer/1 scorer"):
        Scorer.load(tmp_path / "bad.json")


def test_vectorizer_drops_what_the_scorer_rejects(tmp_path: Path) -> None:
    mask = np.zeros((60, 60), np.uint8)
    prob = np.zeros((60, 60), np.uint8)
    mask[5:25, 5:25] = 1
    prob[5:25, 5:25] = 250  # sharp: contrast ~ 1
    mask[35:55, 35:55] = 1
    prob[33:57, 33:57] = 160  # fuzzy: the same probability inside and just outside
    m = write_tif(tmp_path / "mask.tif", mask, transform=TRANSFORM)
    p = write_tif(tmp_path / "prob.tif", prob, transform=TRANSFORM)
    opts = OutlineOptions(min_area_m2=1.0)
    plain = vectorize_scene(values_path=str(m), probability_path=str(p), scene="s", options=opts)
    feats = vectorize_scene(
        values_path=str(m), probability_path=str(p), scene="s", options=opts, scoring=ScoreContext(str(p))
    )
    scored = vectorize_scene(
        values_path=str(m), probability_path=str(p), scene="s", options=opts,
        scoring=ScoreContext(str(p), _scorer()),
    )  # fmt: skip
    assert len(plain) == len(feats) == 2 and plain.features is None
    assert feats.features is not None and feats.features.shape == (2, len(FEATURES))
    assert len(scored) == 1 and scored.id.tolist() == ["s-5-5"]
