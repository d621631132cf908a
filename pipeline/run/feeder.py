"""The batch feeder: what the client does with each batch the workers finish."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.run.context import ProgressFn
from pipeline.run.dispatch import TASK_TIMES, BatchResult
from pipeline.run.restart import SceneState
from pipeline.tiling.stitch import Stitcher


@dataclass
class BatchFeeder:
    """Feeds finished batches to the stitcher, counts tiles and records them in ``state``."""

    stitcher: Stitcher
    total: int
    state: SceneState | None = None
    progress: ProgressFn | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"inferred": 0, "skipped": 0, "reused": 0})
    devices: set[str] = field(default_factory=set)
    runtimes: set[str] = field(default_factory=set)
    times: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TASK_TIMES, 0.0))

    def __call__(self, batch: BatchResult) -> None:
        if batch.device:
            self.devices.add(batch.device)
        if batch.runtime:
            self.runtimes.add(batch.runtime)
        for key, value in zip(TASK_TIMES, batch.times, strict=False):
            self.times[key] += value
        for r in batch.results:
            self.stitcher.add(r.tile, r.probability, r.valid())
        for t in batch.skipped:
            self.stitcher.mark_done(t)
        reused = sum(r.reused for r in batch.results)
        self.counts["reused"] += reused
        self.counts["inferred"] += len(batch.results) - reused
        self.counts["skipped"] += len(batch.skipped)
        if self.state is not None:
            self.state.record_tiles([r.tile.index for r in batch.results] + [t.index for t in batch.skipped])
        if self.progress is not None:
            self.progress(sum(self.counts.values()), self.total)
