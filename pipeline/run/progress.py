"""What ``footprints segment`` says while it runs: the plan, an estimate, and progress.

Right after planning, one line gives the tile count. Once a batch has finished after the
first one (the first also pays for starting the workers and loading the model), one line
estimates the time the whole scene takes. On a terminal a progress bar follows, with the
time left (``about 4 min 10 s left``, from the measured time per tile); without one (nohup,
CI, a pipe) a plain line at the first batch, then every :data:`LINE_SECONDS` seconds
(with the time left too), and one at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

#: Seconds between two progress lines when stderr is not a terminal.
LINE_SECONDS = 10.0
#: The estimate waits for this long after the first batch, so that it measures work, not start-up.
MIN_WINDOW_S = 0.2


def duration(seconds: float) -> str:
    """``2 h 05 min``, ``4 min 10 s`` or ``12 s``."""
    s = max(0, round(seconds))
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def plan_line(*, scene: str, tiles: int, height: int, width: int, tile_size: int) -> str:
    return f"{scene}: {tiles:,} tiles of {tile_size} px planned over {width:,} x {height:,} pixels"


def estimate_line(*, total: int, seconds_per_tile: float, elapsed: float) -> str:
    """The whole run's estimated duration, from the time per tile measured after the first batch."""
    return (
        f"estimate: about {duration(elapsed + seconds_per_tile * total)} for {total:,} tiles "
        f"({seconds_per_tile:.2f} s per tile, measured after the first batch)"
    )


@dataclass
class ProgressReporter:
    """The CLI's ``progress`` callback ``(done, total)`` and ``on_plan`` hook, on ``console``."""

    console: Console
    clock: Callable[[], float] = time.monotonic
    interval_s: float | None = None
    _start: float | None = None
    _first: tuple[float, int] | None = None
    _rate: float | None = None
    _last_line: float | None = None
    _bar: Any = field(default=None, repr=False)
    _task: Any = None

    def __enter__(self) -> ProgressReporter:
        if self.console.is_terminal:
            columns = (
                TextColumn("tiles"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
            )
            self._bar = Progress(*columns, console=self.console, transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("tiles", total=None, eta="")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, exc, tb)

    def planned(self, plan: Any) -> None:
        """Called once the scene is planned (a :class:`pipeline.run.plan.ScenePlan`)."""
        raster, grid = plan.info.grid, plan.grid
        self._start = self.clock()
        self._say(
            plan_line(
                scene=plan.scene,
                tiles=len(grid),
                height=raster.height,
                width=raster.width,
                tile_size=grid.tile_size,
            )
        )

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self._start is None:
            self._start = now
        self._measure(now, done, total)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total, eta=self.eta_text(done, total))
            return
        interval = LINE_SECONDS if self.interval_s is None else self.interval_s
        if self._last_line is None or done >= total or now - self._last_line >= interval:
            self._last_line = now
            self._say(self._status(now, done, total))

    def _measure(self, now: float, done: int, total: int) -> None:
        if done <= 0 or self._rate is not None or done >= total:
            return
        if self._first is None:
            self._first = (now, done)
            return
        t0, d0 = self._first
        if done > d0 and now - t0 >= MIN_WINDOW_S:
            self._rate = (now - t0) / (done - d0)
            assert self._start is not None
            self._say(estimate_line(total=total, seconds_per_tile=self._rate, elapsed=t0 - self._start))

    def eta_text(self, done: int, total: int) -> str:
        """``about 4 min 10 s left`` once the time per tile is measured; ``estimating...`` before."""
        if done >= total:
            return "done"
        if self._rate is None:
            return "estimating..."
        return f"about {duration(self._rate * (total - done))} left"

    def _status(self, now: float, done: int, total: int) -> str:
        elapsed = now - (now if self._start is None else self._start)
        line = f"tiles {done:,}/{total:,} ({100 * done / max(total, 1):.1f} %), {duration(elapsed)} elapsed"
        if self._rate is not None and done < total:
            line += f", {self.eta_text(done, total)}"
        return line

    def _say(self, text: str) -> None:
        target = self._bar.console if self._bar is not None else self.console
        target.print(text, highlight=False, soft_wrap=True)
