"""``footprints segment``: the scene job (:mod:`pipeline.run.job`) run in-process.

Everything is written into a hidden staging folder in OUTDIR and renamed into place at the
end, so OUTDIR only ever holds whole files. ``flows/segment_scene.py`` runs the same stages
as Prefect tasks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.core.errors import Interrupted, NoDataError
from pipeline.run.context import ProgressFn, StageTimer
from pipeline.run.job import UpToDate, prepare_job, run_job
from pipeline.run.model_choice import ModelChoice, choose_model
from pipeline.run.plan import ScenePlan
from pipeline.run.record import utc_now
from pipeline.run.target import SceneTarget, display


@dataclass(frozen=True)
class SceneResult:
    out_dir: Path | str
    record: dict[str, Any]
    skipped: bool = False


def segment_scene(
    *,
    input_path: str,
    out_dir: str | os.PathLike[str],
    config: PipelineConfig,
    model_path: str | None = None,
    progress: ProgressFn | None = None,
    client: Any | None = None,
    force: bool = False,
    on_plan: Callable[[ScenePlan], None] | None = None,
    model: ModelChoice | None = None,
) -> SceneResult:
    """Run the whole job for one scene and publish its outputs into ``out_dir``.

    ``input_path`` and ``out_dir`` may be local paths, ``file://`` or ``s3://`` URLs.
    A rerun resumes from the tiles a crashed attempt finished, and a scene already
    published under the same input, model and config is not run again (unless ``force``).
    ``on_plan`` sees the plan before any tile is dispatched; ``model`` replaces the one
    :func:`choose_model` would choose (``footprints bench``'s stand-in). Ctrl-C raises
    :class:`~pipeline.core.errors.Interrupted` with the number of finished tiles kept.
    """
    timer, started = StageTimer(), utc_now()
    with timer.stage("plan"):
        model = model or choose_model(model_path=model_path, config=config)
        target = SceneTarget.resolve(input_url=input_path, out_url=out_dir)
    with target.claim(config, force=force):
        prepared = prepare_job(
            input_path=input_path,
            target=target,
            model=model,
            config=config,
            timer=timer,
            started=started,
            force=force,
        )
        if isinstance(prepared, UpToDate):
            return SceneResult(out_dir=display(target.out), record=prepared.record, skipped=True)
        if on_plan is not None:
            on_plan(prepared.plan)
        job, state = replace(prepared, progress=progress, client=client), prepared.state
        try:
            record = run_job(job)
        except KeyboardInterrupt:
            raise Interrupted(state.tiles_done if state is not None else 0) from None
        except BaseException as exc:
            if state is not None:
                state.discard_if_unused(drop=isinstance(exc, NoDataError))
            raise
    return SceneResult(out_dir=display(target.out), record=record)
