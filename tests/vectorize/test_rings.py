"""Canonical rings, and delivered (post-processed) polygons that do not depend on the block size."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import shapely
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray
from rasterio.crs import CRS
from typer.testing import CliRunner

from pipeline.cli.vectorize import register
from pipeline.config import load_config
from pipeline.vectorize.buildings import OutlineOptions, buildings_from_regions, outline_options
from pipeline.vectorize.polygonize import polygonize_array, reference_polygons
from pipeline.vectorize.postprocess import postprocess
from pipeline.vectorize.rings import canonical_rings, drop_redundant_vertices
from tests.conftest import ORIGIN, UTM_CRS, write_tif
from tests.masks import NODATA, ROTATED, SEAM_BLOCKS, building_mask, feature_mask, paint_building

WHOLE = 100_000  # one band: the whole raster at once


def wkb(geoms: Any) -> list[bytes]:
    return list(shapely.to_wkb(np.asarray(geoms, dtype=object)))


# --------------------------------------------------------------------------- canonical rings


def test_rotated_reversed_ring_with_collinear_vertices_is_canonical() -> None:
    """Start, direction, repeated and collinear vertices and hole order do not survive."""
    plain = shapely.Polygon(
        [(0, 0), (4, 0), (4, 3), (0, 3)], holes=[[(1, 1), (1, 2), (2, 2), (2, 1)], [(3, 1), (3.5, 2), (3, 2)]]
    )
    messy = shapely.Polygon(
        [(4, 2), (4, 3), (2, 3), (0, 3), (0, 3), (0, 1.5), (0, 0), (1, 0), (3, 0), (4, 0), (4, 1)],
        holes=[[(3.5, 2), (3, 1), (3, 1.5), (3, 2)], [(2, 1.5), (2, 1), (1, 1), (1, 2), (1.5, 2), (2, 2)]],
    )
    got = canonical_rings([plain, messy])
    expected = [
        [(0, 0), (4, 0), (4, 3), (0, 3), (0, 0)],  # exterior counter-clockwise from its smallest vertex
        [(1, 1), (1, 2), (2, 2), (2, 1), (1, 1)],  # holes clockwise, sorted
        [(3, 1), (3, 2), (3.5, 2), (3, 1)],
    ]
    for geom in got:
        rings = shapely.get_rings(geom)
        assert [shapely.get_coordinates(r).tolist() for r in rings] == [
            [list(p) for p in e] for e in expected
        ]
    assert wkb(got[:1]) == wkb(got[1:])
    assert wkb(canonical_rings(got)) == wkb(got)  # idempotent


def test_diagonal_collinear_vertex_goes_spikes_and_other_types_stay() -> None:
    diagonal = shapely.Polygon([(0, 0), (1, 1), (2, 2), (2, 0)])
    assert shapely.get_coordinates(canonical_rings([diagonal])[0]).tolist() == [
        [0, 0],
        [2, 0],
        [2, 2],
        [0, 0],
    ]
    flat = shapely.Polygon([(0, 0), (1, 0), (2, 0), (1, 0)])  # would keep < 3 vertices: left alone
    point, empty = shapely.Point(1, 2), shapely.Polygon()
    out = drop_redundant_vertices([flat, point, empty, None])
    assert out[0] is flat and out[1] is point and out[2] is empty and out[3] is None


def _disguised(ring: NDArray[np.float64], shift: int, flip: bool, split: int) -> NDArray[np.float64]:
    """An open ring rolled by ``shift``, maybe reversed, with a midpoint added on edge ``split``."""
    k = split % len(ring)
    mid = (ring[k] + ring[(k + 1) % len(ring)]) / 2.0
    ring = np.insert(ring, k + 1, mid, axis=0)
    ring = np.roll(ring, shift % len(ring), axis=0)
    return ring[::-1] if flip else ring


@settings(max_examples=50, deadline=None)
@given(
    mask=arrays(np.uint8, (12, 14), elements=st.integers(0, 1)),
    shift=st.integers(0, 99), flip=st.booleans(), split=st.integers(0, 99),
)  # fmt: skip
def test_property_canonical_rings_ignore_start_direction_and_collinear_vertices(
    mask: NDArray[np.uint8], shift: int, flip: bool, split: int
) -> None:
    polys = reference_polygons(mask, transform=ORIGIN).geometry
    disguised = []
    for poly in polys:
        coords = [shapely.get_coordinates(r)[:-1] for r in shapely.get_rings(poly)]
        rings = [_disguised(c, shift, flip, split) for c in coords]
        disguised.append(shapely.Polygon(rings[0], holes=rings[1:][::-1]))
    assert wkb(canonical_rings(disguised)) == wkb(canonical_rings(polys))


def test_blockwise_pixel_polygons_canonicalize_to_the_whole_raster_ones() -> None:
    mask = feature_mask()
    whole = reference_polygons(mask, transform=ORIGIN, nodata=NODATA).geometry
    for block in SEAM_BLOCKS:
        got = polygonize_array(mask, transform=ORIGIN, block_size=block, nodata=NODATA).geometry
        assert wkb(canonical_rings(got)) == wkb(canonical_rings(whole))


def test_postprocess_does_not_depend_on_ring_start_or_direction() -> None:
    mask = np.zeros((60, 60), np.uint8)
    paint_building(mask, ROTATED, 10, 12, 36, 30, 23.0)
    poly = reference_polygons(mask, transform=ORIGIN).geometry[0]
    ring = shapely.get_coordinates(poly.exterior)[:-1]
    variants = [shapely.Polygon(np.roll(ring, k, axis=0)) for k in range(0, len(ring), 3)]
    variants.append(shapely.Polygon(ring[::-1]))
    v = load_config(None).vectorize
    out = [
        postprocess(
            np.asarray([p], dtype=object), fill_holes_m2=v.fill_holes_m2,
            simplify_m=v.simplify_m, regularize=v.regularize, angle_tolerance_deg=v.angle_tolerance_deg,
            min_edge_m=v.min_edge_m, pixel_m=ORIGIN.a,
        )[0]
        for p in variants
    ]  # fmt: skip
    assert len(set(wkb(out))) == 1
    assert 4 <= shapely.get_num_coordinates(out[0]) < shapely.get_num_coordinates(poly)  # it was squared


# --------------------------------------------------------------------------- delivered polygons


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Test app."""

    register(app)
    return app


