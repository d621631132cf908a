"""Training data: reading the files a DATASET.yaml lists (schema, scenes and targets:
:mod:`pipeline.training.dataspec`; chip sets: :mod:`pipeline.training.chips`; sampling:
:mod:`pipeline.training.sampling`).

DATASET.yaml
============

::

    root: ../../shared/data/real   # folder the item paths are relative to; itself relative to the yaml
    gsd_m: 0.5                     # training GSD in metres: every crop and val scene is resampled to it
    boundary_px: 2                 # boundary-target width in pixels at the training GSD (default 2)
    contact_px: 0                  # > 0: the second class is "contact" instead (see below; default 0)
    separators: [boundary, contact]  # optional: several classes after building (needs contact_px > 0)
    building_crop_fraction: 0.667  # share of crops centred near a random building pixel (default 2/3)
    grayscale_fraction: 0.2        # share of crops turned to luma x 3 (panchromatic inputs; default 0)
    sources:
      inria_austin:                # source name (free text)
        weight: 1.0                # source sampling weight: balance, not pixels (default 1; 0 = val only)
        items:
          - {image: inria_austin/images/aerial_sample.tif, label: inria_austin/labels/aerial_sample.tif,
             split: val}
      rio:
        black_is_nodata: true      # all-zero RGB pixels are no-data
        items:
          - image: "spacenet1_rio/3band/*_img5[0-4].tif"     # glob patterns expand to one scene per file
            label: "spacenet1_rio/building_mask_vis/{name}"  # {name}: image file name; {stem}: no suffix
      dubai:
        gsd_m: 1.0                 # native GSD of images WITHOUT a CRS (item-level gsd_m wins)
        label_color: [60, 16, 152] # colour-coded RGB masks: building = this exact colour
        ignore_colors: [[0, 0, 0]] # colours that mean "unknown" (ignored in the loss)
        items:
          - {image: "dubai_hitl/Tile 1/images/*.jpg", label: "dubai_hitl/Tile 1/masks/{stem}.png"}
      tanzania:
        weight: 0.3
        items:                     # vector labels: reprojected to the image CRS, rasterized on its grid
          - {image: open_ai_tanzania/images/tanzania_sample.tif,
             label: open_ai_tanzania/labels/tanzania_sample.geojson}
      oam:
        weight_by_area: true       # draw scenes in proportion to their valid area, not uniformly
        items:                     # web-map chips: one scene per group of touching chips
          - {image: "hotosm_fair_utilities/data/1/OAM-*-19.png", mosaic: true, georef: xyz,
             label: hotosm_fair_utilities/data/1/labels.geojson}  # or "{stem}.geojson" per chip

Quote paths that contain ``{``, ``}``, ``*`` or ``[`` (YAML syntax). Source keys: ``weight``,
``gsd_m``, ``label_color``, ``ignore_colors``, ``building_values`` (mask values that mean building;
default any value > 0), ``ignore_values``, ``black_is_nodata``, ``items``. Item keys: ``image``,
``label``, ``split`` (``train`` default, or ``val``), ``gsd_m``, ``weight`` (relative to the other
scenes of its source, default 1), ``black_is_nodata`` (overrides the source's), ``mosaic`` (the
glob's chips that touch become one scene per group; labels must be vector files, one for the
region or one per chip) and ``georef`` (``file``, or ``xyz``: the grid of a web-map chip named
``...-X-Y-Z`` in EPSG:3857). Source key ``weight_by_area`` draws a source's scenes in proportion to
their valid area.

Rules
-----
* Images: GeoTIFF, PNG or JPG; the first three bands are RGB (one band is repeated, alpha is dropped).
  Non-uint8 images are scaled to uint8 between their 2nd and 98th percentiles.
* GSD: from the transform for georeferenced images (:func:`pipeline.core.geo.pixel_size_m`, so EPSG:4326
  works); the yaml's ``gsd_m`` (item, else source) is used only for images without a CRS.
* Labels: a mask raster (first band compared with ``building_values``, or all three bands with
  ``label_color``; paletted masks are expanded to RGB for ``label_color``), or a vector file
  (``.geojson``, ``.json``, ``.gpkg``, ``.shp``, ``.fgb``) whose polygons are reprojected to the
  image CRS and burnt onto the image grid (pixels whose centre is inside).
  A georeferenced mask on another grid is reprojected (nearest) onto the image grid. A mask raster's
  own nodata tag is NOT used (SpaceNet masks tag background 0 as nodata): use ``ignore_values``.
* No-data: the image's nodata/alpha/internal mask, ``black_is_nodata``, ``ignore_values`` /
  ``ignore_colors`` and anything outside the image after cropping are labelled :data:`IGNORE` (255).
* Splits are by whole scene (file); an image may not appear twice (no train/val leak).

Targets are two uint8 channels matching the model's classes ``("building", "boundary")``: building
is the mask, boundary the building pixels within ``boundary_px`` of a non-building pixel (inner
border, :func:`boundary_target`), computed after resampling to the training GSD; both are 255 on
no-data. ``building & ~boundary`` (the interiors) keeps neighbouring buildings apart for the
seed-and-grow split (:mod:`pipeline.vectorize.split`).

With ``contact_px > 0`` the second class is ``"contact"`` instead (:func:`contact_target`): every
pixel, building or not, within ``contact_px`` (Chebyshev) of two *different* buildings (8-connected components
of the mask). It marks only where neighbours meet, the strip that splits a merged blob, and at
``contact_px`` of a few metres it is wide enough to be drawn on DeepLabV3's stride-16 cells, which a
1 m inner border is not. The split treats either class the same way.

``separators: [boundary, contact]`` trains both, as the SpaceNet 4 winners did (body, border and
the separation strip between neighbours): the model then has three classes, and inference hands
the split the larger of the two separator probabilities per pixel, so seeds are
body x (1 - border) x (1 - separation).

Sampling (:class:`pipeline.training.sampling.CropSampler`): a source by weight, then a scene of it (by
item weight, uniform by default), then a crop: a native window of
``crop * gsd_train / gsd_scene`` pixels (times a scale jitter in U(0.8, 1.25)) resized to
``crop`` (image bilinear with antialiasing, labels nearest), centred near a building pixel
with probability ``building_crop_fraction``; then a random dihedral transform (flips,
90 degree rotations) and a modest colour jitter. Everything random comes from the
``numpy.random.Generator`` passed in, so a seed reproduces the batches.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.features
import rasterio.warp
from numpy.typing import NDArray
from rasterio.enums import ColorInterp

from pipeline.core.errors import ConfigError, InputNotFoundError, RasterReadError
from pipeline.core.raster import RasterGrid, open_checked
from pipeline.io.read import BandScaling, to_uint8
from pipeline.io.storage import LOCAL_SIDECARS
from pipeline.training.chips import Chip, group_chips, mosaic
from pipeline.training.dataspec import (
    IGNORE,
    Dataset,
    DatasetSpec,
    ItemSpec,
    Scene,
    SourceSpec,
    boundary_target,
    contact_target,
    make_target,
    parse_dataset,
)

__all__ = [
    "IGNORE",
    "Dataset",
    "DatasetSpec",
    "ItemSpec",
    "Scene",
    "SourceSpec",
    "boundary_target",
    "contact_target",
    "dataset_files",
    "load_dataset",
    "make_target",
    "parse_dataset",
    "rasterize_vector",
    "read_image",
    "read_label",
]

VECTOR_SUFFIXES = frozenset({".geojson", ".json", ".gpkg", ".shp", ".fgb"})


# --------------------------------------------------------------------------- reading


def _open(path: Path) -> Any:
    return open_checked(
        path, missing="fix the path in the DATASET.yaml", unreadable="use GeoTIFF, PNG or JPG",
        error=RasterReadError, env=LOCAL_SIDECARS,
    )  # fmt: skip


def _to_uint8(data: NDArray[Any], valid: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """uint8 as is; other bands scaled between the 2nd and 98th percentiles of their valid pixels."""
    if data.dtype == np.uint8:
        return np.ascontiguousarray(data)
    sample = valid if valid.any() else np.ones(valid.shape, np.bool_)
    return to_uint8(data, tuple(BandScaling.of(band[sample]) for band in data))


def read_image(
    path: Path, *, black_is_nodata: bool = False
) -> tuple[NDArray[np.uint8], NDArray[np.bool_], RasterGrid]:
    """Read an RGB image as (H, W, 3) uint8, its validity mask (H, W) and its grid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with _open(path) as ds:
            if ds.count == 2 or ds.count < 1:
                raise RasterReadError(
                    f"{path}: has {ds.count} bands; give an RGB image (3+ bands) or a single grey band"
                )
            bands = [1, 2, 3] if ds.count >= 3 else [1, 1, 1]
            try:
                data = ds.read(bands)
                valid = ds.dataset_mask() > 0
            except rasterio.errors.RasterioIOError as exc:
                raise RasterReadError(
                    f"{path}: read failed ({exc}); the file is corrupt, re-copy it"
                ) from exc
            grid = RasterGrid.of(ds)
    image = np.ascontiguousarray(_to_uint8(data, valid).transpose(1, 2, 0))
    if black_is_nodata:
        valid &= image.any(axis=2)
    return image, valid, grid


