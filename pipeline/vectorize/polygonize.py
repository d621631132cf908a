"""Block-wise polygonization of region rasters in bounded memory, equal to whole-raster output.

A *region* is a 4-connected component of pixels sharing one value > 0 (nodata and values
<= 0 are background). Whole-raster vectorization (:func:`reference_polygons`) is GDAL's
``shapes(values, mask=values > 0, connectivity=4)``: one polygon with holes per region.
:func:`polygonize_blocks` returns the same polygons, pixel for pixel, while holding only
one band of rows and the still-open polygons in memory.

Algorithm
---------
1. **Bands.** The raster is read in full-width bands of ``block_size`` rows (windowed
   reads; :func:`iter_raster_bands`; :func:`iter_array_bands` feeds in-memory arrays into
   the same code). Nodata and values <= 0 become 0.
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

Memory is one band (values, int32 labels, statistics) plus the pieces of components that
cross the open seam, plus the finished polygons returned. A band is ``block_size x width``
pixels: choose ``block_size`` for the raster's width.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.features import shapes
from rasterio.windows import Window
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import label as skimage_label

from pipeline.core.errors import BandMappingError, ConfigError, RasterReadError
from pipeline.core.raster import RasterGrid, first_line, open_checked
from pipeline.io.gdal_env import STREAM_CACHE_MB

FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
I64_MAX = np.iinfo(np.int64).max
BINCOUNT_ROWS = 64

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]
Geoms = NDArray[np.object_]


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


class Band(NamedTuple):
    """``block_size`` full-width rows starting at ``row_off``; background already 0."""

    row_off: int
    values: NDArray[Any]
    stats: NDArray[Any] | None


@dataclass(frozen=True)
class Components:
    """Attributes of pieces or merged components; ``first`` is the flat index row * width + col."""

    value: I64
    first: I64
    count: I64
    total: F64
    pieces: I64

    @classmethod
    def empty(cls) -> Components:
        z = np.empty(0, np.int64)
        return cls(z, z, z, np.empty(0, np.float64), z)

    def __len__(self) -> int:
        return int(self.value.shape[0])

    def take(self, index: I64) -> Components:
        return Components(*(a[index] for a in self._arrays()))

    def _arrays(self) -> tuple[Any, ...]:
        return (self.value, self.first, self.count, self.total, self.pieces)

    @staticmethod
    def concat(tables: list[Components]) -> Components:
        cols = zip(*(t._arrays() for t in tables), strict=True)
        return Components(*(np.concatenate(c) for c in cols))

    def group(self, labels: I64, n: int) -> Components:
        """Combine rows with equal ``labels`` (0..n-1): min first pixel, summed counts."""
        value = np.zeros(n, np.int64)
        value[labels] = self.value
        first = np.full(n, I64_MAX, np.int64)
        np.minimum.at(first, labels, self.first)
        count, pieces = np.zeros(n, np.int64), np.zeros(n, np.int64)
        np.add.at(count, labels, self.count)
        np.add.at(pieces, labels, self.pieces)
        total = np.asarray(np.bincount(labels, self.total, minlength=n), dtype=np.float64)
        return Components(value, first, count, total, pieces)


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


# --------------------------------------------------------------------------- bands


def iter_array_bands(
    values: NDArray[Any], *, block_size: int, stats: NDArray[Any] | None = None, nodata: float | None = None
) -> Iterator[Band]:
    """Bands of an in-memory array, prepared exactly as :func:`iter_raster_bands` does."""
    _check_block_size(block_size)
    for row_off in range(0, values.shape[0], block_size):
        rows = slice(row_off, row_off + block_size)
        block = np.asarray(values[rows])
        invalid = block == nodata if nodata is not None else None
        yield Band(row_off, _background(block, invalid), None if stats is None else stats[rows])


def iter_raster_bands(
    values_path: str, *, block_size: int, stats_path: str | None = None, band: int = 1
) -> Iterator[Band]:
    """Windowed reads of full-width bands; nodata (value or mask) becomes 0."""
    _check_block_size(block_size)
    env = rasterio.Env(GDAL_CACHEMAX=STREAM_CACHE_MB)  # rows are read once: keep GDAL's cache small
    with env, open_values(values_path, band=band) as ds, _open_stats(stats_path, ds) as st:
        for row_off in range(0, ds.height, block_size):
            window = Window(0, row_off, ds.width, min(block_size, ds.height - row_off))
            try:
                data = ds.read(band, window=window, masked=True)
                stats = None if st is None else st.read(1, window=window)
            except RasterioIOError as exc:
                raise RasterReadError(
                    f"{values_path}: reading rows {row_off}-{row_off + window.height} failed "
                    f"({first_line(exc)}); check the file is intact"
                ) from exc
            yield Band(row_off, _background(data.data, np.ma.getmaskarray(data)), stats)


def _background(block: NDArray[Any], invalid: NDArray[np.bool_] | None) -> NDArray[Any]:
    if invalid is not None:
        block = np.where(invalid, 0, block)
    if np.issubdtype(block.dtype, np.signedinteger) and block.size and block.min() < 0:
        block = np.where(block < 0, 0, block)
    return block


def _check_block_size(block_size: int) -> None:
    if block_size < 1:
        raise ConfigError(f"block_size={block_size}: must be at least 1 row; pass e.g. --block-size 1024")


# --------------------------------------------------------------------------- opening


def open_values(path: str, *, band: int = 1) -> Any:
    """Open a raster of region values, checking it exists, is readable, non-empty and integer."""
    ds = open_checked(path, missing="check the path", unreadable="pass a GeoTIFF of regions")
    if not 1 <= band <= ds.count:
        ds.close()
        raise BandMappingError(
            f"{path}: band {band} requested but the raster has {ds.count}; pick 1-{ds.count}"
        )
    if not np.issubdtype(np.dtype(ds.dtypes[band - 1]), np.integer):
        ds.close()
        raise RasterReadError(
            f"{path}: band {band} is {ds.dtypes[band - 1]}, not integer region values; "
            "convert it, e.g. `gdal_translate -ot UInt32 IN OUT`"
        )
    return ds


class _NoStats:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _open_stats(path: str | None, values_ds: Any) -> Any:
    if path is None:
        return _NoStats()
    ds = open_checked(
        path,
        what="statistics raster",
        missing="check the --stats path",
        unreadable="pass e.g. probability.tif",
    )
    if (ds.height, ds.width) != (values_ds.height, values_ds.width):
        ds.close()
        raise RasterReadError(
            f"{path}: {ds.height} x {ds.width} pixels but {values_ds.name} has "
            f"{values_ds.height} x {values_ds.width}; pass a statistics raster on the same grid"
        )
    return ds


# --------------------------------------------------------------------------- pieces


def _polygons(labels: NDArray[Any], *, row_off: int) -> tuple[Geoms, I64]:
    """GDAL polygons of ``labels > 0`` in pixel coordinates shifted by ``row_off`` rows."""
    counts: list[int] = []
    rings: list[list[tuple[float, float]]] = []
    values: list[float] = []
    shifted = Affine.translation(0, row_off)
    for geom, value in shapes(labels, mask=labels > 0, connectivity=4, transform=shifted):
        coords = geom["coordinates"]
        counts.append(len(coords))
        rings.extend(coords)
        values.append(value)
    if not counts:
        return np.empty(0, object), np.empty(0, np.int64)
    lens = np.fromiter(map(len, rings), np.int64, len(rings))
    xy = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(rings)), np.float64)
    offsets = (np.concatenate([[0], np.cumsum(lens)]), np.concatenate([[0], np.cumsum(counts)]))
    geoms = shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy.reshape(-1, 2), offsets)
    return np.asarray(geoms, dtype=object), np.asarray(values, dtype=np.int64)


def _first_pixels(geoms: Geoms, width: int) -> I64:
    """Flat index of each polygon's first pixel: the top-left vertex of its exterior."""
    if geoms.size == 0:
        return np.empty(0, np.int64)
    xy, index = shapely.get_coordinates(shapely.get_exterior_ring(geoms), return_index=True)
    key = xy[:, 1].astype(np.int64) * width + xy[:, 0].astype(np.int64)
    starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    return np.asarray(np.minimum.reduceat(key, starts), dtype=np.int64)


