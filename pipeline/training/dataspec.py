"""The DATASET.yaml schema, scenes and training targets: what training needs, without rasterio.

:mod:`pipeline.training.dataset` reads the files a DATASET.yaml lists into :class:`Scene` objects (the
format is documented there); :mod:`pipeline.training.datapack` packs loaded scenes for a machine that
has torch but no GDAL. Both hand training a :class:`Dataset`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import yaml
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from scipy import ndimage

from pipeline.core.errors import ConfigError, InputNotFoundError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeline.core.raster import RasterGrid

__all__ = [
    "IGNORE",
    "Dataset",
    "DatasetSpec",
    "ItemSpec",
    "Scene",
    "SourceSpec",
    "boundary_target",
    "contact_target",
    "make_target",
    "parse_dataset",
]

IGNORE = 255
"""Target value of no-data pixels (excluded from the loss and the metrics)."""

MAX_BUILDING_SAMPLES = 65536
"""At most this many building pixels per scene are kept as crop centres (strided subsample)."""

Byte = Annotated[int, Field(ge=0, le=255)]
Color = tuple[Byte, Byte, Byte]


# --------------------------------------------------------------------------- schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ItemSpec(_Strict):
    """One image/label pair, or a glob of them (one scene per matching image)."""

    image: str = Field(min_length=1, description="Image path or glob, relative to root.")
    label: str = Field(min_length=1, description="Label path; {stem}/{name} = the image's.")
    split: Literal["train", "val"] = "train"
    gsd_m: float | None = Field(None, gt=0, description="Native GSD when the image has no CRS.")
    weight: float = Field(1.0, gt=0, description="Sampling weight among the source's scenes.")
    black_is_nodata: bool | None = Field(None, description="Overrides the source's setting.")
    mosaic: bool = Field(False, description="Join the glob's touching chips into one scene per group.")
    georef: Literal["file", "xyz"] = Field("file", description="xyz: grid from an -X-Y-Z chip name.")


class SourceSpec(_Strict):
    """A source: sampling weight, label encoding and its items."""

    weight: float = Field(1.0, ge=0, description="Sampling weight of the source (0 = val only).")
    gsd_m: float | None = Field(None, gt=0, description="Native GSD of images without a CRS.")
    label_color: Color | None = Field(None, description="Building colour in RGB masks.")
    ignore_colors: list[Color] = Field(default_factory=list)
    building_values: list[int] | None = Field(None, description="Building mask values; default > 0.")
    ignore_values: list[int] = Field(default_factory=list)
    black_is_nodata: bool = False
    weight_by_area: bool = Field(False, description="Draw scenes in proportion to their valid area.")
    items: list[ItemSpec] = Field(min_length=1)


class DatasetSpec(_Strict):
    """The whole DATASET.yaml."""

    root: str = "."
    gsd_m: float = Field(gt=0, description="Training GSD in metres.")
    boundary_px: int = Field(2, ge=0, le=32)
    contact_px: int = Field(0, ge=0, le=64)
    building_crop_fraction: float = Field(2.0 / 3.0, ge=0.0, le=1.0)
    grayscale_fraction: float = Field(0.0, ge=0.0, le=1.0, description="Share of crops made grey.")
    separators: tuple[Literal["boundary", "contact"], ...] | None = Field(
        None, min_length=1, description="Classes after building; default contact or boundary."
    )
    sources: dict[str, SourceSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _contact_needs_width(self) -> DatasetSpec:
        if self.separators is not None and "contact" in self.separators and self.contact_px <= 0:
            raise ValueError("separators lists contact, so contact_px must be > 0")
        if self.separators is not None and len(set(self.separators)) != len(self.separators):
            raise ValueError("separators lists a class twice")
        return self

    @property
    def separator_classes(self) -> tuple[str, ...]:
        """The classes after building: ``separators``, else contact when ``contact_px > 0``, else boundary."""
        if self.separators is not None:
            return tuple(self.separators)
        return ("contact",) if self.contact_px > 0 else ("boundary",)

    @property
    def classes(self) -> tuple[str, ...]:
        """The model's output classes, in channel order."""
        return ("building", *self.separator_classes)


