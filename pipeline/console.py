"""Shared CLI plumbing: footprints errors become one line on stderr and exit code 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.errors import FootprintsError
from pipeline.storage import redact


@contextmanager
def friendly_errors(err: Console | None = None) -> Iterator[None]:
    """Print a :class:`FootprintsError` as one line on stderr and exit with code 2."""
    try:
        yield
    except FootprintsError as exc:
        console = err or Console(stderr=True)
        message = escape(redact(str(exc)))
        console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
