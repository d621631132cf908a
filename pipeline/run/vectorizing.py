"""The vectorize and write-vectors stages: buildings from the stitched rasters, and their files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.io.vectors import buildings_frame, write_buildings
from pipeline.run.cluster import workers_see
from pipeline.run.context import SceneContext, Stitched, Vectorized, Written
from pipeline.run.model_choice import ModelChoice
from pipeline.vectorize.buildings import Buildings, outline_options, vectorize_scene
from pipeline.vectorize.scoring import ScoreContext


def vectorize_rasters(
    *,
    labels: Path,
    probability: Path,
    scene: str,
    model: ModelChoice,
    config: PipelineConfig,
    client: Any | None = None,
) -> Buildings:
    """Block-wise polygons of the regions of ``labels`` (the split regions, or the mask), with
    their confidence from ``probability``.

    With a Dask ``client`` whose workers see both rasters (:func:`~pipeline.run.cluster.workers_see`),
    the bands are polygonized on the workers and only their seams merged here (the same
    buildings: see :mod:`pipeline.vectorize.polygonize`); else all of it runs in this process.
    """
    if client is not None and not workers_see(client, [str(labels), str(probability)]):
        client = None
    return vectorize_scene(
        values_path=str(labels),
        probability_path=str(probability),
        scene=scene,
        options=outline_options(config.vectorize),
        block_size=config.vectorize.block_size,
        scoring=None if model.scorer is None else ScoreContext(str(probability), model.scorer),
        client=client,
        max_in_flight=1 if client is None else bands_in_flight(client),
    )


def bands_in_flight(client: Any) -> int:
    """Bands submitted ahead of the merge: two per worker thread, so none idles while it waits."""
    return 2 * max(1, int(sum(client.nthreads().values())))


def vectorize(ctx: SceneContext, stitched: Stitched) -> Vectorized:
    """The vectorize stage: :func:`vectorize_rasters` of what infer-and-stitch made, on the
    job's cluster (:func:`pipeline.run.job.run_job` keeps it open for every stage)."""
    buildings = vectorize_rasters(
        labels=stitched.labels,
        probability=stitched.probability,
        scene=ctx.plan.scene,
        model=ctx.model,
        config=ctx.config,
        client=ctx.client,
    )
    if ctx.state is not None:
        ctx.state.record_stage("vectorize")
    return Vectorized(stitched=stitched, buildings=buildings)


def write_vectors(
    *, buildings: Buildings, scene: str, model: ModelChoice, workdir: Path, timestamp: str | None = None
) -> tuple[Path, ...]:
    """``buildings.gpkg`` and ``buildings.parquet`` (scene CRS), RFC 7946 ``buildings.geojson``.

    ``timestamp`` is the date stamped into the GeoPackage (the input's last-modified time,
    so that outputs depend on the inputs only); None stamps the current time.
    """
    frame = buildings_frame(buildings, scene=scene, model_id=model.id)
    return write_buildings(frame, workdir, timestamp=timestamp)


def write_vectors_stage(ctx: SceneContext, vectorized: Vectorized) -> Written:
    """The write-vectors stage: :func:`write_vectors` into the staging folder."""
    paths = write_vectors(
        buildings=vectorized.buildings,
        scene=ctx.plan.scene,
        model=ctx.model,
        workdir=ctx.workdir,
        timestamp=ctx.target.input_modified,
    )
    return Written(vectorized=vectorized, vectors=paths)
