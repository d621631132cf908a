"""The shipped model as a STAC Item with the Machine Learning Model (MLM) extension, v1.4.0.

Everything is read from the checkpoint's header (never its weights): architecture and
encoder, input bands and their normalization (as per-band z-scores of the 0-255 values:
``(x / 255 - mean) / std`` is ``(x - 255 mean) / (255 std)``), the training GSD (STAC's
``gsd``), the output classes, the decision threshold and the validation metrics, and the
checkpoint itself as the ``mlm:model`` asset with its SHA-256 (file extension). So
``footprints model-stac CKPT`` writes the same JSON for the same checkpoint: the committed
``models/<name>.mlm.json`` is checked against the checkpoint in the tests.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.classification import Classification
from pystac.extensions.file import FileExtension
from pystac.extensions.mlm import (
    AssetGeneralMLMExtension,
    InputStructure,
    MLMExtension,
    ModelInput,
    ModelOutput,
    ResultStructure,
    TaskType,
    ValueScaling,
    ValueScalingType,
)
from pystac.extensions.raster import DataType, RasterBand, RasterExtension

from pipeline.core.digest import file_sha256
from pipeline.describe.stac import multihash
from pipeline.model.header import read_checkpoint_metadata, tensor_shapes

#: What each class of the model marks.
CLASS_DESCRIPTIONS = {
    "building": "building (roof) pixels",
    "boundary": "the inner border of each building, used to split touching buildings",
    "contact": "the strip where two buildings meet, used to split touching buildings",
}
#: Batch-norm buffers are state, not parameters.
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def total_parameters(path: Path) -> int:
    """The checkpoint's parameter count, from its tensor shapes (batch-norm buffers excluded)."""
    shapes = tensor_shapes(path)
    return sum(math.prod(s) for name, s in shapes.items() if not name.endswith(_BUFFERS))


def _torch_version(meta: dict[str, Any]) -> str | None:
    """The torch version the checkpoint was trained with, when its header says."""
    found = re.search(r"torch (\d+\.\d+\.\d+)", str(meta.get("training_data", "")))
    return found.group(1) if found else None


def _model_input(meta: dict[str, Any]) -> ModelInput:
    bands = [str(b) for b in meta.get("bands", ["red", "green", "blue"])]
    norm = meta.get("normalization") or {}
    scaling = [
        ValueScaling.create(ValueScalingType.Z_SCORE, mean=round(255 * m, 6), stddev=round(255 * s, 6))
        for m, s in zip(
            norm.get("mean", [0.5] * len(bands)), norm.get("std", [0.5] * len(bands)), strict=True
        )
    ]
    model_input = ModelInput.create(
        name="RGB imagery",
        bands=bands,
        input=InputStructure.create(
            shape=[-1, len(bands), -1, -1],
            dim_order=["batch", "bands", "height", "width"],
            data_type=DataType.FLOAT32,
        ),
        description=f"uint8 bands, resampled to the training GSD ({meta.get('gsd_m')} m) tile by tile",
    )
    # MLM 1.4 wants one scaling object per band; pystac's setter takes only one, so set the list
    model_input.properties["value_scaling"] = [v.to_dict() for v in scaling]
    return model_input


def _model_output(meta: dict[str, Any]) -> ModelOutput:
    classes = [str(c) for c in meta.get("classes", ["building"])]
    return ModelOutput.create(
        name="class probabilities",
        tasks=[TaskType.SEMANTIC_SEGMENTATION],
        result=ResultStructure.create(
            shape=[-1, len(classes), -1, -1],
            dim_order=["batch", "channel", "height", "width"],
            data_type=DataType.FLOAT32,
        ),
        classes=[
            Classification.create(value=i, name=c, description=CLASS_DESCRIPTIONS.get(c, c))
            for i, c in enumerate(classes)
        ],
        description=f"logits; a sigmoid per class gives its probability; building >= {meta.get('threshold')} "
        "is a building pixel",
    )


def _add_model_asset(item: pystac.Item, checkpoint: Path, meta: dict[str, Any]) -> None:
    """The checkpoint as the ``mlm:model`` asset: artifact type, named input bands, checksum."""
    asset = pystac.Asset(
        href=f"./{checkpoint.name}",
        media_type="application/octet-stream; application=safetensors",
        roles=["mlm:model", "mlm:weights"],
        title="Weights and JSON header (safetensors)",
    )
    item.add_asset("model", asset)
    AssetGeneralMLMExtension.ext(asset).apply(artifact_type="safetensors")
    bands = []  # the input bands, named, on the model asset: how MLM ties mlm:input to raster:bands
    for name in meta.get("bands", []):
        band = RasterBand.create(data_type=DataType.UINT8)
        band.properties.update(name=str(name), description=f"{name}, uint8 0-255")
        bands.append(band)
    RasterExtension.ext(asset, add_if_missing=True).apply(bands)
    FileExtension.ext(asset, add_if_missing=True).apply(
        checksum=multihash(file_sha256(checkpoint)), size=checkpoint.stat().st_size
    )


def model_item(checkpoint: Path) -> pystac.Item:
    """The MLM STAC Item of ``checkpoint`` (the asset's href is relative: it lies beside the JSON)."""
    meta = read_checkpoint_metadata(checkpoint)
    created = datetime.fromisoformat(str(meta["created"]).replace("Z", "+00:00"))
    item = pystac.Item(
        id=checkpoint.stem,
        geometry=None,
        bbox=None,
        datetime=created,
        properties={
            "description": f"Building footprint segmentation: DeepLabV3 with {meta.get('encoder')}",
            "gsd": meta.get("gsd_m"),
        },
    )
    MLMExtension.ext(item, add_if_missing=True).apply(
        name=checkpoint.stem,
        architecture="DeepLabV3",
        tasks=[TaskType.SEMANTIC_SEGMENTATION],
        input=[_model_input(meta)],
        output=[_model_output(meta)],
        framework="pytorch",
        framework_version=_torch_version(meta),
        total_parameters=total_parameters(checkpoint),
        pretrained=True,
        pretrained_source=f"ImageNet weights of the {meta.get('encoder')} encoder",
        batch_size_suggestion=1,
        accelerator=None,
        accelerator_constrained=False,
    )
    item.properties["mlm:hyperparameters"] = {
        "encoder": meta.get("encoder"),
        "output_stride": meta.get("output_stride"),
        "atrous_rates": meta.get("atrous_rates"),
        "threshold": meta.get("threshold"),
        "validation_metrics": meta.get("validation_metrics") or {},
    }
    _add_model_asset(item, checkpoint, meta)
    card = checkpoint.with_name("MODEL_CARD.md")
    if card.is_file():
        item.add_asset(
            "card",
            pystac.Asset(
                href=f"./{card.name}", media_type="text/markdown", roles=["metadata"], title="Model card"
            ),
        )
    return item


def model_json(checkpoint: Path) -> str:
    """The MLM item as the text of ``<checkpoint stem>.mlm.json``."""
    item = model_item(checkpoint).to_dict(include_self_link=False, transform_hrefs=False)
    return json.dumps(item, indent=2) + "\n"
