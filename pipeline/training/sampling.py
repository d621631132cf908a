"""Training samples: resampling to the training GSD, augmentation and balanced crop sampling.

Scenes come from :mod:`pipeline.training.dataset` at native resolution; this module resamples them
to the DATASET.yaml's training GSD (validation scenes whole, training crops on the fly),
augments crops (flips, 90° rotations, scale and colour jitter) and draws them in balance:
a source by its weight, then a scene, then a crop (mostly centred on a building pixel).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from pipeline.core.errors import ConfigError
from pipeline.training.dataspec import IGNORE, Dataset, Scene, make_target

# --------------------------------------------------------------------------- resampling


def resize_image(image: NDArray[np.uint8], height: int, width: int) -> NDArray[np.uint8]:
    """Bilinear resize of (H, W, 3) uint8; antialiased when shrinking (Pillow's scaled filter)."""
    if image.shape[:2] == (height, width):
        return image.copy()
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.array(pil.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)  # writable copy


def resize_nearest(array: NDArray[Any], height: int, width: int) -> NDArray[Any]:
    """Nearest-neighbour resize of the first two axes (pixel-centre convention, like Pillow)."""
    h, w = array.shape[:2]
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.intp), w - 1)
    return np.ascontiguousarray(array[rows[:, None], cols[None, :]])


@dataclass(frozen=True)
class ValScene:
    """A whole scene at the training GSD: image (H, W, 3), target (2, H, W) with IGNORE on no-data."""

    source: str
    name: str
    image: NDArray[np.uint8]
    target: NDArray[np.uint8]

    @property
    def valid(self) -> NDArray[np.bool_]:
        return np.asarray(self.target[0] != IGNORE)


def resample_scene(
    scene: Scene,
    *,
    gsd_m: float,
    boundary_px: int,
    contact_px: int = 0,
    separators: Sequence[str] | None = None,
) -> ValScene:
    """Resample a whole scene to ``gsd_m`` and build its target."""
    h, w = scene.label.shape
    factor = scene.gsd_m / gsd_m
    out_h, out_w = max(1, round(h * factor)), max(1, round(w * factor))
    image = resize_image(scene.image, out_h, out_w)
    label = resize_nearest(scene.label, out_h, out_w)
    target = make_target(label, boundary_px=boundary_px, contact_px=contact_px, separators=separators)
    return ValScene(scene.source, scene.name, image, target)


def validation_scenes(dataset: Dataset, *, split: str = "val") -> Iterator[ValScene]:
    """Yield the scenes of ``split`` resampled to the dataset's training GSD, with targets."""
    for scene in dataset.split(split):
        spec = dataset.spec
        yield resample_scene(
            scene,
            gsd_m=spec.gsd_m,
            boundary_px=spec.boundary_px,
            contact_px=spec.contact_px,
            separators=spec.separator_classes,
        )


# --------------------------------------------------------------------------- augmentation


def color_jitter(
    image: NDArray[np.uint8], rng: np.random.Generator, strength: float = 0.2
) -> NDArray[np.uint8]:
    """Brightness, contrast, saturation (x U(1-s, 1+s)) and per-channel gain (x U(1-s/4, 1+s/4))."""
    s = float(strength)
    if s <= 0:
        return image
    brightness, contrast, saturation = rng.uniform(1 - s, 1 + s, size=3)
    gains = rng.uniform(1 - s / 4, 1 + s / 4, size=3).astype(np.float32)
    x = image.astype(np.float32) * np.float32(brightness)
    mean = x.mean()
    x = (x - mean) * np.float32(contrast) + mean
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * np.float32(saturation)
    x *= gains
    return np.asarray(np.clip(np.rint(x), 0, 255), dtype=np.uint8)


LUMA = np.array([0.299, 0.587, 0.114], np.float32)
"""ITU-R BT.601 luma weights: a stand-in for a panchromatic band."""