@dataclass(frozen=True)
class LabelRules:
    """How a label file encodes buildings and unknown pixels (from the source's yaml)."""

    label_color: tuple[int, int, int] | None = None
    ignore_colors: tuple[tuple[int, int, int], ...] = ()
    building_values: tuple[int, ...] | None = None
    ignore_values: tuple[int, ...] = ()


def _classify(data: NDArray[Any], rules: LabelRules, path: Path) -> NDArray[np.uint8]:
    """Mask raster bands (C, H, W) -> 0/1/IGNORE."""
    if rules.label_color is not None:
        if data.shape[0] < 3:
            raise ConfigError(
                f"{path}: label_color is set but the mask has {data.shape[0]} band(s); "
                "use building_values for single-band masks"
            )
        rgb = data[:3]
        building = np.all(rgb == np.asarray(rules.label_color).reshape(3, 1, 1), axis=0)
        ignore = np.zeros(building.shape, bool)
        for color in rules.ignore_colors:
            ignore |= np.all(rgb == np.asarray(color).reshape(3, 1, 1), axis=0)
    else:
        band = data[0]
        values = rules.building_values
        building = band > 0 if values is None else np.isin(band, values)
        ignore = np.isin(band, rules.ignore_values)
    return np.where(ignore, IGNORE, building).astype(np.uint8)


