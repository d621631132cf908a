"""The ``footprints`` command line (typer): a thin adapter over :mod:`pipeline`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.cli.console import friendly_errors, show_warnings
from pipeline.config import load_config
from pipeline.core.errors import FootprintsError
from pipeline.io.gdal_env import configure_process

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Building footprints from aerial imagery.")
err = Console(stderr=True)
out = Console()


def _version(value: bool) -> None:
    if value:
        from pipeline import __version__

        out.print(f"footprints {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Building footprints from aerial imagery."""
    configure_process()


ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config (see configs/).")]
ModelOpt = Annotated[Path | None, typer.Option("--model", help="safetensors checkpoint.")]
SchedOpt = Annotated[str | None, typer.Option("--scheduler", help="Dask scheduler tcp://HOST:PORT.")]


@app.command()
def segment(
    input: Annotated[str, typer.Argument(help="Input GeoTIFF: a path, file:// or s3:// URL.")],
    out: Annotated[str, typer.Option("--out", help="Output folder: a path, file:// or s3:// URL.")],
    config: ConfigOpt = None,
    model: ModelOpt = None,
    scheduler: SchedOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Recompute even if OUT holds this exact run (drop cached tiles), and replace outputs "
            "of another scene or config in OUT.",
        ),
    ] = False,
    dashboard: Annotated[
        bool,
        typer.Option(
            "--dashboard",
            help="Serve the Dask dashboard (dask.dashboard, default 127.0.0.1:8787) and print it.",
        ),
    ] = False,
) -> None:
    """Segment buildings in INPUT and write rasters, GeoJSON, GeoPackage and run.json to OUT.

    A rerun after a crash reuses the tiles already inferred; a scene already published
    with the same input, model and config, its outputs intact, is not run again. OUT is
    locked while a run writes it, and outputs of another scene or config are only
    replaced with --force.
    """
    from pipeline.run.progress import ProgressReporter
    from pipeline.run.scene import segment_scene

    show_warnings(err)
    with friendly_errors(err):
        cfg = load_config(config, **{"dask.scheduler": scheduler})
        if dashboard and cfg.dask.dashboard is None:
            cfg = cfg.model_copy(update={"dask": cfg.dask.model_copy(update={"dashboard": DASHBOARD})})
        with _cluster(cfg, dashboard), ProgressReporter(err) as progress:
            result = segment_scene(
                input_path=input,
                out_dir=out,
                config=cfg,
                model_path=str(model) if model else None,
                progress=progress,
                force=force,
                on_plan=progress.planned,
            )
    rec = result.record
    if result.skipped:
        err.print(f"{result.out_dir} is up to date (same input, model and config); --force recomputes it")
        return
    err.print(
        f"{rec['counts']['buildings']} buildings from {rec['counts']['tiles_inferred']} tiles "
        f"({rec['counts']['tiles_reused']} reused) -> {result.out_dir} ({sum(rec['seconds'].values()):.1f} s)"
    )
    for warning in rec.get("warnings", []):
        err.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    err.print(f"report: {_report_path(result.out_dir)}", highlight=False, soft_wrap=True)


#: Where ``--dashboard`` serves the Dask dashboard unless the config's ``dask.dashboard`` says.
DASHBOARD = "127.0.0.1:8787"


@contextmanager
def _cluster(cfg: Any, dashboard: bool) -> Iterator[None]:
    """With ``--dashboard``: start the cluster first, and print its dashboard's address."""
    if not dashboard:
        yield
        return
    from pipeline.run.cluster import shared_client

    dc = cfg.dask
    with shared_client(
        scheduler=dc.scheduler, n_workers=dc.n_workers, threads_per_worker=dc.threads_per_worker,
        dashboard=dc.dashboard,
    ) as client:  # fmt: skip
        err.print(f"dashboard: {client.dashboard_link}", highlight=False, soft_wrap=True)
        yield


def _report_path(out_dir: Any) -> str:
    where = str(out_dir).rstrip("/")
    return f"{where}/report.html"


@app.command()
def bench(
    input: Annotated[str, typer.Argument(help="Input GeoTIFF.")],
    config: ConfigOpt = None,
    model: ModelOpt = None,
    max_tiles: Annotated[int, typer.Option(help="Tiles for the model-only pass.")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Model-only, end-to-end and pipeline-only throughput on one cluster: CPU seconds per stage,
    the workers' busy share and peak RSS."""
    from pipeline.run.bench import format_report, run_bench

    show_warnings(err)
    with friendly_errors(err):
        cfg = load_config(config)
        report = run_bench(
            input_path=input,
            config=cfg,
            model_path=str(model) if model else None,
            max_tiles=max_tiles,
        )
    if as_json:
        out.print_json(json.dumps(report))
        return
    out.print(f"footprints bench: {input}", highlight=False, soft_wrap=True)
    out.print(format_report(report), highlight=False, soft_wrap=True, markup=False)


@app.command("model-stac")
def model_stac(
    checkpoint: Annotated[
        Path | None, typer.Argument(help="safetensors checkpoint (default: the shipped one).")
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="JSON to write (default: beside it, NAME.mlm.json).")
    ] = None,
    check: Annotated[bool, typer.Option("--check", help="Only check that the file is up to date.")] = False,
) -> None:
    """Describe a checkpoint as a STAC Item with the Machine Learning Model (MLM) extension."""
    from pipeline.config import default_checkpoint
    from pipeline.describe.stac_model import model_json

    with friendly_errors(err):
        path = checkpoint or default_checkpoint()
        if path is None:
            raise FootprintsError("no checkpoint in models/ and none given; pass CHECKPOINT")
        target = out_file or path.with_name(f"{path.stem}.mlm.json")
        text = model_json(path)
        if check:
            if not target.is_file() or target.read_text() != text:
                raise FootprintsError(
                    f"{target}: out of date with {path}; run `footprints model-stac {path}`"
                )
            err.print(f"{target} is up to date with {path}", highlight=False, soft_wrap=True)
            return
        target.write_text(text)
    err.print(f"wrote {target}", highlight=False, soft_wrap=True)


def _register_subcommands() -> None:
    from pipeline.cli import evaluate, train, vectorize

    evaluate.register(app)
    train.register(app)
    vectorize.register(app)


_register_subcommands()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
