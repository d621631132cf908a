"""The infer-and-stitch stage: tiles to the workers, their predictions blended into COGs.

The stitcher streams finished row bands to :class:`~pipeline.io.write.CogSink` (``probability.tif``
and ``mask.tif``) and, when touching buildings are split, to
:class:`~pipeline.vectorize.split.SeedSink`, which labels building cores on the fly and grows
them into the region raster once the mask is complete. The stage returns those rasters as a
:class:`~pipeline.run.context.Stitched` value.
"""

from __future__ import annotations

import math
from pathlib import Path

from pipeline.core.errors import NoDataError
from pipeline.io.read import RasterInfo
from pipeline.io.write import CogSink
from pipeline.run.context import SceneContext, Stitched, StitchStats
from pipeline.run.dispatch import run_batches
from pipeline.run.feeder import BatchFeeder
from pipeline.run.model_choice import probability_channels, probability_classes
from pipeline.tiling.stitch import RowSink, Stitcher, TeeSink
from pipeline.vectorize.split import SeedSink


def _sinks(ctx: SceneContext) -> tuple[CogSink, SeedSink | None]:
    """The COG sink, plus the seed sink when touching buildings are to be split."""
    info, workdir = ctx.plan.info, ctx.workdir
    channels = probability_channels(ctx.model, ctx.config)
    sink = CogSink(
        workdir=workdir,
        grid=info.grid,
        channels=channels,
        classes=probability_classes(ctx.model),
    )
    if channels == 1:
        return sink, None
    sc = ctx.config.split
    seeds = SeedSink(
        workdir=workdir,
        grid=info.grid,
        seed_threshold=sc.seed_threshold,
        boundary_threshold=sc.boundary_threshold,
    )
    return sink, seeds


def infer_and_stitch(ctx: SceneContext, previous: None = None) -> Stitched:
    """Dispatch tiles to Dask, blend the predictions and stream them to COGs.

    With a boundary class (and ``split.enabled``), building cores are labelled on the
    fly and grown into the region raster once the mask is complete. With a restart
    ``state``, workers reuse the tiles a previous attempt finished and cache new ones.
    """
    grid, state = ctx.plan.grid, ctx.state
    sink, seeds = _sinks(ctx)
    sinks: tuple[RowSink, ...] = (sink,) if seeds is None else (sink, seeds)
    stitcher = Stitcher(grid=grid, sink=TeeSink(sinks), threshold=ctx.model.threshold, channels=sink.channels)
    feed = BatchFeeder(stitcher=stitcher, total=len(grid), state=state, progress=ctx.progress)
    if state is not None:
        state.start(tiles_total=len(grid))
    try:
        n_batches = _dispatch(ctx, feed)
        if feed.counts["skipped"] == len(grid):
            raise _no_data(ctx.plan.info)
        probability, mask = sink.finish()
        regions = None if seeds is None else _grow_regions(ctx, seeds, mask=mask)
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
    return Stitched(stats=_stats(feed, n_batches), probability=probability, mask=mask, regions=regions)


def _dispatch(ctx: SceneContext, feed: BatchFeeder) -> int:
    """Run every tile's batch on the scene's cluster, feeding ``feed``: the batch count.

    The cluster is the job's (:func:`pipeline.run.job.run_job` opens it for every stage).
    """
    state, tc = ctx.state, ctx.config.tiling
    if ctx.client is None:
        raise RuntimeError("infer-and-stitch ran without the job's Dask client; run it through run_job")
    return run_batches(
        ctx.client,
        info=ctx.plan.info,
        grid=ctx.plan.grid,
        source=ctx.model.source,
        batch_size=tc.batch_size,
        max_in_flight=ctx.config.dask.max_batches_in_flight,
        on_batch=feed,
        scale=ctx.plan.scale,
        cache=state.cache if state is not None else None,
        reuse=state.finished_tiles if state is not None else frozenset(),
    )


def _grow_regions(ctx: SceneContext, seeds: SeedSink, *, mask: Path) -> Path:
    """The split regions: ``seeds`` resolved and grown inside ``mask`` (sizes in metres, from the config)."""
    sc, gsd = ctx.config.split, ctx.plan.gsd_m
    return seeds.finish(
        mask_path=mask,
        min_seed_px=max(1, math.ceil(sc.min_seed_m2 / gsd**2)),
        grow_px=math.ceil(sc.grow_m / gsd),
    )


def _stats(feed: BatchFeeder, n_batches: int) -> StitchStats:
    n = feed.counts
    return StitchStats(
        tiles=feed.total,
        tiles_inferred=n["inferred"],
        tiles_skipped=n["skipped"],
        batches=n_batches,
        peak_rows=feed.stitcher.peak_rows,
        tiles_reused=n["reused"],
        devices=tuple(sorted(feed.devices)),
        runtimes=tuple(sorted(feed.runtimes)),
        worker_times={k: round(v, 3) for k, v in feed.times.items()},
    )


def _no_data(info: RasterInfo) -> NoDataError:
    declared = "its mask" if info.nodata is None else f"nodata value {info.nodata:g}"
    return NoDataError(
        f"{info.path}: every pixel is nodata ({declared}, or not finite), so there are no buildings to "
        "find; check the scene, or set input.nodata in the config if that value is real data"
    )