def rasterize_vector(path: Path, grid: RasterGrid) -> NDArray[np.uint8]:
    """Burn a vector file's polygons (reprojected to the grid's CRS) onto the grid: 1 inside, 0 out."""
    import geopandas as gpd
    import shapely

    if grid.crs is None:
        raise ConfigError(
            f"{path}: vector labels need a georeferenced image; use a mask raster for images without a CRS"
        )
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises its own DataSourceError family
        raise RasterReadError(f"{path}: cannot be read as vector data ({exc}); use GeoJSON or GPKG") from exc
    if frame.crs is None:
        if path.suffix.lower() not in {".geojson", ".json"}:
            raise ConfigError(f"{path}: vector file has no CRS; set one (e.g. with ogr2ogr -a_srs)")
        frame = frame.set_crs("OGC:CRS84")
    frame = frame.to_crs(grid.crs.to_wkt())
    box = shapely.box(*grid.bounds)
    geoms = [
        g
        for g in frame.geometry
        if g is not None
        and not g.is_empty
        and g.geom_type in ("Polygon", "MultiPolygon")
        and g.intersects(box)
    ]
    if not geoms:
        return np.zeros(grid.shape, np.uint8)
    burnt = rasterio.features.rasterize(
        ((g, 1) for g in geoms), out_shape=grid.shape, transform=grid.transform, fill=0, dtype="uint8"
    )
    return np.asarray(burnt, dtype=np.uint8)


def _align(label: NDArray[np.uint8], src: RasterGrid, dst: RasterGrid, path: Path) -> NDArray[np.uint8]:
    if src.shape == dst.shape and (not (src.georeferenced and dst.georeferenced) or src.same_as(dst)):
        return label
    if not (src.georeferenced and dst.georeferenced):
        raise RasterReadError(
            f"{path}: label is {src.shape[1]}x{src.shape[0]} px but the image is "
            f"{dst.shape[1]}x{dst.shape[0]} and they are not both georeferenced; "
            "give a mask on the image's pixel grid"
        )
    out = np.full(dst.shape, IGNORE, np.uint8)
    rasterio.warp.reproject(
        label,
        out,
        src_transform=src.transform,
        src_crs=src.crs,
        dst_transform=dst.transform,
        dst_crs=dst.crs,
        src_nodata=None,
        dst_nodata=IGNORE,
        resampling=rasterio.warp.Resampling.nearest,
    )
    return out


