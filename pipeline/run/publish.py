"""The publish stage: describe the scene, write ``run.json`` and move the outputs into place."""

from __future__ import annotations

import time
from typing import Any

from pipeline.describe.outputs import describe_scene
from pipeline.io.storage import write_json
from pipeline.run.context import SceneContext, Written
from pipeline.run.model_choice import probability_channels, probability_classes
from pipeline.run.outdir import publish_outputs
from pipeline.run.record import run_record


def publish_scene(ctx: SceneContext, written: Written) -> dict[str, Any]:
    """Describe the scene (quicklook, report, STAC item), write ``run.json`` and move the staged
    outputs to the target, ``run.json`` last: the run record.

    Locally each file is renamed into place; on S3 each is one upload, visible only
    once complete. ``run.json`` records the SHA-256 of every other output; the restart
    manifest, marked complete last, records all of them (see
    :func:`pipeline.run.target.finished_record`).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    vectorized, state = written.vectorized, ctx.state
    channels = probability_channels(ctx.model, ctx.config)
    record = run_record(
        ctx,
        stats=vectorized.stitched.stats,
        n_buildings=len(vectorized.buildings),
        probability_bands=list(probability_classes(ctx.model)[:channels]),
    )
    record = describe_scene(
        record=record,
        buildings=vectorized.buildings,
        mask=vectorized.stitched.mask,
        info=ctx.plan.info,
        config=ctx.config,
        workdir=ctx.workdir,
    )
    record["seconds"]["describe"] = round(time.perf_counter() - t0, 3)
    record["cpu_seconds"]["client"]["describe"] = round(time.process_time() - c0, 3)
    write_json(ctx.workdir / "run.json", record)
    outputs, checksums = publish_outputs(ctx.workdir, ctx.target.out, record["checksums"])
    if state is not None:
        state.finish(outputs=outputs, checksums=checksums, keep_tiles=ctx.config.restart.keep_tiles)
    return record
