"""Prefect flow ``segment-scene``: the stages of the scene job (:data:`pipeline.run.job.STAGES`), as tasks.

Each stage becomes one task named :attr:`~pipeline.run.job.Stage.task_name`; the stages
that do I/O retry transient errors only (see :mod:`flows.common`), and a retried
``infer-stitch`` resumes from the tiles its failed attempt cached.
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from typing import Any

from prefect import Task, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish_scene_artifacts
from flows.common import IO_RETRIES, IO_RETRY_DELAYS, SCHEDULER_ENV, retry_transient
from pipeline.config import PipelineConfig, load_config
from pipeline.io.gdal_env import configure_process
from pipeline.io.storage import redact
from pipeline.run.context import ProgressFn, SceneContext, StageTimer, Summarized
from pipeline.run.job import Stage, UpToDate, prepare_job, run_job
from pipeline.run.model_choice import ModelChoice, choose_model
from pipeline.run.plan import ScenePlan, plan_for
from pipeline.run.record import utc_now
from pipeline.run.target import SceneTarget

IO_TASK: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "retries": IO_RETRIES,
    "retry_delay_seconds": IO_RETRY_DELAYS,
    "retry_condition_fn": retry_transient,
}


@functools.cache
def stage_task(stage: Stage[Any, Any]) -> Task[..., Any]:
    """``stage`` as a Prefect task (made once per stage): its name, and the retries of an I/O stage."""
    options: dict[str, Any] = IO_TASK if stage.io else {"cache_policy": NO_CACHE}
    wrapped: Task[..., Any] = task(name=stage.task_name, **options)(stage.run)
    return wrapped


@task(name="choose-model", cache_policy=NO_CACHE)
def model_task(model_path: str | None, config: PipelineConfig) -> ModelChoice:
    return choose_model(model_path=model_path, config=config)


@task(name="resolve", **IO_TASK)
def resolve_task(input_url: str, out_url: str) -> SceneTarget:
    return SceneTarget.resolve(input_url=input_url, out_url=out_url)


#: :func:`~pipeline.run.plan.plan_for` as a task (opens the input: may meet transient I/O errors).
plan_task: Task[..., ScenePlan] = task(name="plan", **IO_TASK)(plan_for)


def call_as_task(stage: Stage[Any, Any], ctx: SceneContext, value: Any) -> Any:
    """Run ``stage`` as its task, and log what it made."""
    result = stage_task(stage)(ctx, value)
    if isinstance(result, Summarized):
        get_run_logger().info("%s", result.summary())
    return result


def _tile_progress(total: int) -> ProgressFn:
    """Logs every tenth of the tiles (in the logger of the task that stitches them)."""
    step = max(1, total // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            get_run_logger().info("tiles %d/%d", done, total)

    return progress


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
    input_path: str,
    target: SceneTarget,
    model: ModelChoice,
    config: PipelineConfig,
    timer: StageTimer,
    force: bool,
    started: str,
) -> dict[str, Any]:
    logger = get_run_logger()
    out_dir = target.out.url
    job = prepare_job(
        input_path=input_path,
        target=target,
        model=model,
        config=config,
        timer=timer,
        started=started,
        force=force,
        plan=plan_task,
    )
    if isinstance(job, UpToDate):
        logger.info("%s is up to date (same input, model and config): nothing to do", redact(out_dir))
        publish_scene_artifacts(job.record, out_dir)
        return {**job.record, "skipped": True}
    plan = job.plan
    logger.info("plan: %s, %d tiles, model %s", plan.scene, len(plan.grid), model.id)
    record = run_job(replace(job, progress=_tile_progress(len(plan.grid))), call=call_as_task)
    logger.info("wrote %s to %s", ", ".join([*record.get("checksums", {}), "run.json"]), redact(out_dir))
    for warning in record.get("warnings", []):
        logger.warning("%s: %s", plan.scene, warning)
    publish_scene_artifacts(record, out_dir)
    return record


if __name__ == "__main__":
    import sys

    segment_scene_flow(sys.argv[1], sys.argv[2])
