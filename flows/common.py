"""What the flows share: the retry rule for transient I/O errors."""

from __future__ import annotations

from typing import Any

from pipeline.core.errors import is_transient

#: Environment variable naming an existing Dask scheduler (set on Prefect workers).
SCHEDULER_ENV = "FOOTPRINTS_DASK_SCHEDULER"

#: Retries of a task that failed on transient I/O (a dropped connection, a 5xx, a timeout).
IO_RETRIES = 2
IO_RETRY_DELAYS: list[float] = [2.0, 10.0]


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry transient I/O errors only.

    A missing scene, an unreadable raster or a bad config fails at once: retrying
    would only delay the error message.
    """
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as error:  # the result itself could not be loaded
            exc = error
    return isinstance(exc, BaseException) and is_transient(exc)
