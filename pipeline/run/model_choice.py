"""Which model a scene runs with, and what the run needs to know of it, typed.

:func:`choose_model` picks ``--model``, else ``model.checkpoint``, else the shipped
checkpoint, else an untrained network; :class:`ModelChoice` carries the source the
workers load, the fields the job reads (GSD, output stride, threshold, classes) and the
description that ``run.json`` records under ``model``, as the source made it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import PipelineConfig, default_checkpoint
from pipeline.model.infer import CheckpointSource, ModelSource, UntrainedSource
from pipeline.vectorize.scoring import Scorer, resolve_scorer


@dataclass(frozen=True)
class ModelChoice:
    """The model of a run: its source, its typed fields, and ``description`` (run.json's ``model``)."""

    source: ModelSource
    id: str
    threshold: float
    classes: tuple[str, ...] = ("building",)
    gsd_m: float | None = None  # the GSD it was trained at; None: used at the input's GSD
    output_stride: int | None = None
    sha256: str | None = None
    scorer: Scorer | None = None
    description: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls, source: ModelSource, description: Mapping[str, Any], scorer: Scorer | None = None
    ) -> ModelChoice:
        """The choice for ``source`` as ``description`` (what ``source.describe()`` returns, with
        the config's threshold and the scorer) says."""
        return cls(
            source=source,
            id=str(description.get("id", "")),
            threshold=float(description.get("threshold", 0.5)),
            classes=tuple(description.get("classes", ["building"])),
            gsd_m=description.get("gsd_m"),
            output_stride=description.get("output_stride"),
            sha256=description.get("sha256"),
            scorer=scorer,
            description=dict(description),
        )

    @property
    def record(self) -> dict[str, Any]:
        """What ``run.json`` records under ``model`` (a copy)."""
        return dict(self.description)


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
    return ModelChoice.of(src, desc, scorer)


def probability_classes(model: ModelChoice) -> tuple[str, str]:
    """The classes of probability.tif's bands: building, then the class that splits buildings
    (``separator`` when the model has both boundary and contact: the larger of the two)."""
    others = [c for c in model.classes if c != "building"]
    return ("building", others[0] if len(others) == 1 else "separator")


def splits(model: ModelChoice, config: PipelineConfig) -> bool:
    """Whether touching buildings are separated: the model has a boundary or contact class and it is on."""
    return config.split.enabled and bool({"boundary", "contact"} & set(model.classes))


def probability_channels(model: ModelChoice, config: PipelineConfig) -> int:
    """How many bands the stitcher blends: 2 when buildings are split, else 1."""
    return 2 if splits(model, config) else 1
