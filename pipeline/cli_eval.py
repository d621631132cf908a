"""``footprints evaluate``: score segment outputs against ground truth (see :mod:`pipeline.evaluate`).

The lead CLI calls :func:`register` on its typer app. The command prints a table (per
scene and overall) and writes the full results as JSON: atomically to ``--json FILE``,
or to stdout with ``--json -`` (the table then goes to stderr so stdout stays JSON).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipeline.console import friendly_errors
from pipeline.errors import ConfigError
from pipeline.storage import write_json

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
JsonOpt = Annotated[
    str | None,
    typer.Option("--json", metavar="FILE", help="Write the results as JSON to FILE ('-': stdout)."),
]


def _row(name: str, result: dict[str, Any]) -> list[str]:
    px, obj = result["pixel"], result["object"]
    return [
        name,
        f"{px['precision']:.3f}",
        f"{px['recall']:.3f}",
        f"{px['iou']:.3f}",
        f"{obj['precision']:.3f}",
        f"{obj['recall']:.3f}",
        f"{obj['f1']:.3f}",
        str(obj["tp"]),
        str(obj["fp"]),
        str(obj["fn"]),
    ]


def results_table(report: dict[str, Any]) -> Table:
    """Per-scene and overall metrics: pixel P/R/IoU, object P/R/F1 and object counts."""
    iou, area = report["params"]["iou_threshold"], report["params"]["min_area_m2"]
    table = Table(title=f"footprints evaluate (object IoU >= {iou}, min area {area} m²)")
    table.add_column("scene", overflow="fold", max_width=28)
    for header in ("px P", "px R", "px IoU", "obj P", "obj R", "obj F1", "TP", "FP", "FN"):
        table.add_column(header, justify="right")
    for scene in report["scenes"]:
        table.add_row(*_row(str(scene["scene"]), scene))
    table.add_section()
    table.add_row(*_row("overall", report["overall"]), style="bold")
    return table


def evaluate_command(
    pred: PredOpt,
    truth: TruthOpt,
    min_area: MinAreaOpt = 8.0,
    truth_value: ValueOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Pixel (precision, recall, IoU) and SpaceNet object metrics (IoU >= 0.5, one-to-one) of OUTDIRs."""
    from pipeline.evaluate import evaluate

    err = Console(stderr=True)
    with friendly_errors(err):
        if len(pred) != len(truth):
            raise ConfigError(
                f"evaluate: {len(pred)} --pred but {len(truth)} --truth given; "
                "pass one --truth LABELS after each --pred OUTDIR"
            )
        report = evaluate(
            pairs=list(zip(pred, truth, strict=True)), min_area_m2=min_area, truth_value=truth_value
        )
        if json_path is not None and json_path != "-":
            write_json(Path(json_path), report)
    if json_path == "-":
        err.print(results_table(report))
        typer.echo(json.dumps(report, indent=2))
        return
    Console().print(results_table(report))


def validate_command(
    data: Annotated[Path, typer.Option("--data", help="DATASET.yaml; its split: val scenes are used.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for each scene's outputs and the report.")],
    model: Annotated[Path | None, typer.Option("--model", help="safetensors checkpoint.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Pipeline YAML config.")] = None,
    min_area: MinAreaOpt = 8.0,
) -> None:
    """Segment every validation scene of DATA with the full pipeline and evaluate it."""
    from pipeline.config import load_config
    from pipeline.validate import validate

    err = Console(stderr=True)
    with friendly_errors(err):
        report = validate(
            data=data, out_dir=out, config=load_config(config),
            model_path=str(model) if model else None, min_area_m2=min_area,
        )  # fmt: skip
        write_json(out / "validation.json", report)
    Console().print(results_table(report))


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` and ``validate`` commands to ``app``."""
    app.command("evaluate")(evaluate_command)
    app.command("validate")(validate_command)
