"""Prefect flow ``segment-bucket``: every scene under a folder or bucket prefix.

Each scene runs the ``segment-scene`` flow (as a subflow inside a task), at most
``concurrency`` at a time, on one shared Dask cluster. Outputs go to
``output_url/<scene-stem>/`` and ``output_url/manifest.json`` lists every scene's
outputs, counts and status; ``index.html`` links every scene's report and
``collection.json`` (STAC) every scene's item. Scenes already published under the same input, model
and config are not run again; a scene interrupted mid-way resumes from its tiles.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.artifacts import publish_bucket_artifacts
from flows.common import IO_RETRIES, IO_RETRY_DELAYS, SCHEDULER_ENV, retry_transient
from flows.segment_scene import segment_scene_flow
from pipeline.config import load_config
from pipeline.core.errors import FootprintsError
from pipeline.describe.bucket_index import write_bucket_index
from pipeline.io.gdal_env import configure_process
from pipeline.io.storage import redact
from pipeline.run.bucket import BucketManifest, SceneJob, plan_bucket, scene_entry
from pipeline.run.cluster import shared_client

#: Most scenes in flight at once (the task runner's threads).
MAX_CONCURRENCY = 8


@task(
    name="list-scenes",
    cache_policy=NO_CACHE,
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=retry_transient,
)
def list_task(input_url: str, output_url: str, pattern: str) -> list[SceneJob]:
    return plan_bucket(input_url=input_url, output_url=output_url, pattern=pattern)


@task(name="scene", cache_policy=NO_CACHE, task_run_name="scene-{job.scene}")
def scene_task(
    job: SceneJob, config: str | None, model: str | None, scheduler: str | None, force: bool
) -> dict[str, Any]:
    return segment_scene_flow(
        job.input_url, job.output_url, config_path=config, model_path=model, scheduler=scheduler, force=force
    )


@flow(
    name="segment-bucket",
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY),  # type: ignore[arg-type]
)
def segment_bucket_flow(
    input_url: str,
    output_url: str,
    pattern: str = "*.tif",
    config: str | None = None,
    model: str | None = None,
    scheduler: str | None = None,
    concurrency: int = 1,
    force: bool = False,
) -> dict[str, Any]:
    """Segment every scene matching ``pattern`` under ``input_url`` into ``output_url``.

    ``config`` is a YAML file (see configs/); ``scheduler`` (or the environment
    variable FOOTPRINTS_DASK_SCHEDULER) connects to an existing Dask cluster.
    """
    configure_process()
    logger = get_run_logger()
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise FootprintsError(f"concurrency={concurrency}: must be between 1 and {MAX_CONCURRENCY}")
    scheduler = scheduler or os.environ.get(SCHEDULER_ENV) or None
    cfg = load_config(config, **{"dask.scheduler": scheduler})
    jobs = list_task(input_url, output_url, pattern)
    logger.info("%d scenes under %s", len(jobs), redact(input_url))
    manifest = BucketManifest(input_url=input_url, output_url=output_url, pattern=pattern, jobs=jobs)
    manifest.write()
    dc = cfg.dask
    with shared_client(
        scheduler=dc.scheduler,
        n_workers=dc.n_workers,
        threads_per_worker=dc.threads_per_worker,
        dashboard=dc.dashboard,
    ):
        _run_scenes(jobs, manifest, concurrency=concurrency, args=(config, model, dc.scheduler, force))
    index, _ = write_bucket_index(
        output_url=output_url, entries=manifest.scenes(), summary=manifest.summary()
    )
    publish_bucket_artifacts(index=index, scenes=manifest.scenes(), summary=manifest.summary())
    logger.info("index of the reports: %s; STAC collection: collection.json", redact(index.url))
    summary = {"manifest": manifest.location.url, "scenes": len(jobs), "failed": manifest.failed}
    if manifest.failed:
        raise FootprintsError(
            f"{len(manifest.failed)} of {len(jobs)} scenes failed ({', '.join(manifest.failed)}); "
            f"see the errors in {manifest.location.url}"
        )
    logger.info("bucket done: %s", summary)
    return summary


def _run_scenes(
    jobs: list[SceneJob], manifest: BucketManifest, *, concurrency: int, args: tuple[Any, ...]
) -> None:
    """Submit scenes with at most ``concurrency`` in flight; record each as it ends."""
    logger = get_run_logger()
    pending: dict[PrefectFuture[Any], SceneJob] = {}

    def settle(future: PrefectFuture[Any]) -> None:
        job = pending.pop(future)
        try:
            entry = scene_entry(job, record=future.result(), error=None)
        except Exception as exc:
            entry = scene_entry(job, record=None, error=exc)
            logger.error("scene %s failed: %s", job.scene, entry["error"])
        manifest.record(entry)

    for job in jobs:
        while len(pending) >= concurrency:
            settle(next(iter(as_completed(list(pending)))))
        pending[scene_task.submit(job, *args)] = job
    for future in as_completed(list(pending)):
        settle(future)


if __name__ == "__main__":
    import sys

    segment_bucket_flow(sys.argv[1], sys.argv[2], config=sys.argv[3] if len(sys.argv) > 3 else None)
