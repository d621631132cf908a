"""Block-wise polygonization of region rasters in bounded memory, equal to whole-raster output.

A *region* is a 4-connected component of pixels sharing one value > 0 (nodata and values
<= 0 are background). Whole-raster vectorization (:func:`reference_polygons`) is GDAL's
``shapes(values, mask=values > 0, connectivity=4)``: one polygon with holes per region.
:func:`polygonize_blocks` returns the same polygons, pixel for pixel, while holding only
one band of rows and the still-open polygons in memory.

Algorithm
---------
1. **Bands.** The raster is read in full-width bands of ``block_size`` rows (windowed
   reads; :mod:`pipeline.vectorize.pieces`, which also feeds in-memory arrays into the same
   code). Nodata and values <= 0 become 0.
2. **Pieces.** Inside a band, regions are labelled as *pieces*: ``scipy.ndimage.label``
   (4-connectivity) when the band holds one nonzero value (a mask), ``skimage.measure.label``
   (value-aware, connectivity 1) otherwise. GDAL polygonizes the piece labels in *pixel coordinates*
   (``transform`` = row offset), so every vertex is an integer and exact. Per piece:
   value, first pixel (the top-left vertex of its exterior ring), pixel count and, with a
   statistics raster, the sum of its pixels (``np.bincount``).
3. **Seams.** Between band k's last row and band k+1's first row, an open component above
   and a piece below are joined when their values are equal at the same column (one
   vectorized comparison, pairs deduplicated with ``np.unique``). Connected components of
   this small graph (``scipy.sparse.csgraph``: open components + new pieces) are the new
   components: a union-find over pieces in which only open components are kept.
4. **Emission.** A component whose pieces do not reach the band's last row can grow no
   more: it is emitted now. Its geometry is ``shapely.union_all`` of its piece polygons
   (only for components made of several pieces). Pieces tile the plane with integer
   vertices, so the overlay is exact and the union equals GDAL's whole-raster polygon;
   ``simplify(0)`` then drops the collinear vertices left on the seams, so the polygon is
   even vertex-identical to GDAL's (up to ring start and orientation).
   Pixel counts and sums add up through the merge; ``mean = sum / count``.
5. **Output.** Components are sorted by their first pixel in raster scan order (row, col),
   which gives deterministic order and stable ids, then mapped to the raster CRS with the
   affine transform applied exactly as GDAL applies it (``c + x*a + y*b``), so coordinates
   are bit-identical to ``shapes(..., transform=transform)``.

Steps 1-2 are band-local and the heavy part; steps 3-4 are the seam bookkeeping, which
needs of a band only its pieces and its first and last rows
(:class:`~pipeline.vectorize.pieces.BandPieces`). Given a Dask ``client``,
:func:`polygonize_blocks` runs steps 1-2 of each band as a worker task that reads its own
window (:func:`~pipeline.vectorize.pieces.pieces_on_workers`: paths go to the workers, never
pixels), and merges the results in band order in this process while the workers go on with
the next bands. The merge is the same code either way, on the same pieces, so the regions
are identical, in the same order.

Memory is one band (values, int32 labels, statistics) plus the pieces of components that
cross the open seam, plus the finished polygons returned; with workers, each worker holds
the band it is polygonizing, and this process the pieces of up to ``max_in_flight`` bands.
A band is ``block_size x width`` pixels up to a width of 8192; wider rasters get
proportionally fewer rows per band (:func:`~pipeline.vectorize.pieces.band_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.core.raster import RasterGrid
from pipeline.vectorize.pieces import (
    F64,
    I64,
    BandPieces,
    Components,
    Geoms,
    background,
    band_pieces,
    band_rows,
    check_block_size,
    first_pixels,
    gdal_polygons,
    iter_array_bands,
    iter_raster_bands,
    open_values,
    pieces_on_workers,
    value_components,
)

__all__ = [
    "Regions",
    "open_values",
    "polygonize_array",
    "polygonize_blocks",
    "reference_polygons",
    "to_world",
]


@dataclass(frozen=True)
class Regions:
    """One polygon per region, sorted by first pixel (row, col) in raster scan order.

    ``geometry`` is in the raster CRS (``crs``; ``None`` for arrays). ``pieces`` is the
    number of band pieces merged into each polygon (1 for the whole-raster reference).
    ``mean`` is the mean of the statistics raster over each region, when one was given.
    """

    geometry: Geoms
    value: I64
    first_row: I64
    first_col: I64
    pixel_count: I64
    mean: F64 | None
    pieces: I64
    crs: CRS | None = None

    def __len__(self) -> int:
        return int(self.geometry.shape[0])


@dataclass(frozen=True)
class _Open:
    """Components touching the open seam and the state of that seam."""

    table: Components
    part_geom: Geoms
    part_comp: I64
    seam_comp: I64
    seam_value: NDArray[Any]

    @classmethod
    def start(cls, width: int) -> _Open:
        none = np.full(width, -1, np.int64)
        return cls(Components.empty(), np.empty(0, object), np.empty(0, np.int64), none, np.zeros(width))


# --------------------------------------------------------------------------- merging


def _dissolve(geoms: Geoms, keys: I64) -> tuple[I64, Geoms]:
    """Union of the geometries sharing a key; returns sorted unique keys and geometries."""
    if keys.size == 0:
        return keys, geoms
    order = np.argsort(keys, kind="stable")
    keys, geoms = keys[order], geoms[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], keys.size].astype(np.int64)
    out = geoms[starts]
    merged = np.flatnonzero(ends - starts > 1)
    for i in merged:
        out[i] = shapely.union_all(geoms[starts[i] : ends[i]])
    out[merged] = shapely.simplify(out[merged], 0.0)  # drop the collinear vertices left on seams
    return keys[starts], out


def _seam_components(
    state: _Open, top: NDArray[np.int32], top_value: NDArray[Any], n: int
) -> tuple[int, I64]:
    """Components of open components (nodes 0..m-1) and new pieces (m..m+n-1) across the seam."""
    m = len(state.table)
    joined = (state.seam_comp >= 0) & (top > 0) & (state.seam_value == top_value)
    pairs = np.unique(state.seam_comp[joined] * (m + n) + (top[joined].astype(np.int64) - 1 + m))
    a, b = np.divmod(pairs, m + n)
    graph = coo_matrix((np.ones(pairs.size, np.int8), (a, b)), shape=(m + n, m + n))
    k, cc = connected_components(graph, directed=False)
    return int(k), np.asarray(cc, dtype=np.int64)


def _merge(state: _Open, band: BandPieces, width: int) -> tuple[Components, Geoms, _Open]:
    """Add one band's pieces; return the components it finished and the new open state."""
    m, n = len(state.table), len(band.table)
    k, cc = _seam_components(state, band.top_labels, band.top_values, n)
    groups = Components.concat([state.table, band.table]).group(cc, k)
    part_geom = np.concatenate([state.part_geom, band.geoms])
    part_group = np.concatenate([cc[state.part_comp], cc[m:]])
    bottom = band.bottom_labels.astype(np.int64)
    is_open = np.zeros(k, np.bool_)
    is_open[cc[m + bottom[bottom > 0] - 1]] = True
    done = ~is_open[part_group]
    _, done_geoms = _dissolve(part_geom[done], part_group[done])
    new_id = np.cumsum(is_open) - 1
    seam = np.full(width, -1, np.int64)
    seam[bottom > 0] = new_id[cc[m + bottom[bottom > 0] - 1]]
    kept = ~done
    state = _Open(
        groups.take(np.flatnonzero(is_open)),
        part_geom[kept],
        new_id[part_group[kept]],
        seam,
        band.bottom_values,
    )
    return groups.take(np.flatnonzero(~is_open)), done_geoms, state