def value_components(values: NDArray[Any]) -> NDArray[np.int64]:
    """4-connected components of equal nonzero values, numbered 1..n (skimage)."""
    return np.asarray(skimage_label(values, background=0, connectivity=1), dtype=np.int64)  # type: ignore[no-untyped-call]


def _label(values: NDArray[Any]) -> tuple[NDArray[np.int32], int]:
    """Pieces of a band: scipy's fast binary labelling when one value is present, else skimage."""
    top = values.max(initial=0)
    if top <= 1 or not np.any((values != 0) & (values != top)):
        labels = np.empty(values.shape, np.int32)
        n = int(ndimage.label(values, structure=FOUR_CONNECTED, output=labels))
        return labels, n
    big = value_components(values)
    return big.astype(np.int32), int(big.max(initial=0))


def _piece_sums(labels: NDArray[np.int32], stats: NDArray[Any] | None, n: int) -> tuple[I64, F64]:
    """Pixel count and statistics sum per label 1..n, in row chunks (bincount copies to int64)."""
    count, total = np.zeros(n + 1, np.int64), np.zeros(n + 1, np.float64)
    for r in range(0, labels.shape[0], BINCOUNT_ROWS):
        flat = labels[r : r + BINCOUNT_ROWS].ravel()
        count += np.bincount(flat, minlength=n + 1)
        if stats is not None:
            total += np.bincount(flat, stats[r : r + BINCOUNT_ROWS].ravel(), minlength=n + 1)
    return count[1:], total[1:]


