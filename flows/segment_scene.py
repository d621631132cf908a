"""Prefect flow ``segment-scene``: the same stages as ``footprints segment``, as tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.config import PipelineConfig, load_config
from pipeline.scene import (
    OUTPUT_NAMES,
    ModelChoice,
    ScenePlan,
    StageTimer,
    StitchStats,
    choose_model,
    infer_and_stitch,
    plan_scene,
    publish_scene,
    vectorize_stage,
    write_vectors_stage,
)
from pipeline.vectorize import Buildings
from pipeline.write import staging_dir


@task(name="plan", cache_policy=NO_CACHE)
def plan_task(input_path: str, config: PipelineConfig, model: ModelChoice) -> ScenePlan:
    return plan_scene(input_path=input_path, config=config, model_gsd_m=model.description.get("gsd_m"))


@task(name="choose-model", cache_policy=NO_CACHE)
def model_task(model_path: str | None, config: PipelineConfig) -> ModelChoice:
    return choose_model(model_path=model_path, config=config)


@task(name="infer-stitch", cache_policy=NO_CACHE)
def infer_task(plan: ScenePlan, model: ModelChoice, config: PipelineConfig, workdir: Path) -> StitchStats:
    logger = get_run_logger()
    step = max(1, len(plan.grid) // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            logger.info("tiles %d/%d", done, total)

    return infer_and_stitch(plan=plan, model=model, config=config, workdir=workdir, progress=progress)


@task(name="vectorize", cache_policy=NO_CACHE)
def vectorize_task(plan: ScenePlan, model: ModelChoice, config: PipelineConfig, workdir: Path) -> Buildings:
    return vectorize_stage(plan=plan, model=model, config=config, workdir=workdir)


@task(name="write-vectors", cache_policy=NO_CACHE)
def write_task(buildings: Buildings, plan: ScenePlan, model: ModelChoice, workdir: Path) -> None:
    write_vectors_stage(buildings=buildings, plan=plan, model=model, workdir=workdir)


@flow(name="segment-scene", log_prints=True)
def segment_scene_flow(
    input_path: str,
    out_dir: str,
    config_path: str | None = None,
    model_path: str | None = None,
    scheduler: str | None = None,
) -> dict[str, Any]:
    """Segment one scene into ``out_dir`` (the five outputs of ``footprints segment``)."""
    logger = get_run_logger()
    config = load_config(config_path, **{"dask.scheduler": scheduler})
    timer = StageTimer()
    with timer.stage("plan"):
        model = model_task(model_path, config)
        plan = plan_task(input_path, config, model)
    logger.info("plan: %s, %d tiles, model %s", plan.scene, len(plan.grid), model.description["id"])
    with staging_dir(out_dir) as work:
        with timer.stage("infer_stitch"):
            stats = infer_task(plan, model, config, work)
        logger.info("infer+stitch: %d tiles inferred, %d skipped", stats.tiles_inferred, stats.tiles_skipped)
        with timer.stage("vectorize"):
            buildings = vectorize_task(plan, model, config, work)
        logger.info("vectorize: %d buildings", len(buildings))
        with timer.stage("write_vectors"):
            write_task(buildings, plan, model, work)
        record = publish_scene(
            plan=plan, model=model, config=config, stats=stats, n_buildings=len(buildings),
            seconds=timer.seconds, workdir=work, out_dir=Path(out_dir),
        )  # fmt: skip
    logger.info("wrote %s", ", ".join(OUTPUT_NAMES))
    return record


if __name__ == "__main__":
    import sys

    segment_scene_flow(sys.argv[1], sys.argv[2])