def _flush(state: _Open) -> tuple[Components, Geoms]:
    _, geoms = _dissolve(state.part_geom, state.part_comp)
    return state.table, geoms


def stream_components(bands: Iterable[BandPieces], *, width: int) -> Iterator[tuple[Components, Geoms]]:
    """Finished components (attributes, pixel-space polygons) as soon as each band closes them;
    ``bands`` are the pieces of every band, in order."""
    state = _Open.start(width)
    for band in bands:
        done, geoms, state = _merge(state, band, width)
        yield done, geoms
    yield _flush(state)


# --------------------------------------------------------------------------- output


def to_world(geoms: Geoms, transform: Affine) -> Geoms:
    """Pixel to CRS coordinates, computed like GDAL does (``c + x*a + y*b``), bit for bit."""
    t = transform

    def fn(xy: F64) -> F64:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([t.c + x * t.a + y * t.b, t.f + x * t.d + y * t.e])

    return np.asarray(shapely.transform(geoms, fn), dtype=object)


#: Receives each group of regions as the merge finishes them (see :func:`polygonize_blocks`).
OnRegions = Callable[["Regions"], None]


def _sorted_regions(table: Components, geoms: Geoms, *, width: int, stats: bool, crs: CRS | None) -> Regions:
    """Components and their CRS polygons as :class:`Regions`, sorted by first pixel."""
    order = np.argsort(table.first, kind="stable")
    table, geoms = table.take(order), geoms[order]
    rows, cols = np.divmod(table.first, width)
    mean = table.total / np.maximum(table.count, 1) if stats else None
    return Regions(geoms, table.value, rows, cols, table.count, mean, table.pieces, crs)