def to_grayscale(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(H, W, 3) RGB -> its luma repeated in three bands, as inference repeats a single band."""
    luma = np.clip(np.rint(image.astype(np.float32) @ LUMA), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(luma[:, :, None], 3, axis=2))


def _dihedral(
    image: NDArray[np.uint8], target: NDArray[np.uint8], rng: np.random.Generator
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    k = int(rng.integers(4))
    flip = bool(rng.random() < 0.5)
    image = np.rot90(image, k, axes=(0, 1))
    target = np.rot90(target, k, axes=(1, 2))
    if flip:
        image, target = image[:, ::-1], target[:, :, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(target)


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Crop:
    """A training sample: image (crop, crop, 3) uint8 and target (2, crop, crop) uint8."""

    source: str
    scene: str
    image: NDArray[np.uint8]
    target: NDArray[np.uint8]


def _extract(scene: Scene, y0: int, x0: int, size: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """A size x size native window at (y0, x0); outside the scene: black image, IGNORE label."""
    h, w = scene.label.shape
    image = np.zeros((size, size, 3), np.uint8)
    label = np.full((size, size), IGNORE, np.uint8)
    ya, yb, xa, xb = max(y0, 0), min(y0 + size, h), max(x0, 0), min(x0 + size, w)
    if yb > ya and xb > xa:
        image[ya - y0 : yb - y0, xa - x0 : xb - x0] = scene.image[ya:yb, xa:xb]
        label[ya - y0 : yb - y0, xa - x0 : xb - x0] = scene.label[ya:yb, xa:xb]
    return image, label


class CropSampler:
    """Balanced, augmented random crops at the training GSD from a list of training scenes."""

    def __init__(
        self,
        scenes: Sequence[Scene],
        *,
        source_weights: dict[str, float],
        gsd_m: float,
        crop: int,
        boundary_px: int = 2,
        contact_px: int = 0,
        separators: Sequence[str] | None = None,
        building_fraction: float = 2.0 / 3.0,
        scale_jitter: tuple[float, float] = (0.8, 1.25),
        augment: bool = True,
        color_strength: float = 0.2,
        grayscale_fraction: float = 0.0,
    ) -> None:
        self.gsd_m, self.crop, self.boundary_px, self.contact_px = gsd_m, crop, boundary_px, contact_px
        self.separators = None if separators is None else tuple(separators)
        self.building_fraction, self.scale_jitter = building_fraction, scale_jitter
        self.augment, self.color_strength = augment, color_strength
        self.grayscale_fraction = grayscale_fraction
        self.groups: dict[str, list[Scene]] = {}
        for scene in scenes:
            if source_weights.get(scene.source, 0.0) > 0:
                self.groups.setdefault(scene.source, []).append(scene)
        if not self.groups:
            raise ConfigError(
                "no training scenes with a positive source weight; mark items split: train and give "
                "their sources weight > 0 in the DATASET.yaml"
            )
        self.sources = sorted(self.groups)
        weights = np.array([source_weights[s] for s in self.sources], np.float64)
        self.source_p = weights / weights.sum()
        self.scene_p = {
            s: np.array([sc.weight for sc in g]) / sum(sc.weight for sc in g) for s, g in self.groups.items()
        }

    @classmethod
    def from_dataset(cls, dataset: Dataset, *, crop: int, **kwargs: Any) -> CropSampler:
        spec = dataset.spec
        kwargs.setdefault("boundary_px", spec.boundary_px)
        kwargs.setdefault("contact_px", spec.contact_px)
        kwargs.setdefault("separators", spec.separator_classes)
        kwargs.setdefault("building_fraction", spec.building_crop_fraction)
        kwargs.setdefault("grayscale_fraction", spec.grayscale_fraction)
        weights = {name: src.weight for name, src in spec.sources.items()}
        return cls(dataset.split("train"), source_weights=weights, gsd_m=spec.gsd_m, crop=crop, **kwargs)

    def choose_source(self, rng: np.random.Generator) -> str:
        return self.sources[int(rng.choice(len(self.sources), p=self.source_p))]

    def _origin(self, scene: Scene, size: int, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left of a size x size native window: near a building pixel, or anywhere; kept on the scene."""
        h, w = scene.label.shape
        if scene.building_index.size and rng.random() < self.building_fraction:
            cy, cx = divmod(int(scene.building_index[rng.integers(scene.building_index.size)]), w)
            shift = size // 4
            y0 = cy - size // 2 + int(rng.integers(-shift, shift + 1))
            x0 = cx - size // 2 + int(rng.integers(-shift, shift + 1))
        else:
            y0 = int(rng.integers(min(0, h - size), max(0, h - size) + 1))
            x0 = int(rng.integers(min(0, w - size), max(0, w - size) + 1))
        y0 = int(np.clip(y0, min(0, h - size), max(0, h - size)))
        x0 = int(np.clip(x0, min(0, w - size), max(0, w - size)))
        return y0, x0

    def crop_scene(self, scene: Scene, rng: np.random.Generator) -> Crop:
        """One crop of ``scene`` (window, resample, target, augment)."""
        margin = max(self.boundary_px, self.contact_px)  # targets need context beyond the crop's edge
        out = self.crop + 2 * margin
        scale = self.gsd_m / scene.gsd_m * float(rng.uniform(*self.scale_jitter))  # native px per output px
        inner = max(1, round(self.crop * scale))
        inset = round(margin * scale)
        y0, x0 = self._origin(scene, inner, rng)
        y0, x0, size = y0 - inset, x0 - inset, inner + 2 * inset
        image, label = _extract(scene, y0, x0, size)
        image = resize_image(image, out, out)[margin : margin + self.crop, margin : margin + self.crop]
        label = resize_nearest(label, out, out)
        target = make_target(
            label, boundary_px=self.boundary_px, contact_px=self.contact_px, separators=self.separators
        )
        target = target[:, margin : margin + self.crop, margin : margin + self.crop]
        if self.augment:
            image, target = _dihedral(image, target, rng)
            image = color_jitter(image, rng, self.color_strength)
            if self.grayscale_fraction > 0 and rng.random() < self.grayscale_fraction:
                image = to_grayscale(image)
        return Crop(scene.source, scene.name, np.ascontiguousarray(image), np.ascontiguousarray(target))

    def draw(self, rng: np.random.Generator) -> Crop:
        """A source by weight, a scene of it by item weight, then a crop."""
        source = self.choose_source(rng)
        group = self.groups[source]
        scene = group[int(rng.choice(len(group), p=self.scene_p[source]))]
        return self.crop_scene(scene, rng)

    def batch(self, rng: np.random.Generator, size: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
        """``size`` crops: images (N, 3, crop, crop) and targets (N, 2, crop, crop), both uint8."""
        crops = [self.draw(rng) for _ in range(size)]
        images = np.stack([c.image.transpose(2, 0, 1) for c in crops])
        targets = np.stack([c.target for c in crops])
        return np.ascontiguousarray(images), targets


# --------------------------------------------------------------------------- batch streams


def batch_stream(
    sampler: CropSampler,
    rng: np.random.Generator,
    *,
    batch_size: int,
    workers: int = 0,
    seed: int = 0,
    start: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[NDArray[np.uint8], NDArray[np.uint8]]]:
    """Endless batches: drawn in this process from ``rng`` (``workers=0``, reproducible and
    resumable), or by ``workers`` processes of a torch ``DataLoader``, each with its own
    generator seeded from ``(seed, start, worker id)``, for a GPU that would otherwise wait on
    the CPU's cropping.
    """
    if workers <= 0:
        while True:
            yield sampler.batch(rng, batch_size)
    import torch.utils.data

    class _Batches(torch.utils.data.IterableDataset[tuple[NDArray[np.uint8], NDArray[np.uint8]]]):
        def __iter__(self) -> Iterator[tuple[NDArray[np.uint8], NDArray[np.uint8]]]:
            info = torch.utils.data.get_worker_info()
            local = np.random.default_rng([seed, start, 0 if info is None else info.id])
            while True:
                yield sampler.batch(local, batch_size)

    loader = torch.utils.data.DataLoader(
        _Batches(), batch_size=None, num_workers=workers, pin_memory=pin_memory, prefetch_factor=4
    )
    for images, targets in loader:
        yield np.asarray(images), np.asarray(targets)
