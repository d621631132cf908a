"""Prefect flow ``segment-scene``: the same stages as ``footprints segment``, as tasks.

Tasks that do I/O retry transient errors only (see :mod:`flows.common`); a retried
``infer-stitch`` resumes from the tiles its failed attempt cached.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish_scene_artifacts
from flows.common import IO_RETRIES, IO_RETRY_DELAYS, SCHEDULER_ENV, retry_transient
from pipeline.config import PipelineConfig, load_config
from pipeline.io.gdal_env import configure_process
from pipeline.io.storage import redact
from pipeline.run.record import utc_now
from pipeline.run.restart import SceneState
from pipeline.run.scene import (
    ModelChoice,
    ScenePlan,
    SceneTarget,
    StageTimer,
    StitchStats,
    check_room,
    choose_model,
    finished_record,
    infer_and_stitch,
    open_state,
    plan_for,
    publish_scene,
    vectorize_stage,
    write_vectors_stage,
)
from pipeline.vectorize.buildings import Buildings

IO_TASK: dict[str, Any] = {
    "cache_policy": NO_CACHE, "retries": IO_RETRIES, "retry_delay_seconds": IO_RETRY_DELAYS,
    "retry_condition_fn": retry_transient,
}  # fmt: skip


@task(name="choose-model", cache_policy=NO_CACHE)
def model_task(model_path: str | None, config: PipelineConfig) -> ModelChoice:
    return choose_model(model_path=model_path, config=config)


@task(name="resolve", **IO_TASK)
def resolve_task(input_url: str, out_url: str) -> SceneTarget:
    return SceneTarget.resolve(input_url=input_url, out_url=out_url)


@task(name="plan", **IO_TASK)
def plan_task(input_url: str, config: PipelineConfig, model: ModelChoice) -> ScenePlan:
    return plan_for(model, input_path=input_url, config=config)


@task(name="infer-stitch", **IO_TASK)
def infer_task(
    plan: ScenePlan, model: ModelChoice, config: PipelineConfig, workdir: Path, state: SceneState | None
) -> StitchStats:
    logger = get_run_logger()
    step = max(1, len(plan.grid) // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            logger.info("tiles %d/%d", done, total)

    return infer_and_stitch(
        plan=plan, model=model, config=config, workdir=workdir, progress=progress, state=state
    )


@task(name="vectorize", cache_policy=NO_CACHE)
def vectorize_task(
    plan: ScenePlan, model: ModelChoice, config: PipelineConfig, workdir: Path, state: SceneState | None
) -> Buildings:
    return vectorize_stage(plan=plan, model=model, config=config, workdir=workdir, state=state)


@task(name="write-vectors", cache_policy=NO_CACHE)
def write_task(
    buildings: Buildings, plan: ScenePlan, model: ModelChoice, workdir: Path, timestamp: str | None
) -> None:
    write_vectors_stage(buildings=buildings, plan=plan, model=model, workdir=workdir, timestamp=timestamp)


@task(name="publish", **IO_TASK)
def publish_task(**kwargs: Any) -> dict[str, Any]:
    return publish_scene(**kwargs)


@flow(name="segment-scene", log_prints=True)
def segment_scene_flow(
    input_path: str,
    out_dir: str,
    config_path: str | None = None,
    model_path: str | None = None,
    scheduler: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Segment one scene into ``out_dir`` (the outputs of ``footprints segment``).

    Publishes a table artifact (counts, areas, timings) and a markdown artifact that
    links the scene's ``report.html``.

    ``input_path`` and ``out_dir`` may be local paths, ``file://`` or ``s3://`` URLs.
    ``scheduler`` (or the environment variable FOOTPRINTS_DASK_SCHEDULER) connects to
    an existing Dask cluster.
    """
    configure_process()
    scheduler = scheduler or os.environ.get(SCHEDULER_ENV) or None
    config = load_config(config_path, **{"dask.scheduler": scheduler})
    timer, started = StageTimer(), utc_now()
    with timer.stage("plan"):
        model = model_task(model_path, config)
        target = resolve_task(input_path, out_dir)
    with target.claim(config, force=force):  # the input, OUTDIR's lock and its owner
        return _run_claimed(input_path, target, model, config, timer, force, started)


def _run_claimed(
    input_path: str, target: SceneTarget, model: ModelChoice, config: PipelineConfig, timer: StageTimer,
    force: bool, started: str,
) -> dict[str, Any]:  # fmt: skip
    logger = get_run_logger()
    out_dir = target.out.url
    with timer.stage("plan"):
        state = open_state(target=target, model=model, config=config, force=force)
        if (done := finished_record(state=state, target=target)) is not None:
            logger.info("%s is up to date (same input, model and config): nothing to do", redact(out_dir))
            publish_scene_artifacts(done, out_dir)
            return {**done, "skipped": True}
        plan = plan_task(input_path, config, model)
    logger.info("plan: %s, %d tiles, model %s", plan.scene, len(plan.grid), model.description["id"])
    check_room(plan=plan, target=target, model=model, config=config, state=state)
    with target.staging() as work:
        with timer.stage("infer_stitch"):
            stats = infer_task(plan, model, config, work, state)
        logger.info(
            "infer+stitch: %d tiles inferred, %d reused, %d skipped",
            stats.tiles_inferred, stats.tiles_reused, stats.tiles_skipped,
        )  # fmt: skip
        with timer.stage("vectorize"):
            buildings = vectorize_task(plan, model, config, work, state)
        logger.info("vectorize: %d buildings", len(buildings))
        with timer.stage("write_vectors"):
            write_task(buildings, plan, model, work, target.input_modified)
        record = publish_task(
            plan=plan, model=model, config=config, stats=stats, buildings=buildings,
            seconds=timer.seconds, workdir=work, target=target, state=state, started=started,
            cpu_seconds=timer.cpu,
        )  # fmt: skip
    logger.info("wrote %s to %s", ", ".join([*record.get("checksums", {}), "run.json"]), redact(out_dir))
    for warning in record.get("warnings", []):
        logger.warning("%s: %s", plan.scene, warning)
    publish_scene_artifacts(record, out_dir)
    return record


if __name__ == "__main__":
    import sys

    segment_scene_flow(sys.argv[1], sys.argv[2])
