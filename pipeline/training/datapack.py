"""Datapacks: a loaded DATASET.yaml in one ``.npz`` file, for machines with torch but no GDAL.

A GPU machine lent for a few minutes has PyTorch but neither rasterio nor network access, and
what travels to it is limited in size. :func:`write_pack` stores every scene of a
:class:`~pipeline.training.dataspec.Dataset` as it was loaded (native resolution, no-data folded into
the label): the image as JPEG (quality 92 by default: about 2 bits per pixel, so the whole data
set fits in a few tens of MB), the label as PNG (lossless), and the spec and per-scene facts
(source, split, GSD, sampling weight) as JSON. :func:`load_pack` rebuilds the ``Dataset`` with
numpy and Pillow alone, and ``footprints train --data PACK.npz`` trains from it exactly as from
the yaml. The JPEG step is the only difference, and it is recorded in the pack.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from pipeline.core.errors import ConfigError, InputNotFoundError
from pipeline.core.raster import RasterGrid
from pipeline.training.dataspec import Dataset, DatasetSpec, Scene

__all__ = ["PACK_FORMAT", "load_pack", "write_pack"]

PACK_FORMAT = 1


def _encode(array: NDArray[np.uint8], fmt: str, quality: int) -> NDArray[np.uint8]:
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": quality, "subsampling": 0} if fmt == "JPEG" else {}
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def _decode(data: NDArray[np.uint8]) -> NDArray[np.uint8]:
    with Image.open(io.BytesIO(data.tobytes())) as image:
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def write_pack(dataset: Dataset, path: str | os.PathLike[str], *, quality: int = 92) -> Path:
    """Write ``dataset`` (all its loaded scenes) to ``path`` (``.npz``), atomically."""
    out = Path(path)
    if out.suffix != ".npz":
        raise ConfigError(f"{out}: a datapack is an .npz file; name it *.npz")
    arrays: dict[str, NDArray[np.uint8]] = {}
    scenes = []
    for i, scene in enumerate(dataset.scenes):
        arrays[f"image{i}"] = _encode(scene.image, "JPEG", quality)
        arrays[f"label{i}"] = _encode(scene.label, "PNG", quality)
        scenes.append(
            {
                "source": scene.source,
                "name": scene.name,
                "label": os.path.relpath(scene.label_path, dataset.root),
                "split": scene.split,
                "gsd_m": scene.gsd_m,
                "weight": scene.weight,
                "chips": scene.chips,
            }
        )
    meta = {
        "format": PACK_FORMAT,
        "dataset": str(dataset.path),
        "jpeg_quality": quality,
        "spec": dataset.spec.model_dump(mode="json"),
        "scenes": scenes,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    save: Any = np.savez  # numpy's stub types **arrays as its keyword options
    save(tmp, **arrays)  # the images are compressed already
    tmp.replace(out)
    return out


def _scene(npz: Any, index: int, facts: dict[str, Any]) -> Scene:
    from affine import Affine

    label = _decode(npz[f"label{index}"])
    return Scene(
        source=facts["source"],
        name=facts["name"],
        split=facts["split"],
        gsd_m=float(facts["gsd_m"]),
        weight=float(facts["weight"]),
        image=_decode(npz[f"image{index}"]),
        label=label,
        image_path=Path(facts["name"]),
        label_path=Path(facts["label"]),
        grid=RasterGrid(crs=None, transform=Affine.identity(), height=label.shape[0], width=label.shape[1]),
        chips=int(facts["chips"]),
    )


def load_pack(path: str | os.PathLike[str], *, splits: tuple[str, ...] = ("train", "val")) -> Dataset:
    """The :class:`Dataset` a :func:`write_pack` file holds (scenes of ``splits`` decoded)."""
    where = Path(path)
    if not where.is_file():
        raise InputNotFoundError(f"{where}: datapack not found; make one with scripts/gpu_prepare.py")
    try:
        with np.load(where) as npz:
            meta = json.loads(npz["meta"].tobytes())
            if meta.get("format") != PACK_FORMAT:
                raise ConfigError(f"{where}: datapack format {meta.get('format')}; rebuild it")
            scenes = [_scene(npz, i, s) for i, s in enumerate(meta["scenes"]) if s["split"] in splits]
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"{where}: not a readable datapack ({exc}); rebuild it") from exc
    spec = DatasetSpec.model_validate(meta["spec"])
    return Dataset(path=where, root=Path("."), spec=spec, scenes=scenes)
