"""Configuration: pydantic models at the config and flow boundary, loaded from YAML.

Library functions take plain typed keyword arguments; only the CLI, the flows and
:mod:`pipeline.run` see these models. This is the earliest layer after :mod:`pipeline.core`
and imports nothing else of the pipeline: a section's adapter to its library's typed
options lives in that later package (the ``vectorize:`` section's is
:func:`pipeline.vectorize.buildings.outline_options`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.core.errors import ConfigError, InputNotFoundError

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_MODEL = "deeplabv3-lite0-buildings.safetensors"
"""The default checkpoint's file name in ``models/`` (the other checkpoints there are options)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TilingConfig(_Section):
    tile_size: int = Field(512, ge=16, description="Tile side in pixels (model input).")
    overlap: int = Field(64, ge=0, description="Overlap between neighbouring tiles in pixels.")
    batch_size: int = Field(1, ge=1, description="Tiles per Dask task (raise it on GPUs).")
    align_to_blocks: bool = Field(True, description="Start tiles on the file's block grid.")
    align_to_model: bool = Field(True, description="Start tiles on the model's output-stride lattice.")

    @field_validator("overlap")
    @classmethod
    def _overlap_fits(cls, v: int, info: Any) -> int:
        tile = info.data.get("tile_size", 512)
        if v > tile // 2:
            raise ValueError(f"overlap {v} exceeds half the tile size ({tile // 2})")
        return v


class InputConfig(_Section):
    bands: list[int] | None = Field(None, description="1-based bands for R, G, B (or one band).")
    percentiles: tuple[float, float] = Field((2.0, 98.0), description="Scaling for non-uint8.")
    nodata: float | None = Field(None, description="Override the file's nodata value.")
    gsd_m: float | None = Field(
        None, gt=0, description="Override the input's GSD in metres when its transform is wrong."
    )


class ModelConfig(_Section):
    checkpoint: str | None = Field(None, description="safetensors checkpoint; default: models/.")
    encoder: str = "efficientnet-lite0"
    output_stride: Literal[8, 16] = 16
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Default: checkpoint's.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    flips: Literal[0, 1, 3] = Field(
        0, description="Test-time flips averaged with each tile: 0, 1 (left-right) or 3 (and up-down)."
    )
    runtime: Literal["auto", "torch", "onnxruntime", "openvino", "openvino-bf16"] = Field(
        "auto",
        description="What runs the network: auto (torch on CUDA, the measured fastest on CPUs), torch, "
        "onnxruntime, openvino or openvino-bf16 (CPU only).",
    )


