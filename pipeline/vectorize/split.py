"""Split: the building mask into one region per building, streamed.

The model's second channel marks each building's inner border (class ``boundary``) or
the strip where two buildings meet (class ``contact``, see :func:`pipeline.training.dataset.contact_target`);
both are read the same way. Building *cores* (``building >= seed_threshold``,
``boundary < boundary_threshold``, inside the mask) separate neighbours whose masks touch.
Cores are the seeds; each is grown back over the mask by a geodesic dilation of at most
``grow_px`` pixels (4-connected; where two seeds arrive on the same step the larger label
wins). Mask pixels no seed reaches form regions of their own (value :data:`UNSEEDED`), so
the split only ever subdivides the mask and never drops a building.

Everything streams in row bands, in two passes over scratch rasters:

1. :class:`SeedSink` receives stitched rows, labels the cores of each band with
   provisional ids and joins ids that touch across the seam with a union-find. Union
   always keeps the smaller id as the root, so a root is its set's first id in raster
   scan order, which makes the final numbering equal to a whole-raster labelling.
2. :meth:`SeedSink.finish` resolves the union-find, drops cores under
   ``min_seed_px``, then re-reads the bands with a halo of ``grow_px`` rows, grows
   the seeds and writes the region raster. A pixel's label after ``grow_px`` steps
   depends only on pixels within ``grow_px``, so the halo makes each band exact.

:func:`split_array` is the same algorithm on whole arrays; tests hold the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.windows import Window
from scipy import ndimage

from pipeline.core.raster import RasterGrid
from pipeline.io.gdal_env import WINDOW_CACHE_BYTES, cache_size
from pipeline.io.scratch import RowBlocks, release_blocks, scratch_profile
from pipeline.tiling.stitch import MASK_NODATA, threshold_u8

#: Region value of mask pixels that no seed reaches.
UNSEEDED = np.uint32(np.iinfo(np.uint32).max - 1)
FOUR = ndimage.generate_binary_structure(2, 1)


def cores(
    *,
    building: NDArray[np.uint8],
    boundary: NDArray[np.uint8] | None,
    mask: NDArray[np.bool_],
    seed_threshold: float,
    boundary_threshold: float,
) -> NDArray[np.bool_]:
    """Building cores: confident building pixels away from the predicted boundary."""
    core = mask & (building >= threshold_u8(seed_threshold))
    if boundary is not None:
        core &= boundary < threshold_u8(boundary_threshold)
    return core


def grow(labels: NDArray[np.uint32], mask: NDArray[np.bool_], steps: int) -> NDArray[np.uint32]:
    """Geodesic 4-connected dilation of ``labels`` inside ``mask``, ``steps`` times.

    Each step gives every unlabelled mask pixel the largest label among its four neighbours
    (as they were before the step). Only those pixels are visited: they are a small share of
    the band, so a step costs their count, not the band's area.
    """
    height, width = labels.shape
    stride = width + 2  # a zero frame: neighbours outside the array are background
    framed = np.zeros((height + 2, stride), labels.dtype)
    framed[1:-1, 1:-1] = labels
    flat = framed.ravel()
    rows, cols = np.nonzero(mask & (labels == 0))
    todo = (rows + 1) * stride + cols + 1
    for _ in range(steps):
        best = np.maximum(flat[todo - 1], flat[todo + 1])
        np.maximum(best, flat[todo - stride], out=best)
        np.maximum(best, flat[todo + stride], out=best)
        reached = best > 0
        if not reached.any():
            break
        flat[todo[reached]] = best[reached]
        todo = todo[~reached]
    return framed[1:-1, 1:-1].copy()


def finish_regions(grown: NDArray[np.uint32], mask: NDArray[np.bool_]) -> NDArray[np.uint32]:
    """Mask pixels that no seed reached get :data:`UNSEEDED`; background stays 0."""
    out = np.where(mask, grown, 0).astype(np.uint32)
    out[mask & (grown == 0)] = UNSEEDED
    return out


def split_array(
    *,
    building: NDArray[np.uint8],
    boundary: NDArray[np.uint8] | None,
    mask: NDArray[np.bool_],
    seed_threshold: float = 0.5,
    boundary_threshold: float = 0.5,
    min_seed_px: int = 4,
    grow_px: int = 8,
) -> NDArray[np.uint32]:
    """Whole-array reference of the streamed split (same numbering and tie rule)."""
    core = cores(
        building=building, boundary=boundary, mask=mask,
        seed_threshold=seed_threshold, boundary_threshold=boundary_threshold,
    )  # fmt: skip
    labels, n = ndimage.label(core, structure=FOUR)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_seed_px
    keep[0] = False
    lut = np.zeros(n + 1, dtype=np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return finish_regions(grow(lut[labels], mask, grow_px), mask)


@dataclass
class UnionFind:
    """Growable union-find over provisional ids 1..n; the smaller id is always the root."""

    parent: NDArray[np.int64] = field(default_factory=lambda: np.zeros(1, np.int64))
    size: NDArray[np.int64] = field(default_factory=lambda: np.zeros(1, np.int64))

    def add(self, sizes: NDArray[np.int64]) -> int:
        """Append ``len(sizes)`` singleton sets; returns the first new id."""
        first = int(self.parent.shape[0])
        self.parent = np.concatenate([self.parent, np.arange(first, first + sizes.shape[0])])
        self.size = np.concatenate([self.size, sizes.astype(np.int64)])
        return first

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[i] != root:
            self.parent[i], i = root, int(self.parent[i])
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> NDArray[np.int64]:
        """Root of every id, fully compressed (vectorized)."""
        p = self.parent.copy()
        while True:
            q = p[p]
            if np.array_equal(q, p):
                return p
            p = q

    def final_labels(self, min_size: int) -> NDArray[np.uint32]:
        """Lookup provisional id -> final label 1..k (0 for dropped sets), scan order."""
        roots = self.roots()
        total = np.bincount(roots, weights=self.size, minlength=roots.shape[0])
        ids = np.arange(roots.shape[0])
        keep_root = (roots == ids) & (total >= min_size) & (ids > 0)
        rank = np.zeros(roots.shape[0], dtype=np.uint32)
        rank[keep_root] = np.arange(1, int(keep_root.sum()) + 1, dtype=np.uint32)
        return rank[roots]


def _scratch(path: Path, grid: RasterGrid) -> Any:
    return rasterio.open(path, "w", **scratch_profile(grid, dtype="uint32", nodata=0))


@dataclass
class SeedSink:
    """A :class:`pipeline.tiling.stitch.RowSink` that labels building cores as rows stream in.

    Its scratch rasters lie on ``grid``, the scene's.
    """

    workdir: Path
    grid: RasterGrid
    seed_threshold: float = 0.5
    boundary_threshold: float = 0.5
    uf: UnionFind = field(default_factory=UnionFind)
    _prev: NDArray[np.int64] | None = None
    _ds: Any = field(init=False, repr=False)
    _blocks: RowBlocks = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._ds = _scratch(self.seeds_path, self.grid)
        self._blocks = RowBlocks.of(self.grid, self._write_blocks)

    @property
    def seeds_path(self) -> Path:
        return self.workdir / "seeds.scratch.tif"

    @property
    def regions_path(self) -> Path:
        return self.workdir / "regions.scratch.tif"

    def write_rows(
        self,
        *,
        row_off: int,
        probability: NDArray[np.uint8],
        mask: NDArray[np.uint8],
        valid: NDArray[np.bool_],
    ) -> None:
        core = cores(
            building=probability[0], boundary=probability[1] if probability.shape[0] > 1 else None,
            mask=(mask == 1) & valid, seed_threshold=self.seed_threshold,
            boundary_threshold=self.boundary_threshold,
        )  # fmt: skip
        labels, n = ndimage.label(core, structure=FOUR)
        first = self.uf.add(np.bincount(labels.ravel(), minlength=n + 1)[1:])
        prov = np.where(labels > 0, labels.astype(np.int64) + (first - 1), 0)
        if self._prev is not None:
            both = (self._prev > 0) & (prov[0] > 0)
            for a, b in np.unique(np.stack([self._prev[both], prov[0][both]], axis=1), axis=0):
                self.uf.union(int(a), int(b))
        self._prev = prov[-1].copy()
        self._blocks.add(row_off, prov.astype(np.uint32))  # written whole block rows at a time

    def _write_blocks(self, row_off: int, arrays: tuple[NDArray[Any], ...]) -> None:
        (seeds,) = arrays
        self._ds.write(seeds, 1, window=Window(0, row_off, self.grid.width, seeds.shape[0]))

    def close(self) -> None:
        if not self._ds.closed:
            self._ds.close()

    def finish(
        self, *, mask_path: Path, min_seed_px: int, grow_px: int, band_rows: int = 512, band_cols: int = 2048
    ) -> Path:
        """Resolve the seeds, grow them inside the mask and write the region raster.

        The rasters are read in windows of ``band_rows`` x ``band_cols`` (whole blocks of
        the scratch rasters) with a halo of ``grow_px`` on every side, through a GDAL cache of
        :data:`~pipeline.io.gdal_env.WINDOW_CACHE_BYTES`, so memory does not grow with the
        scene's width.
        """
        self.close()
        lut = self.uf.final_labels(min_seed_px)
        height, width = self.grid.shape
        with (
            cache_size(WINDOW_CACHE_BYTES),
            rasterio.open(self.seeds_path) as seeds,
            rasterio.open(mask_path) as mask_ds,
            _scratch(self.regions_path, self.grid) as out,
        ):
            for r0 in range(0, height, band_rows):
                r1 = min(height, r0 + band_rows)
                for c0 in range(0, width, band_cols):
                    c1 = min(width, c0 + band_cols)
                    halo = Window.from_slices(
                        (max(0, r0 - grow_px), min(height, r1 + grow_px)),
                        (max(0, c0 - grow_px), min(width, c1 + grow_px)),
                    )
                    mask = mask_ds.read(1, window=halo) == 1
                    grown = grow(lut[seeds.read(1, window=halo)], mask, grow_px)
                    rows = slice(r0 - int(halo.row_off), r1 - int(halo.row_off))
                    cols = slice(c0 - int(halo.col_off), c1 - int(halo.col_off))
                    regions = finish_regions(grown[rows, cols], mask[rows, cols])
                    out.write(regions, 1, window=Window(c0, r0, c1 - c0, r1 - r0))
                release_blocks()  # the band's blocks are whole: out of GDAL's cache, into the file
        self.seeds_path.unlink()
        return self.regions_path


def split_from_outputs(
    *,
    mask_path: Path,
    probability_path: Path,
    workdir: Path,
    seed_threshold: float,
    boundary_threshold: float,
    min_seed_px: int,
    grow_px: int,
    band_rows: int = 256,
) -> Path:
    """The region raster of a published scene, from its ``mask.tif`` and 2-band ``probability.tif``.

    The probabilities stream through the same :class:`SeedSink` as during the run (nodata
    pixels are 0 in the file and 255 in the mask, so they are never cores), and the seeds
    grow over the same mask: the regions, and so the polygons, equal those of the run.
    """
    with rasterio.open(probability_path) as prob, rasterio.open(mask_path) as mask_ds:
        sink = SeedSink(
            workdir=workdir, grid=RasterGrid.of(mask_ds),
            seed_threshold=seed_threshold, boundary_threshold=boundary_threshold,
        )  # fmt: skip
        try:
            for r0 in range(0, mask_ds.height, band_rows):
                window = Window(0, r0, mask_ds.width, min(band_rows, mask_ds.height - r0))
                mask = mask_ds.read(1, window=window)
                sink.write_rows(
                    row_off=r0, probability=prob.read([1, 2], window=window), mask=mask,
                    valid=mask != MASK_NODATA,
                )  # fmt: skip
        finally:
            sink.close()
    return sink.finish(mask_path=mask_path, min_seed_px=min_seed_px, grow_px=grow_px)