def read_label(path: Path, grid: RasterGrid, rules: LabelRules) -> NDArray[np.uint8]:
    """The label of an image on its grid: 0 background, 1 building, IGNORE unknown."""
    if path.suffix.lower() in VECTOR_SUFFIXES:
        if not path.is_file():
            raise InputNotFoundError(f"{path}: label file not found; fix the path in the DATASET.yaml")
        return rasterize_vector(path, grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with _open(path) as ds:
            try:
                data = ds.read()
                palette = ds.colormap(1) if ds.colorinterp[0] == ColorInterp.palette else None
            except rasterio.errors.RasterioIOError as exc:
                raise RasterReadError(
                    f"{path}: read failed ({exc}); the file is corrupt, re-copy it"
                ) from exc
            src = RasterGrid.of(ds)
    if palette is not None and rules.label_color is not None:
        data = _expand_palette(data[0], palette)
    return _align(_classify(data, rules, path), src, grid, path)


def _expand_palette(index: NDArray[Any], palette: dict[int, tuple[int, ...]]) -> NDArray[np.uint8]:
    """Palette indices (H, W) -> RGB bands (3, H, W), so label_color works on paletted PNG masks."""
    lut = np.zeros((max(256, max(palette) + 1), 3), np.uint8)
    for key, rgba in palette.items():
        lut[key] = rgba[:3]
    return np.ascontiguousarray(lut[index].transpose(2, 0, 1))


# --------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class _Resolved:
    """One scene: a single image, or a group of touching chips (``item.mosaic``)."""

    source: str
    index: int
    images: tuple[Path, ...]
    labels: tuple[Path, ...]
    item: ItemSpec
    chips: tuple[Chip, ...] = ()

    @property
    def image(self) -> Path:
        return self.images[0]

    @property
    def label(self) -> Path:
        return self.labels[0]


def _expand(spec: DatasetSpec, root: Path, where: Path) -> list[_Resolved]:
    out: list[_Resolved] = []
    for name, source in spec.sources.items():
        for i, item in enumerate(source.items):
            loc = f"{where}: sources.{name}.items[{i}]"
            pattern = str(root / item.image)
            paths = (
                sorted(Path(p) for p in glob.glob(pattern)) if glob.has_magic(item.image) else [Path(pattern)]
            )
            if not paths:
                raise InputNotFoundError(
                    f"{loc}: image pattern {pattern!r} matches no file; fix it or the root"
                )
            pairs = [(image, _label_path(root, item, image, loc)) for image in paths]
            if item.mosaic:
                out.extend(_mosaic_scenes(name, i, item, pairs, loc))
            else:
                out.extend(_Resolved(name, i, (image,), (label,), item) for image, label in pairs)
    return out


def _label_path(root: Path, item: ItemSpec, image: Path, loc: str) -> Path:
    if not image.is_file():
        raise InputNotFoundError(f"{loc}: image {image} not found; fix the path or the root")
    label = root / item.label.replace("{stem}", image.stem).replace("{name}", image.name)
    if not label.is_file():
        raise InputNotFoundError(f"{loc}: label {label} (for {image.name}) not found; fix the label path")
    return label


def _mosaic_scenes(
    source: str, index: int, item: ItemSpec, pairs: Sequence[tuple[Path, Path]], loc: str
) -> list[_Resolved]:
    """One scene per group of touching chips; labels must be vector files (burnt on the mosaic)."""
    for _, label in pairs:
        if label.suffix.lower() not in VECTOR_SUFFIXES:
            raise ConfigError(f"{loc}: mosaic: true needs vector labels, not {label.name}; give GeoJSON/GPKG")
    label_of = dict(pairs)
    chips = [Chip.open(image, georef=item.georef) for image, _ in pairs]
    return [
        _Resolved(
            source,
            index,
            tuple(c.path for c in group),
            tuple(dict.fromkeys(label_of[c.path] for c in group)),
            item,
            tuple(group),
        )
        for group in group_chips(chips)
    ]


def _check_unique(items: Sequence[_Resolved], where: Path) -> None:
    seen: dict[Path, _Resolved] = {}
    for r, image in ((res, path) for res in items for path in res.images):
        key = image.resolve()
        if key in seen:
            other = seen[key]
            raise ConfigError(
                f"{where}: {image} is listed twice (sources.{other.source}.items[{other.index}], "
                f"{other.item.split}, and sources.{r.source}.items[{r.index}], {r.item.split}); "
                "list every scene once so train and val cannot overlap"
            )
        seen[key] = r


def _read_mosaic(
    r: _Resolved, black_is_nodata: bool
) -> tuple[NDArray[np.uint8], NDArray[np.uint8], RasterGrid]:
    bands, valid, grid = mosaic(r.chips)
    image = np.ascontiguousarray(_to_uint8(bands, valid).transpose(1, 2, 0))
    if black_is_nodata:
        valid &= image.any(axis=2)
    label = np.zeros(grid.shape, np.uint8)
    for path in r.labels:
        label |= rasterize_vector(path, grid)
    label[~valid] = IGNORE
    return image, label, grid


def _load_scene(r: _Resolved, source: SourceSpec, where: Path, root: Path) -> Scene:
    black = source.black_is_nodata if r.item.black_is_nodata is None else r.item.black_is_nodata
    if r.chips:
        image, label, grid = _read_mosaic(r, black)
    else:
        image, valid, grid = read_image(r.image, black_is_nodata=black)
        rules = LabelRules(
            label_color=source.label_color,
            ignore_colors=tuple(source.ignore_colors),
            building_values=None if source.building_values is None else tuple(source.building_values),
            ignore_values=tuple(source.ignore_values),
        )
        label = read_label(r.label, grid, rules)
        label[~valid] = IGNORE
    if grid.georeferenced:
        gsd = grid.gsd_m()
    elif (r.item.gsd_m or source.gsd_m) is not None:
        gsd = float(r.item.gsd_m or source.gsd_m or 0.0)
    else:
        raise ConfigError(
            f"{where}: sources.{r.source}.items[{r.index}]: {r.image} is not georeferenced; "
            "set gsd_m (metres per pixel) on the item or the source"
        )
    weight = r.item.weight
    if source.weight_by_area:  # valid area in hectares: big regions are drawn more often
        weight *= max(float(np.count_nonzero(label != IGNORE)) * gsd * gsd / 1e4, 1e-6)
    return Scene(
        source=r.source,
        name=os.path.relpath(r.image, root),
        split=r.item.split,
        gsd_m=gsd,
        weight=weight,
        chips=len(r.images),
        image=image,
        label=label,
        image_path=r.image,
        label_path=r.label,
        grid=grid,
    )


def _resolve(where: Path) -> tuple[DatasetSpec, Path, list[_Resolved]]:
    spec = parse_dataset(where)
    root = (where.parent / spec.root).resolve()
    if not root.is_dir():
        raise InputNotFoundError(f"{where}: root {root} is not a folder; fix 'root' (relative to the yaml)")
    resolved = _expand(spec, root, where)
    _check_unique(resolved, where)
    return spec, root, resolved


def dataset_files(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every scene a DATASET.yaml lists (globs expanded, files checked, nothing loaded).

    One dict per scene: ``source``, ``split``, ``image`` and ``label`` (absolute paths).
    """
    _, _, resolved = _resolve(Path(path))
    return [
        {"source": r.source, "split": r.item.split, "image": str(r.image), "label": str(r.label)}
        | ({"images": [str(p) for p in r.images]} if len(r.images) > 1 else {})
        for r in resolved
    ]


def load_dataset(path: str | os.PathLike[str], *, splits: Sequence[str] = ("train", "val")) -> Dataset:
    """Parse a DATASET.yaml, check every file and load the scenes of ``splits`` into memory."""
    where = Path(path)
    spec, root, resolved = _resolve(where)
    scenes = [_load_scene(r, spec.sources[r.source], where, root) for r in resolved if r.item.split in splits]
    return Dataset(path=where, root=root, spec=spec, scenes=scenes)