def _regions(
    chunks: Iterable[tuple[Components, Geoms]],
    *,
    width: int,
    transform: Affine,
    stats: bool,
    crs: CRS | None,
    on_regions: OnRegions | None = None,
) -> Regions:
    tables, geoms_list = [], []
    for table, geoms in chunks:  # into the CRS as they come: no scene's worth of vertex tables at once
        world = to_world(geoms, transform) if geoms.size else geoms
        if on_regions is not None and len(table):
            on_regions(_sorted_regions(table, world, width=width, stats=stats, crs=crs))
        tables.append(table)
        geoms_list.append(world)
    return _sorted_regions(
        Components.concat(tables), np.concatenate(geoms_list), width=width, stats=stats, crs=crs
    )


def polygonize_array(
    values: NDArray[Any],
    *,
    transform: Affine,
    block_size: int,
    stats: NDArray[Any] | None = None,
    nodata: float | None = None,
) -> Regions:
    """Block-wise polygonization of an in-memory array (same code path as the raster reader)."""
    bands = iter_array_bands(values, block_size=block_size, stats=stats, nodata=nodata)
    width = int(values.shape[1])
    chunks = stream_components((band_pieces(b, width) for b in bands), width=width)
    return _regions(chunks, width=width, transform=transform, stats=stats is not None, crs=None)


def polygonize_blocks(
    values_path: str,
    *,
    block_size: int = 1024,
    stats_path: str | None = None,
    band: int = 1,
    client: Any | None = None,
    max_in_flight: int = 4,
    on_regions: OnRegions | None = None,
) -> Regions:
    """Polygonize a raster of region values band by band; equals :func:`reference_polygons`.

    With a Dask ``client``, the bands are labelled and polygonized on its workers (at most
    ``max_in_flight`` ahead of the merge) and only their seams are merged here; the regions
    are the same as without one. ``on_regions`` is called with each group of regions as soon
    as the merge finishes them (a :class:`Regions` of their own, sorted by first pixel, in the
    CRS), while the workers go on with the next bands; every region is in exactly one group.
    """
    check_block_size(block_size)
    with open_values(values_path, band=band) as ds:
        grid = RasterGrid.of(ds)
    block_size = band_rows(block_size, grid.width)
    pieces: Iterable[BandPieces]
    if client is None:
        bands = iter_raster_bands(values_path, block_size=block_size, stats_path=stats_path, band=band)
        pieces = (band_pieces(b, grid.width) for b in bands)
    else:
        pieces = pieces_on_workers(
            client, values_path, height=grid.height, width=grid.width, block_size=block_size,
            max_in_flight=max_in_flight, stats_path=stats_path, band=band,
        )  # fmt: skip
    chunks = stream_components(pieces, width=grid.width)
    return _regions(
        chunks, width=grid.width, transform=grid.transform, stats=stats_path is not None, crs=grid.crs,
        on_regions=on_regions,
    )  # fmt: skip


def reference_polygons(
    values: NDArray[Any], *, transform: Affine, stats: NDArray[Any] | None = None, nodata: float | None = None
) -> Regions:
    """Whole-array vectorization: GDAL ``shapes()`` over all of ``values`` at once.

    Geometry comes from one ``shapes(values, mask=values > 0, connectivity=4)`` call (the
    values are recoded to int32 when GDAL cannot read their dtype); pixel counts and means
    from a whole-array ``skimage.measure.label``.
    """
    vals = background(np.asarray(values), None if nodata is None else values == nodata)
    coded = vals
    if vals.dtype.name not in {"uint8", "int8", "uint16", "int16", "int32"}:
        inverse = np.unique(vals, return_inverse=True)[1].reshape(vals.shape)
        coded = np.where(vals > 0, inverse + 1, 0).astype(np.int32)
    geoms, _ = gdal_polygons(coded, row_off=0)
    width = int(vals.shape[1])
    first = first_pixels(geoms, width)
    order = np.argsort(first, kind="stable")
    geoms, first = geoms[order], first[order]
    rows, cols = np.divmod(first, width)
    labels = value_components(vals)
    which = labels[rows, cols]
    count = np.bincount(labels.ravel())[which].astype(np.int64)
    mean = None
    if stats is not None:
        mean = np.bincount(labels.ravel(), stats.ravel().astype(np.float64))[which] / count
    value = vals[rows, cols].astype(np.int64)
    return Regions(to_world(geoms, transform), value, rows, cols, count, mean, np.ones(len(geoms), np.int64))