class DaskConfig(_Section):
    scheduler: str | None = Field(None, description="tcp://HOST:PORT; default: LocalCluster.")
    n_workers: int = Field(1, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    max_batches_in_flight: int = Field(4, ge=1, description="Backpressure window in batches.")
    dashboard: str | None = Field(
        None, description="HOST:PORT of the local cluster's dashboard (e.g. 127.0.0.1:8787); null = none."
    )


class SplitConfig(_Section):
    """Separating touching buildings with the model's boundary or contact class (pipeline.vectorize.split)."""

    enabled: bool = Field(True, description="Split when the model has a boundary or contact class.")
    seed_threshold: float = Field(0.7, ge=0.0, le=1.0)
    boundary_threshold: float = Field(0.5, ge=0.0, le=1.0)
    min_seed_m2: float = Field(1.0, ge=0.0, description="Smallest building core kept as a seed (m²).")
    grow_m: float = Field(4.0, ge=0.0, description="How far seeds grow back over the mask (m).")


class VectorizeConfig(_Section):
    min_area_m2: float = Field(8.0, ge=0.0, description="Drop polygons smaller than this (m²).")
    min_confidence: float = Field(
        0.8, ge=0.0, le=1.0, description="Drop buildings whose mean probability is below this."
    )
    simplify_m: float = Field(0.3, ge=0.0, description="Simplification tolerance in metres.")
    block_size: int = Field(
        1024,
        ge=16,
        description="Rows per block of the block-wise vectorizer (fewer beyond 8192 px of width).",
    )
    fill_holes_m2: float = Field(1.0, ge=0.0, description="Fill holes smaller than this (m²); 0 keeps all.")
    regularize: bool = Field(True, description="Square walls around each building's orientation.")
    angle_tolerance_deg: float = Field(
        15.0, ge=0.0, lt=45.0, description="Edges this close to a wall direction snap to it (degrees)."
    )
    min_edge_m: float = Field(0.5, ge=0.0, description="Regularized edges shorter than this are merged (m).")
    orientation: Literal["envelope", "walls"] = Field(
        "envelope",
        description="Square each building around its minimum rotated rectangle ('envelope') or the "
        "direction fitted to its wall pixels ('walls').",
    )
    group_m: float = Field(
        0.0,
        ge=0.0,
        description="Buildings closer than this (m) share an orientation when it agrees; 0 = off.",
    )
    group_tolerance_deg: float = Field(
        5.0, ge=0.0, lt=45.0, description="Neighbours' orientations this close (degrees) become one."
    )
    rectangle_iou: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="A building becomes its fitted rectangle at this IoU or more; 0 = off.",
    )
    corner_area_ratio: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="A diagonal edge is dropped (its neighbours meet at a corner) when that moves less "
        "than this share of the building's area: a rounded corner of the mask, not a wall; 0 = off.",
    )
    scorer: str = Field(
        "auto",
        description="False-positive scorer (pipeline.vectorize.scoring): 'auto' (CKPT.scorer.json beside the "
        "checkpoint, if any), a path, or 'none'.",
    )


class RestartConfig(_Section):
    """Tile-level restart (see pipeline.run.restart): state beside OUTDIR, finished tiles reused."""

    enabled: bool = Field(True, description="Keep a manifest and reuse finished tiles on a rerun.")
    keep_tiles: bool = Field(False, description="Keep the tile cache after the scene is published.")


class OutputsConfig(_Section):
    """The outputs that describe a scene (see DESIGN.md, "Outputs and metadata")."""

    quicklook: bool = Field(True, description="Write quicklook.png and the pictures of report.html.")
    quicklook_px: int = Field(2048, ge=64, le=2048, description="Long side of quicklook.png (pixels).")
    crop_px: int = Field(768, ge=64, le=2048, description="Side of the report's full-resolution crop.")


class PipelineConfig(_Section):
    tiling: TilingConfig = TilingConfig()  # type: ignore[call-arg]
    input: InputConfig = InputConfig()  # type: ignore[call-arg]
    model: ModelConfig = ModelConfig()  # type: ignore[call-arg]
    dask: DaskConfig = DaskConfig()  # type: ignore[call-arg]
    split: SplitConfig = SplitConfig()  # type: ignore[call-arg]
    vectorize: VectorizeConfig = VectorizeConfig()  # type: ignore[call-arg]
    restart: RestartConfig = RestartConfig()  # type: ignore[call-arg]
    outputs: OutputsConfig = OutputsConfig()  # type: ignore[call-arg]


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> PipelineConfig:
    """Load a YAML config (or the defaults) and apply dotted overrides like ``dask.scheduler``."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise InputNotFoundError(f"{p}: config file not found; pass an existing YAML file")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc}); fix the syntax") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections; see configs/")
        data = loaded
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})[key] = value
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        where = str(path) if path is not None else "config"
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {' '.join(e['msg'].split())}" for e in exc.errors()
        )
        count = len(exc.errors())
        label = f"{count} problems: " if count > 1 else ""
        raise ConfigError(f"{where}: {label}{problems}; see configs/default.yaml for valid values") from exc


def default_checkpoint() -> Path | None:
    """The default checkpoint, :data:`DEFAULT_MODEL` in ``models/``, if it is there."""
    path = MODELS_DIR / DEFAULT_MODEL
    return path if path.is_file() else None
