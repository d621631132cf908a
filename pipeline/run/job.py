"""The scene job, defined once: an ordered list of typed stages.

:data:`STAGES` is the job that runs in a scene's staging folder: infer and stitch, vectorize,
write the vector files, publish. Each :class:`Stage` takes the :class:`SceneContext` and the
value the stage before it returned (see :mod:`pipeline.run.context`). ``footprints segment``
(:func:`pipeline.run.scene.segment_scene`) runs the list in-process; the Prefect flow
``segment-scene`` (``flows/segment_scene.py``) runs each stage of the same list as a task named
:attr:`Stage.task_name`. Adding a stage is adding it here.

Before the stages, both runners choose the model (:func:`~pipeline.run.model_choice.choose_model`),
resolve and claim the target, and :func:`prepare_job` opens the restart state and plans the
scene; :func:`run_job` then checks the free space, opens the staging folder and runs the stages.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from pipeline.config import PipelineConfig
from pipeline.core.memory import trim_heap
from pipeline.io.preflight import check_free_space, estimate_bytes, write_errors
from pipeline.run.cluster import scene_client
from pipeline.run.context import Job, SceneContext, StageTimer
from pipeline.run.model_choice import ModelChoice, probability_channels
from pipeline.run.plan import ScenePlan, plan_for
from pipeline.run.publish import publish_scene
from pipeline.run.stitching import infer_and_stitch
from pipeline.run.target import SceneTarget, finished_record, open_state
from pipeline.run.vectorizing import vectorize, write_vectors_stage

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class Stage(Generic[In, Out]):
    """One step of the scene job: ``run(ctx, previous) -> next``.

    ``name`` keys its seconds in ``run.json`` (when ``timed``); ``io`` marks a stage whose
    transient I/O errors the flow retries (a retried infer-and-stitch resumes from the
    tiles its failed attempt cached).
    """

    name: str
    run: Callable[[SceneContext, In], Out]
    io: bool = False
    timed: bool = True

    @property
    def task_name(self) -> str:
        """The Prefect task's name: ``name`` with dashes (``infer_stitch`` → ``infer-stitch``)."""
        return self.name.replace("_", "-")

    def timing(self, timer: StageTimer) -> AbstractContextManager[None]:
        return timer.stage(self.name) if self.timed else nullcontext()


#: The scene job, in order. The last stage returns the run record (``run.json``); it times
#: itself (``describe``) and is not timed as a whole, since run.json is written inside it.
STAGES: tuple[Stage[Any, Any], ...] = (
    Stage("infer_stitch", infer_and_stitch, io=True),
    Stage("vectorize", vectorize),
    Stage("write_vectors", write_vectors_stage),
    Stage("publish", publish_scene, io=True, timed=False),
)

#: How a runner calls a stage: in-process, :func:`call_stage`; the flow, as a Prefect task.
StageCall = Callable[[Stage[Any, Any], SceneContext, Any], Any]


def call_stage(stage: Stage[Any, Any], ctx: SceneContext, value: Any) -> Any:
    return stage.run(ctx, value)


def run_stages(ctx: SceneContext, *, call: StageCall = call_stage) -> dict[str, Any]:
    """Run :data:`STAGES` in order, each on what the one before returned: the run record.

    The heap is trimmed after each stage (:func:`pipeline.core.memory.trim_heap`), so that no
    stage's peak RSS stands on the memory its predecessors freed.
    """
    value: Any = None
    for stage in STAGES:
        with stage.timing(ctx.timer):
            value = call(stage, ctx, value)
        trim_heap()
    record: dict[str, Any] = value
    return record


@dataclass(frozen=True)
class UpToDate:
    """A scene whose exact run (same input, model and config) is published, its outputs intact."""

    record: dict[str, Any]  # its run.json


def prepare_job(
    *,
    input_path: str,
    target: SceneTarget,
    model: ModelChoice,
    config: PipelineConfig,
    timer: StageTimer,
    started: str | None = None,
    force: bool = False,
    plan: Callable[..., ScenePlan] = plan_for,
) -> Job | UpToDate:
    """Once OUTDIR is claimed: open the restart state and, unless the scene is up to date
    (see :func:`~pipeline.run.target.finished_record`), plan it with ``plan`` (the flow's
    task). Timed as ``plan``."""
    with timer.stage("plan"):
        state = open_state(target=target, model=model, config=config, force=force)
        if (done := finished_record(state=state, target=target)) is not None:
            return UpToDate(done)
        planned = plan(model, input_path=input_path, config=config)
    return Job(
        plan=planned, model=model, config=config, target=target, timer=timer, state=state, started=started
    )


def check_room(job: Job) -> int:
    """Refuse to start when the disk the run writes to lacks the space it needs; that estimate."""
    out, info = job.target.out, job.plan.info
    needed = estimate_bytes(
        height=info.grid.height,
        width=info.grid.width,
        channels=probability_channels(job.model, job.config),
        cached=job.state is not None and out.is_local,
    )
    check_free_space(out=out.url, local=out.is_local, needed=needed)
    return needed


def run_job(job: Job, *, call: StageCall = call_stage) -> dict[str, Any]:
    """Check the free space, then run the stages in a staging folder: the run record.

    The stages share one Dask cluster (:func:`~pipeline.run.cluster.scene_client`: the job's
    client, else the shared one, else a new one open until the last stage ends), so that the
    workers that inferred the tiles then polygonize the stitched rasters. A full disk or an
    unwritable OUTDIR met meanwhile is one line (see :func:`pipeline.io.preflight.write_errors`).
    """
    out = job.target.out
    needed = check_room(job)
    with (
        write_errors(out=out.url, local=out.is_local, needed=needed),
        job.target.staging() as work,
        scene_client(job.client, job.config.dask) as client,
    ):
        return run_stages(replace(job, client=client).in_folder(work), call=call)