def _band_pieces(band: Band, width: int) -> tuple[Components, Geoms, NDArray[np.int32]]:
    """Pieces of one band: attributes, pixel-space polygons (piece i = label i + 1), labels."""
    labels, n = _label(band.values)
    geoms, found = _polygons(labels, row_off=band.row_off)
    geoms = geoms[np.argsort(found)]
    if geoms.shape[0] != n:
        raise RuntimeError(f"GDAL returned {geoms.shape[0]} polygons for {n} pieces; this is a bug")
    first = _first_pixels(geoms, width)
    rows, cols = np.divmod(first, width)
    count, total = _piece_sums(labels, band.stats, n)
    value = band.values[rows - band.row_off, cols].astype(np.int64)
    return Components(value, first, count, total, np.ones(n, np.int64)), geoms, labels


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


def _merge(state: _Open, band: Band, width: int) -> tuple[Components, Geoms, _Open]:
    """Add one band; return the components it finished and the new open state."""
    pieces, piece_geoms, labels = _band_pieces(band, width)
    m, n = len(state.table), len(pieces)
    k, cc = _seam_components(state, labels[0], band.values[0], n)
    groups = Components.concat([state.table, pieces]).group(cc, k)
    part_geom = np.concatenate([state.part_geom, piece_geoms])
    part_group = np.concatenate([cc[state.part_comp], cc[m:]])
    bottom = labels[-1].astype(np.int64)
    is_open = np.zeros(k, np.bool_)
    is_open[cc[m + bottom[bottom > 0] - 1]] = True
    done = ~is_open[part_group]
    _, done_geoms = _dissolve(part_geom[done], part_group[done])
    new_id = np.cumsum(is_open) - 1
    seam = np.full(width, -1, np.int64)
    seam[bottom > 0] = new_id[cc[m + bottom[bottom > 0] - 1]]
    kept = ~done
    state = _Open(
        groups.take(np.flatnonzero(is_open)), part_geom[kept], new_id[part_group[kept]], seam, band.values[-1]
    )
    return groups.take(np.flatnonzero(~is_open)), done_geoms, state


def _flush(state: _Open) -> tuple[Components, Geoms]:
    _, geoms = _dissolve(state.part_geom, state.part_comp)
    return state.table, geoms


def stream_components(bands: Iterable[Band], *, width: int) -> Iterator[tuple[Components, Geoms]]:
    """Finished components (attributes, pixel-space polygons) as soon as each band closes them."""
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


def _regions(
    chunks: Iterable[tuple[Components, Geoms]], *, width: int, transform: Affine, stats: bool, crs: CRS | None
) -> Regions:
    tables, geoms_list = [], []
    for table, geoms in chunks:
        tables.append(table)
        geoms_list.append(geoms)
    table, geoms = Components.concat(tables), np.concatenate(geoms_list)
    order = np.argsort(table.first, kind="stable")
    table, geoms = table.take(order), geoms[order]
    rows, cols = np.divmod(table.first, width)
    mean = table.total / np.maximum(table.count, 1) if stats else None
    return Regions(to_world(geoms, transform), table.value, rows, cols, table.count, mean, table.pieces, crs)


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
    chunks = stream_components(bands, width=width)
    return _regions(chunks, width=width, transform=transform, stats=stats is not None, crs=None)


def polygonize_blocks(
    values_path: str, *, block_size: int = 1024, stats_path: str | None = None, band: int = 1
) -> Regions:
    """Polygonize a raster of region values band by band; equals :func:`reference_polygons`."""
    _check_block_size(block_size)
    with open_values(values_path, band=band) as ds:
        grid = RasterGrid.of(ds)
    bands = iter_raster_bands(values_path, block_size=block_size, stats_path=stats_path, band=band)
    chunks = stream_components(bands, width=grid.width)
    return _regions(
        chunks, width=grid.width, transform=grid.transform, stats=stats_path is not None, crs=grid.crs
    )


def reference_polygons(
    values: NDArray[Any], *, transform: Affine, stats: NDArray[Any] | None = None, nodata: float | None = None
) -> Regions:
    """Whole-array vectorization: GDAL ``shapes()`` over all of ``values`` at once.

    Geometry comes from one ``shapes(values, mask=values > 0, connectivity=4)`` call (the
    values are recoded to int32 when GDAL cannot read their dtype); pixel counts and means
    from a whole-array ``skimage.measure.label``.
    """
    vals = _background(np.asarray(values), None if nodata is None else values == nodata)
    coded = vals
    if vals.dtype.name not in {"uint8", "int8", "uint16", "int16", "int32"}:
        inverse = np.unique(vals, return_inverse=True)[1].reshape(vals.shape)
        coded = np.where(vals > 0, inverse + 1, 0).astype(np.int32)
    geoms, _ = _polygons(coded, row_off=0)
    width = int(vals.shape[1])
    first = _first_pixels(geoms, width)
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
