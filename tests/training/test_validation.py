"""Training-time validation predicts a scene exactly as ``footprints segment`` does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rasterio.transform import Affine

from pipeline.config import PipelineConfig, TilingConfig
from pipeline.model.checkpoint import CheckpointMetadata, save_checkpoint
from pipeline.model.deeplab import ModelSpec, build_model
from pipeline.model.infer import CheckpointSource
from pipeline.run.dispatch import batches, infer_batch
from pipeline.run.plan import plan_scene
from pipeline.tiling.stitch import ArraySink, Stitcher
from pipeline.training.sampling import ValScene
from pipeline.training.validation import VAL_BATCH, VAL_OVERLAP, scene_probability, segmenter_for
from tests.conftest import write_tif


def test_validation_probabilities_are_the_products(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(encoder="efficientnet-lite0", encoder_weights=None, classes=("building", "boundary"))
    model = build_model(spec).eval()
    meta = CheckpointMetadata(gsd_m=1.0)
    path = save_checkpoint(tmp_path / "m.safetensors", model=model, spec=spec, metadata=meta)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(3, 200, 300), dtype=np.uint8)
    tif = write_tif(tmp_path / "scene.tif", image, transform=Affine(1.0, 0, 600000.0, 0, -1.0, 3300000.0))

    # the product: plan the scene, predict its batches as a worker does, stitch them
    tiling = TilingConfig(tile_size=128, overlap=VAL_OVERLAP, batch_size=VAL_BATCH)
    config = PipelineConfig(tiling=tiling)
    plan = plan_scene(input_path=str(tif), config=config, model_gsd_m=1.0, model_stride=16)
    assert plan.scale == 1.0 and plan.grid.shape == (3, 4) and plan.grid.lattice == 16
    sink = ArraySink(height=200, width=300)
    stitcher = Stitcher(grid=plan.grid, sink=sink)
    source = CheckpointSource(path=str(path), device="cpu", runtime="torch")
    for batch in batches(list(plan.grid), VAL_BATCH):
        for r in infer_batch(plan.info, batch, source).results:
            stitcher.add(r.tile, r.probability, r.valid())
    assert stitcher.finished

    # training-time validation, on the model in memory
    target = np.zeros((2, 200, 300), np.uint8)
    scene = ValScene(source="s", name="scene", image=image.transpose(1, 2, 0), target=target)
    prob = scene_probability(segmenter_for(model, torch.device("cpu")), scene, tile=128)
    np.testing.assert_array_equal(prob, sink.probability[0])
    assert prob.std() > 0  # a real prediction, not a constant