def parse_dataset(path: str | os.PathLike[str]) -> DatasetSpec:
    """Read and validate a DATASET.yaml (no file access beyond the yaml itself)."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"{p}: dataset file not found; pass an existing DATASET.yaml (see configs/)")
    try:
        loaded = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{p}: not valid YAML ({detail}); fix the syntax") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: top level must be a mapping with root, gsd_m and sources; see configs/")
    try:
        return DatasetSpec.model_validate(loaded)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise ConfigError(
            f"{p}: {loc}: {first['msg']}; "
            "see the format in pipeline/training/dataset.py or configs/dataset.yaml"
        ) from exc


# --------------------------------------------------------------------------- scenes


@dataclass(eq=False)
class Scene:
    """One image at native resolution with its label (0/1/IGNORE, no-data folded in)."""

    source: str
    name: str
    split: str
    gsd_m: float
    weight: float
    image: NDArray[np.uint8]
    label: NDArray[np.uint8]
    image_path: Path
    label_path: Path
    grid: RasterGrid
    chips: int = 1
    building_index: NDArray[np.int64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        flat = np.flatnonzero(self.label.ravel() == 1)
        step = max(1, math.ceil(flat.size / MAX_BUILDING_SAMPLES))
        self.building_index = flat[::step].astype(np.int64)

    def describe(self, root: Path) -> dict[str, Any]:
        out = {
            "source": self.source,
            "image": self.name,
            "label": os.path.relpath(self.label_path, root),
            "gsd_m": round(self.gsd_m, 6),
            "shape": list(self.label.shape),
        }
        return out if self.chips == 1 else {**out, "chips": self.chips}


@dataclass
class Dataset:
    """A loaded DATASET.yaml: the spec and every scene at native resolution."""

    path: Path
    root: Path
    spec: DatasetSpec
    scenes: list[Scene]

    def split(self, name: str) -> list[Scene]:
        return [s for s in self.scenes if s.split == name]

    def describe(self, split: str) -> list[dict[str, Any]]:
        """JSON-ready list of the scenes of a split (for checkpoint metadata)."""
        return [s.describe(self.root) for s in self.split(split)]


# --------------------------------------------------------------------------- targets


def boundary_target(
    mask: NDArray[Any], *, width_px: int, unknown: NDArray[np.bool_] | None = None
) -> NDArray[np.bool_]:
    """Building pixels within ``width_px`` (Euclidean) of a non-building pixel: the inner border.

    ``unknown`` pixels (no-data) count as neither edge nor background, and so does the outside of
    the array: a building cut by the array's edge has no boundary there.
    """
    building = np.asarray(mask).astype(bool)
    if width_px <= 0:
        return np.zeros(building.shape, bool)
    solid = building if unknown is None else building | unknown
    if solid.all():
        return np.zeros(building.shape, bool)
    dist = ndimage.distance_transform_edt(solid)
    return building & (np.asarray(dist) <= width_px)


def contact_target(
    mask: NDArray[Any], *, width_px: int, unknown: NDArray[np.bool_] | None = None
) -> NDArray[np.bool_]:
    """Pixels within ``width_px`` of two different buildings: where neighbours meet.

    Buildings are the 8-connected components of ``mask``. A pixel is contact when the square of
    side ``2 * width_px + 1`` centred on it (Chebyshev distance: separable filters, twenty times
    faster than a disk, which matters on the training hot path) holds pixels of two components;
    buildings farther apart than ``2 * width_px`` never produce contact. ``unknown`` pixels are
    never contact themselves.
    """
    building = np.asarray(mask).astype(bool)
    if width_px <= 0:
        return np.zeros(building.shape, bool)
    labels, n = ndimage.label(building, structure=np.ones((3, 3), bool))
    if n < 2:
        return np.zeros(building.shape, bool)
    size = 2 * width_px + 1
    high = ndimage.maximum_filter(labels, size=size, mode="constant", cval=0)
    low = ndimage.minimum_filter(np.where(labels == 0, n + 1, labels), size=size, mode="constant", cval=n + 1)
    contact = (high > 0) & (low <= n) & (high != low)
    if unknown is not None:
        contact &= ~unknown
    return np.asarray(contact)


def make_target(
    label: NDArray[np.uint8],
    *,
    boundary_px: int,
    contact_px: int = 0,
    separators: Sequence[str] | None = None,
) -> NDArray[np.uint8]:
    """(H, W) 0/1/IGNORE label -> (1 + S, H, W) uint8 target; IGNORE on no-data.

    Channel 0 is building; then one channel per separator class: ``"boundary"`` (inner border of
    ``boundary_px``) and/or ``"contact"`` (where two buildings meet, ``contact_px``). Without
    ``separators`` the second channel is contact when ``contact_px > 0``, else boundary.
    """
    building = label == 1
    ignore = label == IGNORE
    if separators is None:
        separators = ("contact",) if contact_px > 0 else ("boundary",)
    channels = [building]
    for name in separators:
        if name == "contact":
            channels.append(contact_target(building, width_px=contact_px, unknown=ignore))
        else:
            channels.append(boundary_target(building, width_px=boundary_px, unknown=ignore))
    target = np.stack(channels).astype(np.uint8)
    target[:, ignore] = IGNORE
    return target
