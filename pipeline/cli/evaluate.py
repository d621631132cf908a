"""``footprints evaluate``: score segment outputs against ground truth.

See :mod:`pipeline.evaluation.evaluate`.

The lead CLI calls :func:`register` on its typer app. The command prints tables (per
scene and overall, then the polygon metrics; with ``--source``, the macro average over
sources first, pooled second, then per source, see :func:`pipeline.evaluation.report.report_tables`)
and writes the full results as JSON: atomically to ``--json FILE``, or to stdout with
``--json -`` (the tables then go to stderr so stdout stays JSON). Warnings (label extents
that differ from the prediction's) go to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.cli.console import friendly_errors
from pipeline.core.errors import ConfigError
from pipeline.io.storage import write_json

PredOpt = Annotated[
    list[Path],
    typer.Option("--pred", metavar="OUTDIR", help="Output folder of `footprints segment` (repeatable)."),
]
TruthOpt = Annotated[
    list[Path],
    typer.Option(
        "--truth",
        metavar="LABELS",
        help="Ground truth for the matching --pred: mask raster (.tif/.png) or polygons (.geojson/.gpkg).",
    ),
]
MinAreaOpt = Annotated[
    float, typer.Option("--min-area", metavar="M2", help="Ignore polygons under this area (m²), both sides.")
]
ValueOpt = Annotated[
    int | None,
    typer.Option("--truth-value", help="Building value in a truth raster (default: any value > 0)."),
]
SourceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--source",
        metavar="NAME",
        help="Source (dataset) of the matching --pred (repeatable, one per --pred): adds per-source "
        "and macro figures.",
    ),
]
JsonOpt = Annotated[
    str | None,
    typer.Option("--json", metavar="FILE", help="Write the results as JSON to FILE ('-': stdout)."),
]


def print_report(report: dict[str, Any], console: Console, err: Console) -> None:
    """Each scene's warnings on ``err``, then the report's tables on ``console``."""
    from pipeline.evaluation.report import report_tables

    for scene in report["scenes"]:
        for warning in scene.get("warnings", []):
            err.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    for table in report_tables(report):
        console.print(table)


def evaluate_command(
    pred: PredOpt,
    truth: TruthOpt,
    min_area: MinAreaOpt = 8.0,
    truth_value: ValueOpt = None,
    source: SourceOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Pixel, SpaceNet object (IoU >= 0.5, one-to-one) and polygon shape metrics of OUTDIRs."""
    from pipeline.evaluation.evaluate import evaluate

    err = Console(stderr=True)
    with friendly_errors(err):
        if len(pred) != len(truth):
            raise ConfigError(
                f"evaluate: {len(pred)} --pred but {len(truth)} --truth given; "
                "pass one --truth LABELS after each --pred OUTDIR"
            )
        report = evaluate(
            pairs=list(zip(pred, truth, strict=True)), sources=source or None, min_area_m2=min_area,
            truth_value=truth_value,
        )  # fmt: skip
        if json_path is not None and json_path != "-":
            write_json(Path(json_path), report)
    if json_path == "-":
        print_report(report, err, err)
        typer.echo(json.dumps(report, indent=2))
        return
    print_report(report, Console(), err)


def validate_command(
    data: Annotated[Path, typer.Option("--data", help="DATASET.yaml; its split: val scenes are used.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for each scene's outputs and the report.")],
    model: Annotated[Path | None, typer.Option("--model", help="safetensors checkpoint.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Pipeline YAML config.")] = None,
    min_area: MinAreaOpt = 8.0,
    grayscale: Annotated[
        bool, typer.Option("--grayscale", help="Give each scene as one band (luma): panchromatic input.")
    ] = False,
) -> None:
    """Segment every validation scene of DATA with the full pipeline and evaluate it."""
    from pipeline.config import load_config
    from pipeline.evaluation.validation import validate

    err = Console(stderr=True)
    with friendly_errors(err):
        report = validate(
            data=data, out_dir=out, config=load_config(config),
            model_path=str(model) if model else None, min_area_m2=min_area, grayscale=grayscale,
        )  # fmt: skip
        write_json(out / "validation.json", report)
    print_report(report, Console(), err)


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` and ``validate`` commands to ``app``."""
    app.command("evaluate")(evaluate_command)
    app.command("validate")(validate_command)
