"""The Prefect flow ``segment-scene`` on a 2-worker Dask LocalCluster."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.conftest import coordinate_image, write_tif

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_segment_scene_flow_on_two_workers(prefect_harness: None, tmp_path: Path) -> None:
    from dask.distributed import Client, LocalCluster

    from flows.segment_scene import segment_scene_flow

    height, width = 2000, 3000
    image = coordinate_image(height, width)
    image[:, :600, :] = 0  # nodata margins: top band and right band, wider than a tile
    image[:, :, 2300:] = 0
    src = write_tif(tmp_path / "big.tif", image, nodata=0, tiled=True, block=256)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tiling: {tile_size: 512, overlap: 64, batch_size: 2}\n")
    out = tmp_path / "out"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        record = segment_scene_flow(
            str(src), str(out), config_path=str(cfg), scheduler=cluster.scheduler_address
        )
        # the model was loaded on both workers, once each (by the worker plugin)
        from pipeline.infer import cached_count

        counts = client.run(cached_count)
        assert len(counts) == 2 and all(c == 1 for c in counts.values())
    assert {p.name for p in out.iterdir()} == {
        "probability.tif", "mask.tif", "buildings.geojson", "buildings.gpkg", "run.json",
    }  # fmt: skip
    assert record["counts"]["tiles_skipped"] > 0
    assert record["counts"]["tiles_inferred"] + record["counts"]["tiles_skipped"] == record["counts"]["tiles"]
    assert json.loads((out / "run.json").read_text())["counts"] == record["counts"]
    with rasterio.open(out / "probability.tif") as ds, rasterio.open(src) as s:
        assert ds.shape == (height, width) and ds.transform == s.transform and ds.crs == s.crs
        valid = ds.dataset_mask() > 0
        np.testing.assert_array_equal(valid, s.dataset_mask() > 0)
        prob = ds.read(1)
        assert prob[valid].std() > 0
