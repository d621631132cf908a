"""Shared CLI plumbing: footprints errors become one line on stderr and exit code 2.

A full disk or a folder that cannot be written (an ``OSError`` that no footprints check
caught first) is one line too, and Ctrl-C is one line and exit code 130. Warnings are one
line each as well (:func:`show_warnings`).
"""

from __future__ import annotations

import errno
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.core.errors import FootprintsError, Interrupted, os_reason
from pipeline.io.storage import redact

#: errno values of an environment problem (a full disk, a read-only or forbidden path), not a bug.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


@contextmanager
def friendly_errors(err: Console | None = None) -> Iterator[None]:
    """Print a :class:`FootprintsError` as one line on stderr and exit with code 2.

    So is an ``OSError`` of a full disk or a path that cannot be written; Ctrl-C prints
    one line (with how to resume, for a scene run) and exits with code 130.
    """
    console = err or Console(stderr=True)
    try:
        yield
    except FootprintsError as exc:
        _error(console, str(exc))
        raise typer.Exit(code=2) from None
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = exc.filename or "a file"
        _error(console, f"{where}: {os_reason(exc)}; free some space or fix the permissions, and run again")
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt as exc:
        text = str(exc) if isinstance(exc, Interrupted) else "interrupted"
        console.print(text, highlight=False, soft_wrap=True)
        raise typer.Exit(code=130) from None


def show_warnings(console: Console) -> None:
    """Print Python warnings as one ``warning:`` line each on ``console`` (no file and line)."""

    def show(
        message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    warnings.showwarning = show


def _error(console: Console, text: str) -> None:
    message = escape(redact(" ".join(text.split())))
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
