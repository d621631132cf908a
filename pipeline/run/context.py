"""What the stages of the scene job see, and the typed values they hand each other.

Every stage takes the :class:`SceneContext` (the :class:`Job`: plan, model, config, target and
restart state, what stays the same for the whole job; and the staging folder) and the
value the stage before it returned: nothing for the first, then :class:`Stitched`,
:class:`Vectorized`, :class:`Written`. The last returns the run record (``run.json``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pipeline.config import PipelineConfig
from pipeline.run.model_choice import ModelChoice
from pipeline.run.plan import ScenePlan
from pipeline.run.restart import SceneState
from pipeline.run.target import SceneTarget
from pipeline.vectorize.buildings import Buildings

#: ``progress(tiles_done, tiles_total)``, called as batches are stitched.
ProgressFn = Callable[[int, int], None]


@runtime_checkable
class Summarized(Protocol):
    """A stage's result that says in one line what it holds (the flow logs it)."""

    def summary(self) -> str: ...


@dataclass
class StageTimer:
    """Wall seconds per stage, and this process's CPU seconds over the same spans (``cpu``)."""

    seconds: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)
            self.cpu[name] = round(self.cpu.get(name, 0.0) + time.process_time() - c0, 3)


@dataclass(frozen=True, kw_only=True)
class Job:
    """A planned, claimed scene, ready to run. ``timer`` and ``state`` are the job's (mutable)
    records; ``progress`` and ``client`` are the runner's (None: no progress report, and the
    shared or a new Dask cluster)."""

    plan: ScenePlan
    model: ModelChoice
    config: PipelineConfig
    target: SceneTarget
    timer: StageTimer
    state: SceneState | None = None
    started: str | None = None
    progress: ProgressFn | None = None
    client: Any | None = None

    def in_folder(self, workdir: Path) -> SceneContext:
        """The context of this job's stages, staging their outputs in ``workdir``."""
        return SceneContext(**{f.name: getattr(self, f.name) for f in fields(Job)}, workdir=workdir)


@dataclass(frozen=True, kw_only=True)
class SceneContext(Job):
    """What every stage may read: the job, and the staging folder its outputs go to."""

    workdir: Path


@dataclass(frozen=True)
class StitchStats:
    tiles: int
    tiles_inferred: int
    tiles_skipped: int
    batches: int
    peak_rows: int
    tiles_reused: int = 0
    devices: tuple[str, ...] = ()  # where the model ran (pipeline.run.hardware.device_label)
    runtimes: tuple[str, ...] = ()  # what ran it (pipeline.model.runtimes)
    #: the workers' seconds summed over the tasks (pipeline.run.dispatch.TASK_TIMES)
    worker_times: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Stitched:
    """What infer-and-stitch made: the two COGs, the split regions (a scratch raster, None
    when buildings are not split) and its counts."""

    stats: StitchStats
    probability: Path
    mask: Path
    regions: Path | None = None

    @property
    def labels(self) -> Path:
        """The raster whose regions become buildings: the split regions, else the mask."""
        return self.regions if self.regions is not None else self.mask

    def summary(self) -> str:
        s = self.stats
        return (
            f"infer+stitch: {s.tiles_inferred} tiles inferred, {s.tiles_reused} reused, "
            f"{s.tiles_skipped} skipped"
        )


@dataclass(frozen=True)
class Vectorized:
    """The scene's buildings, with the rasters they came from."""

    stitched: Stitched
    buildings: Buildings

    def summary(self) -> str:
        return f"vectorize: {len(self.buildings)} buildings"


@dataclass(frozen=True)
class Written:
    """The vector outputs written (GeoPackage, GeoParquet, GeoJSON), with what came before."""

    vectorized: Vectorized
    vectors: tuple[Path, ...]

    def summary(self) -> str:
        return f"write-vectors: {', '.join(p.name for p in self.vectors)}"
