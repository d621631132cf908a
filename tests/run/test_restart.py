"""Tile-level restart: run keys, the tile cache, the manifest, and exact resumes."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config import PipelineConfig, load_config
from pipeline.core.errors import OutputConflictError
from pipeline.describe.output_files import DATA_NAMES, OUTPUT_NAMES
from pipeline.io.storage import parse_location
from pipeline.run.restart import MANIFEST, SceneState, config_digest, run_key, state_location
from pipeline.run.scene import segment_scene
from pipeline.run.tilecache import SKIPPED, TileCache
from pipeline.tiling.grid import TileGrid
from tests.conftest import coordinate_image, write_tif

DATA = DATA_NAMES  # byte-identical whenever input, model and config are


def test_config_digest_ignores_where_it_runs_but_not_what_it_computes() -> None:
    base = config_digest(PipelineConfig())
    assert config_digest(load_config(**{"dask.n_workers": 4, "dask.scheduler": "tcp://h:1"})) == base
    assert config_digest(load_config(**{"tiling.batch_size": 16})) == base
    assert config_digest(load_config(**{"tiling.tile_size": 256})) != base
    assert config_digest(load_config(**{"vectorize.min_area_m2": 20.0})) != base


def test_run_key_changes_with_input_model_and_config() -> None:
    key = run_key(input_identity={"sha256": "a"}, model_sha256="m", config_sha256="c")
    assert key != run_key(input_identity={"sha256": "b"}, model_sha256="m", config_sha256="c")
    assert key != run_key(input_identity={"sha256": "a"}, model_sha256="n", config_sha256="c")
    assert key != run_key(input_identity={"sha256": "a"}, model_sha256="m", config_sha256="d")


def test_state_lives_beside_the_output_folder() -> None:
    assert state_location(parse_location("/data/out/demo")).path == "/data/out/.footprints-state/demo"
    assert state_location(parse_location("s3://b/runs/x")).url == "s3://b/runs/.footprints-state/x"


def test_tile_cache_round_trip(tmp_path: Path) -> None:
    tiles = list(TileGrid(height=300, width=200, tile_size=128, overlap=16))
    cache = TileCache(parse_location(str(tmp_path / "tiles")))
    prob = np.arange(2 * 128 * 128, dtype=np.uint8).reshape(2, 128, 128)
    packed = np.packbits(np.ones(128 * 128, dtype=bool))
    assert cache.load(tiles[0]) is None
    cache.save(tiles[0], prob, packed)
    cache.save(tiles[1], prob, None)
    cache.save_skipped(tiles[2])
    got = cache.load(tiles[0])
    assert isinstance(got, tuple) and np.array_equal(got[0], prob) and np.array_equal(got[1], packed)
    got = cache.load(tiles[1])
    assert isinstance(got, tuple) and got[1] is None
    assert cache.load(tiles[2]) == SKIPPED
    assert sorted(p.name for p in (tmp_path / "tiles").iterdir()) == ["0.npz", "1.npz", "2.npz"]
    other = TileGrid(height=300, width=200, tile_size=100, overlap=16)
    assert cache.load(next(iter(other))) is None  # another grid's tile 0 has another shape


def test_cached_tiles_are_deflated_npz_and_older_caches_still_load(tmp_path: Path) -> None:
    tiles = list(TileGrid(height=300, width=200, tile_size=128, overlap=16))
    cache = TileCache(parse_location(str(tmp_path / "tiles")))
    prob = np.zeros((2, 128, 128), dtype=np.uint8)
    prob[0, 20:90, 30:100] = 255  # one building: compresses well
    cache.save(tiles[0], prob, None)
    with zipfile.ZipFile(tmp_path / "tiles" / "0.npz") as archive:
        (member,) = archive.infolist()
        assert member.filename == "probability.npy" and member.compress_type == zipfile.ZIP_DEFLATED
        assert member.compress_size < prob.nbytes // 20
    # a cache written before DEFLATE_LEVEL (np.savez_compressed) is read the same way
    np.savez_compressed(tmp_path / "tiles" / "1.npz", probability=prob)
    for tile in tiles[:2]:
        got = cache.load(tile)
        assert isinstance(got, tuple) and np.array_equal(got[0], prob) and got[1] is None


def test_manifest_keeps_tiles_for_the_same_key_only(tmp_path: Path) -> None:
    out = parse_location(str(tmp_path / "out" / "scene"))
    state = SceneState.open(out=out, key="k1" * 8, describe={"input": "x"})
    state.start(tiles_total=4)
    state.record_tiles([0, 1])
    state.flush()
    (Path(state.cache.root.path)).mkdir(parents=True)
    (Path(state.cache.root.path) / "0.npz").write_bytes(b"x")
    again = SceneState.open(out=out, key="k1" * 8, describe={})
    assert again.tiles_done == 2 and again.created == state.created
    assert Path(again.cache.root.path, "0.npz").exists()
    other = SceneState.open(out=out, key="k2" * 8, describe={})  # new key: old tiles dropped
    assert other.tiles_done == 0 and not Path(state.cache.root.path).exists()
    forced = SceneState.open(out=out, key="k1" * 8, describe={}, force=True)
    assert forced.tiles_done == 0
    manifest = json.loads(Path(state.location.path, MANIFEST).read_text())
    assert manifest["tiles_done"] == [0, 1] and manifest["tiles_total"] == 4


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as c,  # type: ignore[no-untyped-call]
    ):
        yield c


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    image = coordinate_image(300, 560)
    image[:, :, 320:] = 0  # a nodata band wider than a tile: some tiles are skipped
    return write_tif(tmp_path / "scene.tif", image, nodata=0)


CONFIG = {"tiling.tile_size": 128, "tiling.overlap": 16, "tiling.batch_size": 2, "restart.keep_tiles": True}


def _outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in DATA}


@pytest.mark.slow
def test_resume_reuses_finished_tiles_and_writes_identical_bytes(
    scene: Path, tmp_path: Path, client: Any
) -> None:
    config = load_config(**CONFIG)
    out = tmp_path / "out" / "scene"
    first = segment_scene(input_path=str(scene), out_dir=out, config=config, client=client)
    counts = first.record["counts"]
    assert counts["tiles_skipped"] > 0 and counts["tiles_reused"] == 0
    reference = _outputs(out)
    shutil.copytree(out, tmp_path / "reference")

    # Simulate a crash after the first batches: the manifest is still "running", the
    # outputs are gone and the tiles of the later batches were never written. The
    # manifest also claims two tiles whose files are missing: those are inferred again.
    state_dir = tmp_path / "out" / ".footprints-state" / "scene"
    shutil.rmtree(out)
    tile_files = sorted(next((state_dir / "tiles").iterdir()).iterdir(), key=lambda p: int(p.stem))
    for path in tile_files[5:]:
        path.unlink()
    manifest = json.loads((state_dir / MANIFEST).read_text())
    manifest["status"] = "running"
    manifest["tiles_done"] = [int(p.stem) for p in tile_files[:7]]
    (state_dir / MANIFEST).write_text(json.dumps(manifest))

    second = segment_scene(input_path=str(scene), out_dir=out, config=config, client=client)
    again = second.record["counts"]
    assert not second.skipped
    assert again["tiles_reused"] > 0 and 0 < again["tiles_inferred"] < counts["tiles_inferred"]
    assert again["tiles_reused"] + again["tiles_inferred"] + again["tiles_skipped"] == counts["tiles"]
    assert _outputs(out) == reference  # byte-identical to the uninterrupted run
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)

    third = segment_scene(input_path=str(scene), out_dir=out, config=config, client=client)
    assert third.skipped and third.record["run_key"] == second.record["run_key"]
    assert _outputs(out) == reference


@pytest.mark.slow
def test_a_finished_scene_is_recomputed_when_the_config_changes_or_forced(
    scene: Path, tmp_path: Path, client: Any
) -> None:
    out = tmp_path / "o" / "scene"
    cfg = load_config(**{**CONFIG, "restart.keep_tiles": False})
    first = segment_scene(input_path=str(scene), out_dir=out, config=cfg, client=client)
    state_dir = tmp_path / "o" / ".footprints-state" / "scene"
    assert not (state_dir / "tiles").exists()  # dropped once published
    assert json.loads((state_dir / MANIFEST).read_text())["status"] == "complete"
    assert segment_scene(input_path=str(scene), out_dir=out, config=cfg, client=client).skipped
    forced = segment_scene(input_path=str(scene), out_dir=out, config=cfg, client=client, force=True)
    assert not forced.skipped and forced.record["counts"]["tiles_inferred"] > 0
    changed = load_config(**{**CONFIG, "vectorize.min_area_m2": 50.0})
    with pytest.raises(OutputConflictError, match="made with another config"):  # not over its outputs
        segment_scene(input_path=str(scene), out_dir=out, config=changed, client=client)
    third = segment_scene(input_path=str(scene), out_dir=out, config=changed, client=client, force=True)
    assert not third.skipped and third.record["run_key"] != first.record["run_key"]
    assert third.record["counts"]["tiles_reused"] == 0


@pytest.mark.slow
def test_a_lost_output_is_republished_from_the_tile_cache(scene: Path, tmp_path: Path, client: Any) -> None:
    out = tmp_path / "k" / "scene"
    config = load_config(**CONFIG)  # keep_tiles: the cache outlives the publish
    first = segment_scene(input_path=str(scene), out_dir=out, config=config, client=client)
    reference = _outputs(out)
    (out / "mask.tif").unlink()
    with pytest.warns(UserWarning, match="mask.tif missing or changed"):
        again = segment_scene(input_path=str(scene), out_dir=out, config=config, client=client)
    counts = again.record["counts"]
    assert not again.skipped and counts["tiles_inferred"] == 0
    assert counts["tiles_reused"] == first.record["counts"]["tiles_inferred"]
    assert _outputs(out) == reference
    assert segment_scene(input_path=str(scene), out_dir=out, config=config, client=client).skipped


def test_restart_disabled_keeps_no_state(scene: Path, tmp_path: Path, client: Any) -> None:
    out = tmp_path / "n" / "scene"
    cfg = load_config(**{**CONFIG, "restart.enabled": False, "tiling.tile_size": 256})
    result = segment_scene(input_path=str(scene), out_dir=out, config=cfg, client=client)
    assert result.record["run_key"] is None
    assert sorted(p.name for p in (tmp_path / "n").iterdir()) == ["scene"]


def test_workers_read_the_cache_only_for_batches_recorded_as_finished(tmp_path: Path) -> None:
    from pipeline.io.read import open_raster
    from pipeline.run.dispatch import predict_batch
    from tests.operators import Box3x3Source, box3x3

    image = coordinate_image(200, 200)
    info = open_raster(write_tif(tmp_path / "s.tif", image))
    tiles = list(TileGrid(height=200, width=200, tile_size=128, overlap=16))[:2]
    cache = TileCache(parse_location(str(tmp_path / "tiles")))
    stale = np.full((1, 128, 128), 7, np.uint8)
    for t in tiles:
        cache.save(t, stale, None)
    fresh = predict_batch(info, tiles, Box3x3Source(), cache=cache)  # not recorded: no cache read
    assert not any(r.reused for r in fresh.results)
    for r in fresh.results:
        t = r.tile
        np.testing.assert_array_equal(
            r.probability[0], box3x3(image[:, t.row_off : t.row_end, t.col_off : t.col_end])
        )
        got = cache.load(r.tile)  # and the cache now holds what was inferred
        assert isinstance(got, tuple) and np.array_equal(got[0], r.probability)
    cache.save(tiles[0], stale, None)
    reused = predict_batch(info, tiles, Box3x3Source(), cache=cache, from_cache=True)
    assert all(r.reused for r in reused.results)
    assert np.array_equal(reused.results[0].probability, stale)


def test_state_falls_back_to_xdg_state_home_where_its_folder_cannot_be_made(
    scene: Path, tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only parent of OUTDIR (here: a file where the state folder goes, which stops root too)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / ".footprints-state").write_text("in the way")
    out = tmp_path / "ro" / "scene"
    where = state_location(parse_location(str(out)))
    assert Path(where.path).parent == tmp_path / "xdg" / "footprints" and where.name.startswith("scene-")
    config = load_config(**{**CONFIG, "tiling.tile_size": 256})
    first = segment_scene(input_path=str(scene), out_dir=out, config=config, client=client)
    assert json.loads((Path(where.path) / MANIFEST).read_text())["status"] == "complete"
    assert segment_scene(input_path=str(scene), out_dir=out, config=config, client=client).skipped
    assert first.record["run_key"]
    other = state_location(parse_location(str(tmp_path / "rw" / "scene")))
    assert other.path == str(tmp_path / "rw" / ".footprints-state" / "scene")  # beside, where it can be
