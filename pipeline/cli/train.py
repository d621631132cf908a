"""``footprints train``: the training command, registered on the main typer app by :func:`register`.

Its options are generated from :class:`pipeline.training.options.TrainOptions`: one option per
field, ``--field-name``, with the field's default and its ``help`` metadata. Only ``--resume`` and
``--json`` belong to the command itself (how to run, not what to train).
"""

from __future__ import annotations

import inspect
import json
import typing
from dataclasses import MISSING, fields
from typing import Annotated, Any

import typer
from rich.console import Console

from pipeline.cli.console import friendly_errors, show_warnings
from pipeline.core.errors import FootprintsError
from pipeline.training.options import TrainOptions

__all__ = ["option_parameters", "register"]

_err = Console(stderr=True)

#: The command's own options, beside one per :class:`TrainOptions` field.
COMMAND_OPTIONS: tuple[inspect.Parameter, ...] = tuple(
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=annotation)
    for name, annotation in (
        ("resume", Annotated[bool, typer.Option("--resume", help="Continue from <out stem>.state.pt.")]),
        ("as_json", Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]),
    )
)


def option_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per :class:`TrainOptions` field, annotated as a typer option."""
    hints = typing.get_type_hints(TrainOptions)
    return [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=inspect.Parameter.empty if f.default is MISSING else f.default,
            annotation=Annotated[
                hints[f.name], typer.Option("--" + f.name.replace("_", "-"), help=f.metadata["help"])
            ],
        )
        for f in fields(TrainOptions)
    ]


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
        return
    iou = summary["validation"].get("iou", float("nan"))
    _err.print(
        f"{summary['steps']} steps -> {summary['out']} (best step {summary['best_step']}, "
        f"val IoU {iou:.4f} at threshold {summary['threshold']}, {summary['seconds_per_step']} s/step)",
        highlight=False,
    )


def train_command(*, resume: bool = False, as_json: bool = False, **options: Any) -> None:
    """Train DeepLabV3 on DATA and write the best checkpoint to OUT."""
    from pipeline.training.train import train

    show_warnings(_err)
    try:
        summary = train(TrainOptions(**options), resume=resume)
    except FootprintsError as exc:
        with friendly_errors(_err):
            raise exc from None
    _print_summary(summary, as_json)


_PARAMETERS = [*option_parameters(), *COMMAND_OPTIONS]
train_command.__signature__ = inspect.Signature(_PARAMETERS)  # type: ignore[attr-defined]
train_command.__annotations__ = {p.name: p.annotation for p in _PARAMETERS}


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""
    app.command("train")(train_command)