@pytest.fixture(scope="module")
def buildings_tif(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tif(tmp_path_factory.mktemp("rings") / "buildings.tif", building_mask())


def test_cli_default_postprocessing_is_the_same_for_every_block_size(
    buildings_tif: Path, tmp_path: Path
) -> None:
    """Exact: rectangles, L shapes, courtyards, staircases and corner contacts over the seams."""
    frames = {}
    for block in (*SEAM_BLOCKS, WHOLE):
        out = tmp_path / f"b{block}.gpkg"
        result = CliRunner().invoke(
            cli(), ["vectorize", str(buildings_tif), "--out", str(out), "--block-size", str(block)]
        )
        assert result.exit_code == 0, result.output
        frames[block] = gpd.read_file(out)
    whole = frames[WHOLE]
    assert len(whole) > 200 and (frames[64]["pieces"] > 1).sum() > 50  # many buildings cross a seam
    raw = reference_polygons(building_mask(), transform=ORIGIN).geometry
    assert shapely.get_num_coordinates(whole.geometry.values).sum() < shapely.get_num_coordinates(raw).sum()
    for block in SEAM_BLOCKS:
        got = frames[block]
        assert got["id"].tolist() == whole["id"].tolist()
        same = np.asarray(wkb(got.geometry.values)) == np.asarray(wkb(whole.geometry.values))
        assert same.all(), f"block {block}: {int((~same).sum())} of {len(same)} polygons differ"
        np.testing.assert_array_equal(got["area_m2"], whole["area_m2"])


def test_segment_vectorize_stage_is_the_same_for_every_config_block_size(tmp_path: Path) -> None:
    """``footprints segment``'s vectorize stage: ``vectorize.block_size`` changes nothing."""
    from pipeline.config import PipelineConfig
    from pipeline.run.model_choice import ModelChoice
    from pipeline.run.vectorizing import vectorize_rasters

    mask = building_mask(400, 300, seed=3)
    labels = write_tif(tmp_path / "mask.tif", mask, nodata=255)
    probability = write_tif(tmp_path / "probability.tif", np.full(mask.shape, 250, np.uint8))
    model = ModelChoice.of(None, {"id": "m1", "threshold": 0.5})  # type: ignore[arg-type]
    out = []
    for block in (16, 64, 100, 257, 4096):
        cfg = PipelineConfig.model_validate({"vectorize": {"block_size": block}})
        b = vectorize_rasters(labels=labels, probability=probability, scene="s", model=model, config=cfg)
        out.append((b.id.tolist(), wkb(b.geometry), b.area_m2.tolist()))
    assert len(out[0][0]) > 25 and all(o == out[-1] for o in out)


# --------------------------------------------------------------------------- property


def delivered(
    mask: NDArray[np.uint8], block_size: int, options: OutlineOptions | None = None
) -> tuple[list[str], list[bytes]]:
    """Ids and WKB of the post-processed polygons (default ``options``) of ``mask`` at ``block_size``."""
    regions = polygonize_array(mask, transform=ORIGIN, block_size=block_size)
    regions = dataclasses.replace(regions, crs=CRS.from_string(UTM_CRS))
    height, width = mask.shape
    bounds = (ORIGIN.c, ORIGIN.f + ORIGIN.e * height, ORIGIN.c + ORIGIN.a * width, ORIGIN.f)
    options = options or outline_options(load_config(None).vectorize)
    b = buildings_from_regions(regions, scene="t", bounds=bounds, options=options, pixel_m=ORIGIN.a)
    return b.id.tolist(), wkb(b.geometry)


building = st.tuples(
    st.integers(0, 4), st.integers(0, 60), st.integers(0, 60), st.integers(6, 30), st.integers(6, 30),
    st.floats(0.0, 90.0),
)  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    buildings=st.lists(building, min_size=1, max_size=6),
    blocks=st.lists(st.integers(1, 70), min_size=1, max_size=3),
)
def test_property_delivered_polygons_independent_of_blocks(
    buildings: list[tuple[int, int, int, int, int, float]], blocks: list[int]
) -> None:
    assert_block_independent(buildings, blocks)


def assert_block_independent(
    buildings: list[tuple[int, int, int, int, int, float]],
    blocks: list[int],
    options: OutlineOptions | None = None,
) -> None:
    """The buildings painted on a 64 x 64 mask give the same delivered polygons for every block size."""
    mask = np.zeros((64, 64), np.uint8)
    for kind, r, c, h, w, deg in buildings:
        paint_building(mask, kind, r, c, h, w, deg)
    whole = delivered(mask, WHOLE, options)
    for block in blocks:
        assert delivered(mask, block, options) == whole, f"block_size={block}"
