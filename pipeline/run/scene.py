"""The main job for one scene: plan → infer and stitch → vectorize → write.

Each stage is a small function with typed keyword arguments; :func:`segment_scene`
runs them in order for the CLI, and ``flows/segment_scene.py`` wraps the same
functions as Prefect tasks. Everything is written into a hidden staging folder in
OUTDIR and renamed into place at the end, so OUTDIR only ever holds whole files.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, default_checkpoint
from pipeline.core.errors import Interrupted, NoDataError
from pipeline.describe.outputs import describe_scene
from pipeline.io.preflight import check_free_space, estimate_bytes, write_errors
from pipeline.io.read import RasterInfo, open_raster
from pipeline.io.storage import gdal_path, write_json
from pipeline.io.vectors import buildings_frame, write_buildings
from pipeline.io.write import CogSink
from pipeline.model.infer import SCALE_TOLERANCE, CheckpointSource, ModelSource, UntrainedSource
from pipeline.run.dispatch import TASK_TIMES, BatchResult, active_client, connect, run_batches
from pipeline.run.outdir import publish_outputs
from pipeline.run.record import run_record, utc_now
from pipeline.run.restart import SceneState
from pipeline.run.target import SceneTarget, display, finished_record, open_state, scene_id
from pipeline.tiling.grid import TileGrid, model_grid
from pipeline.tiling.stitch import RowSink, Stitcher, TeeSink
from pipeline.vectorize.buildings import Buildings, outline_options, vectorize_scene
from pipeline.vectorize.scoring import ScoreContext, Scorer, resolve_scorer
from pipeline.vectorize.split import SeedSink

__all__ = [
    "ModelChoice", "ScenePlan", "SceneResult", "SceneTarget", "StageTimer", "StitchStats", "check_room",
    "choose_model",
    "finished_record", "infer_and_stitch", "open_state", "plan_for", "plan_scene", "publish_scene",
    "segment_scene", "vectorize_stage", "write_vectors_stage",
]  # fmt: skip

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ScenePlan:
    """An opened input, its GSD, and the tile grid over it (in input pixels).

    ``scale`` = input GSD / model GSD: a tile of ``grid.tile_size`` input pixels is
    resampled to about ``tile_size * scale`` model pixels, the configured tile size.
    """

    info: RasterInfo
    grid: TileGrid
    scene: str
    gsd_m: float = 1.0
    scale: float = 1.0


@dataclass(frozen=True)
class ModelChoice:
    source: ModelSource
    description: dict[str, Any]
    scorer: Scorer | None = None


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


def plan_scene(
    *,
    input_path: str,
    config: PipelineConfig,
    model_gsd_m: float | None = None,
    model_stride: int | None = None,
) -> ScenePlan:
    """Open and validate the input, and lay the tile grid over it.

    When the model was trained at ``model_gsd_m``, tiles are sized in input pixels so
    that, resampled to the model's GSD, they are ``tiling.tile_size`` pixels across.
    With the model's output stride, tiles start on its lattice (see
    :func:`pipeline.tiling.grid.lattice_step`), so that every tile computes on the same
    lattice as a prediction of the whole scene would.
    """
    ic = config.input
    info = open_raster(
        gdal_path(input_path),
        bands=tuple(ic.bands) if ic.bands else None,
        percentiles=ic.percentiles,
        nodata=ic.nodata,
    )
    gsd = ic.gsd_m or info.grid.gsd_m()
    scale = 1.0 if model_gsd_m is None else gsd / model_gsd_m
    if abs(scale - 1.0) <= SCALE_TOLERANCE:
        scale = 1.0
    tc = config.tiling
    grid = model_grid(
        height=info.grid.height,
        width=info.grid.width,
        tile_size=tc.tile_size,
        overlap=tc.overlap,
        scale=scale,
        model_stride=model_stride if tc.align_to_model else None,
        block_shape=info.block_shape if tc.align_to_blocks else None,
    )
    return ScenePlan(info=info, grid=grid, scene=scene_id(input_path), gsd_m=gsd, scale=scale)


def plan_for(model: ModelChoice, *, input_path: str, config: PipelineConfig) -> ScenePlan:
    """:func:`plan_scene` for ``model``: its training GSD and its output stride."""
    desc = model.description
    return plan_scene(
        input_path=input_path,
        config=config,
        model_gsd_m=desc.get("gsd_m"),
        model_stride=desc.get("output_stride"),
    )


def choose_model(*, model_path: str | None, config: PipelineConfig) -> ModelChoice:
    """``--model``, else ``model.checkpoint``, else the shipped checkpoint, else untrained."""
    mc = config.model
    path = model_path or mc.checkpoint or default_checkpoint()
    threads = max(1, (os.cpu_count() or 1) // config.dask.n_workers)
    if path is not None:
        src: CheckpointSource | UntrainedSource = CheckpointSource(
            path=str(path), device=mc.device, threads=threads, flips=mc.flips, runtime=mc.runtime
        )
    else:
        src = UntrainedSource(
            encoder=mc.encoder,
            output_stride=mc.output_stride,
            device=mc.device,
            threads=threads,
            flips=mc.flips,
        )
    desc = src.describe()
    if mc.threshold is not None:
        desc["threshold"] = mc.threshold
    scorer = resolve_scorer(config.vectorize.scorer, checkpoint=desc.get("path"), sha256=desc.get("sha256"))
    if scorer is not None:
        desc["scorer"] = {"threshold": scorer.threshold, "notes": scorer.notes}
    return ModelChoice(source=src, description=desc, scorer=scorer)


def _sinks(
    *, plan: ScenePlan, model: ModelChoice, config: PipelineConfig, workdir: Path
) -> tuple[CogSink, SeedSink | None]:
    """The COG sink, plus the seed sink when touching buildings are to be split."""
    grid = plan.info.grid
    channels = 2 if splits(model, config) else 1
    sink = CogSink(workdir=workdir, grid=grid, channels=channels, classes=probability_classes(model))
    if channels == 1:
        return sink, None
    sc = config.split
    seeds = SeedSink(
        workdir=workdir, grid=grid, seed_threshold=sc.seed_threshold, boundary_threshold=sc.boundary_threshold
    )
    return sink, seeds


@dataclass
class _BatchFeeder:
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


def infer_and_stitch(
    *,
    plan: ScenePlan,
    model: ModelChoice,
    config: PipelineConfig,
    workdir: Path,
    progress: ProgressFn | None = None,
    client: Any | None = None,
    state: SceneState | None = None,
) -> StitchStats:
    """Dispatch tiles to Dask, blend the predictions and stream them to COGs.

    With a boundary class (and ``split.enabled``), building cores are labelled on the
    fly and grown into ``regions.scratch.tif`` once the mask is complete. With a
    ``state``, workers reuse the tiles a previous attempt finished and cache new ones.
    """
    grid = plan.grid
    sink, seeds = _sinks(plan=plan, model=model, config=config, workdir=workdir)
    sinks: tuple[RowSink, ...] = (sink,) if seeds is None else (sink, seeds)
    stitcher = Stitcher(
        grid=grid, sink=TeeSink(sinks), threshold=float(model.description["threshold"]),
        channels=sink.channels,
    )  # fmt: skip
    feed = _BatchFeeder(stitcher=stitcher, total=len(grid), state=state, progress=progress)
    if state is not None:
        state.start(tiles_total=len(grid))
    try:
        with _client(client, config) as c:
            n_batches = run_batches(
                c, info=plan.info, grid=grid, source=model.source, batch_size=config.tiling.batch_size,
                max_in_flight=config.dask.max_batches_in_flight, on_batch=feed, scale=plan.scale,
                cache=state.cache if state is not None else None,
                reuse=state.finished_tiles if state is not None else frozenset(),
            )  # fmt: skip
        if feed.counts["skipped"] == len(grid):
            raise _no_data(plan.info)
        sink.finish()
        if seeds is not None:
            sc = config.split
            seeds.finish(
                mask_path=workdir / "mask.tif",
                min_seed_px=max(1, math.ceil(sc.min_seed_m2 / plan.gsd_m**2)),
                grow_px=math.ceil(sc.grow_m / plan.gsd_m),
            )
    except KeyboardInterrupt:
        if state is not None:
            state.flush()  # the tiles finished so far, for the rerun
        raise
    finally:
        sink.close()
        if seeds is not None:
            seeds.close()
    if state is not None:
        state.record_stage("infer_stitch")
    n = feed.counts
    return StitchStats(
        len(grid), n["inferred"], n["skipped"], n_batches, stitcher.peak_rows, n["reused"],
        tuple(sorted(feed.devices)), tuple(sorted(feed.runtimes)),
        {k: round(v, 3) for k, v in feed.times.items()},
    )  # fmt: skip


def _no_data(info: RasterInfo) -> NoDataError:
    declared = "its mask" if info.nodata is None else f"nodata value {info.nodata:g}"
    return NoDataError(
        f"{info.path}: every pixel is nodata ({declared}, or not finite), so there are no buildings to "
        "find; check the scene, or set input.nodata in the config if that value is real data"
    )


def probability_classes(model: ModelChoice) -> tuple[str, str]:
    """The classes of probability.tif's bands: building, then the class that splits buildings
    (``separator`` when the model has both boundary and contact: the larger of the two)."""
    others = [c for c in model.description.get("classes", []) if c != "building"]
    return ("building", others[0] if len(others) == 1 else "separator")


def splits(model: ModelChoice, config: PipelineConfig) -> bool:
    """Whether touching buildings are separated: the model has a boundary or contact class and it is on."""
    classes = model.description.get("classes", [])
    return config.split.enabled and bool({"boundary", "contact"} & set(classes))


@contextmanager
def _client(client: Any | None, config: PipelineConfig) -> Iterator[Any]:
    client = client or active_client()
    if client is not None:
        yield client
        return
    dc = config.dask
    with connect(
        scheduler=dc.scheduler,
        n_workers=dc.n_workers,
        threads_per_worker=dc.threads_per_worker,
        dashboard=dc.dashboard,
    ) as c:
        yield c


def vectorize_stage(
    *,
    plan: ScenePlan,
    model: ModelChoice,
    config: PipelineConfig,
    workdir: Path,
    state: SceneState | None = None,
) -> Buildings:
    """Block-wise polygons of the split regions (or of the mask when there is no split)."""
    regions, prob = workdir / "regions.scratch.tif", workdir / "probability.tif"
    buildings = vectorize_scene(
        values_path=str(regions if regions.exists() else workdir / "mask.tif"),
        probability_path=str(prob),
        scene=plan.scene,
        options=outline_options(config.vectorize),
        block_size=config.vectorize.block_size,
        scoring=None if model.scorer is None else ScoreContext(str(prob), model.scorer),
    )
    if state is not None:
        state.record_stage("vectorize")
    return buildings


def write_vectors_stage(
    *, buildings: Buildings, plan: ScenePlan, model: ModelChoice, workdir: Path, timestamp: str | None = None
) -> None:
    """``buildings.gpkg`` and ``buildings.parquet`` (scene CRS), RFC 7946 ``buildings.geojson``.

    ``timestamp`` is the date stamped into the GeoPackage (the input's last-modified time,
    so that outputs depend on the inputs only); None stamps the current time.
    """
    frame = buildings_frame(buildings, scene=plan.scene, model_id=str(model.description["id"]))
    write_buildings(frame, workdir, timestamp=timestamp)


def publish_scene(
    *, plan: ScenePlan, model: ModelChoice, config: PipelineConfig, stats: StitchStats,
    buildings: Buildings, seconds: dict[str, float], workdir: Path, target: SceneTarget,
    state: SceneState | None = None, started: str | None = None, cpu_seconds: dict[str, float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Describe the scene (quicklook, report, STAC item), write ``run.json`` and move the staged
    outputs to the target, ``run.json`` last.

    Locally each file is renamed into place; on S3 each is one upload, visible only
    once complete. ``run.json`` records the SHA-256 of every other output; the restart
    manifest, marked complete last, records all of them (see :func:`finished_record`).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    channels = 2 if splits(model, config) else 1
    record = run_record(
        plan=plan, model=model, config=config, stats=stats, n_buildings=len(buildings), seconds=dict(seconds),
        target=target, run_key=state.key if state is not None else None, started=started,
        probability_bands=list(probability_classes(model)[:channels]), cpu_seconds=dict(cpu_seconds or {}),
    )  # fmt: skip
    record = describe_scene(
        record=record, buildings=buildings, info=plan.info, config=config, workdir=workdir
    )
    record["seconds"]["describe"] = round(time.perf_counter() - t0, 3)
    record["cpu_seconds"]["client"]["describe"] = round(time.process_time() - c0, 3)
    write_json(workdir / "run.json", record)
    outputs, checksums = publish_outputs(workdir, target.out, record["checksums"])
    if state is not None:
        state.finish(outputs=outputs, checksums=checksums, keep_tiles=config.restart.keep_tiles)
    return record


@dataclass(frozen=True)
class SceneResult:
    out_dir: Path | str
    record: dict[str, Any]
    skipped: bool = False


def segment_scene(
    *,
    input_path: str,
    out_dir: str | os.PathLike[str],
    config: PipelineConfig,
    model_path: str | None = None,
    progress: ProgressFn | None = None,
    client: Any | None = None,
    force: bool = False,
    on_plan: Callable[[ScenePlan], None] | None = None,
    model: ModelChoice | None = None,
) -> SceneResult:
    """Run the whole job for one scene and publish its outputs into ``out_dir``.

    ``input_path`` and ``out_dir`` may be local paths, ``file://`` or ``s3://`` URLs.
    A rerun resumes from the tiles a crashed attempt finished, and a scene already
    published under the same input, model and config is not run again (unless ``force``).
    ``on_plan`` sees the plan before any tile is dispatched; ``model`` replaces the one
    :func:`choose_model` would choose (``footprints bench``'s stand-in). Ctrl-C raises
    :class:`~pipeline.core.errors.Interrupted` with the number of finished tiles kept.
    """
    timer, started = StageTimer(), utc_now()
    with timer.stage("plan"):
        model = model or choose_model(model_path=model_path, config=config)
        target = SceneTarget.resolve(input_url=input_path, out_url=out_dir)
    with target.claim(config, force=force):
        with timer.stage("plan"):
            state = open_state(target=target, model=model, config=config, force=force)
            if (done := finished_record(state=state, target=target)) is not None:
                return SceneResult(out_dir=display(target.out), record=done, skipped=True)
            plan = plan_for(model, input_path=input_path, config=config)
        if on_plan is not None:
            on_plan(plan)
        try:
            record = _run_planned(
                plan=plan, target=target, model=model, config=config, timer=timer, progress=progress,
                client=client, state=state, started=started,
            )  # fmt: skip
        except KeyboardInterrupt:
            raise Interrupted(state.tiles_done if state is not None else 0) from None
        except BaseException as exc:
            if state is not None:
                state.discard_if_unused(drop=isinstance(exc, NoDataError))
            raise
    return SceneResult(out_dir=display(target.out), record=record)


def check_room(
    *,
    plan: ScenePlan,
    target: SceneTarget,
    model: ModelChoice,
    config: PipelineConfig,
    state: SceneState | None,
) -> int:
    """Refuse to start when the disk the run writes to lacks the space it needs; that estimate."""
    needed = estimate_bytes(
        height=plan.info.grid.height, width=plan.info.grid.width, channels=2 if splits(model, config) else 1,
        cached=state is not None and target.out.is_local,
    )  # fmt: skip
    check_free_space(out=target.out.url, local=target.out.is_local, needed=needed)
    return needed


def _run_planned(
    *, plan: ScenePlan, target: SceneTarget, model: ModelChoice, config: PipelineConfig, timer: StageTimer,
    progress: ProgressFn | None, client: Any | None, state: SceneState | None, started: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Check the free space, then infer, vectorize, describe and publish in the staging folder."""
    out, local = target.out.url, target.out.is_local
    needed = check_room(plan=plan, target=target, model=model, config=config, state=state)
    with write_errors(out=out, local=local, needed=needed), target.staging() as work:
        with timer.stage("infer_stitch"):
            stats = infer_and_stitch(
                plan=plan, model=model, config=config, workdir=work, progress=progress, client=client,
                state=state,
            )  # fmt: skip
        with timer.stage("vectorize"):
            buildings = vectorize_stage(plan=plan, model=model, config=config, workdir=work, state=state)
        with timer.stage("write_vectors"):
            write_vectors_stage(
                buildings=buildings, plan=plan, model=model, workdir=work, timestamp=target.input_modified
            )
        return publish_scene(
            plan=plan, model=model, config=config, stats=stats, buildings=buildings,
            seconds=timer.seconds, workdir=work, target=target, state=state, started=started,
            cpu_seconds=timer.cpu,
        )  # fmt: skip
