"""Band pieces: the heavy, band-local half of block-wise polygonization (:mod:`.polygonize`).

A raster is read in full-width bands of ``block_size`` rows (:func:`iter_raster_bands`;
:func:`iter_array_bands` feeds in-memory arrays into the same code; nodata and values <= 0
become 0). :func:`band_pieces` labels a band's regions as *pieces*, polygonizes them with GDAL
in pixel coordinates and sums their pixels: the returned :class:`BandPieces` is all that the
seam merge needs of the band (the pieces, and its first and last rows), so that the band
itself can be dropped, or never leave the process that read it.

:func:`raster_band_pieces` is the same work as one Dask task: it reads its own window of the
raster (only a path and a row offset travel to the worker, never pixels) and returns only the
band's :class:`BandPieces`. :func:`pieces_on_workers` submits those tasks in band order, at
most ``max_in_flight`` past the oldest, and yields their results in band order.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.errors import RasterioIOError
from rasterio.features import shapes
from rasterio.windows import Window
from scipy import ndimage
from skimage.measure import label as skimage_label

from pipeline.core.errors import (
    BandMappingError,
    ConfigError,
    FootprintsError,
    RasterReadError,
    WorkerLostError,
    detach,
)
from pipeline.core.raster import first_line, open_checked
from pipeline.io.gdal_env import BAND_CACHE_BYTES, cache_size

FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
I64_MAX = np.iinfo(np.int64).max
BINCOUNT_ROWS = 64

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]
Geoms = NDArray[np.object_]


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
class BandPieces:
    """One band's pieces (piece i is label i + 1) and what the seam merge needs of the band:
    the labels and values of its first and last rows."""

    table: Components
    geoms: Geoms  # pixel-space polygons, piece i at index i
    top_labels: NDArray[np.int32]
    top_values: NDArray[Any]
    bottom_labels: NDArray[np.int32]
    bottom_values: NDArray[Any]

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the polygons as one ragged coordinate array (exact, and fast to send)."""
        state = dict(self.__dict__)
        state["geoms"] = shapely.to_ragged_array(self.geoms) if self.geoms.size else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        ragged = state.pop("geoms")
        geoms = np.empty(0, object) if ragged is None else shapely.from_ragged_array(*ragged)
        self.__dict__.update(state, geoms=np.asarray(geoms, dtype=object))


# --------------------------------------------------------------------------- bands


def iter_array_bands(
    values: NDArray[Any], *, block_size: int, stats: NDArray[Any] | None = None, nodata: float | None = None
) -> Iterator[Band]:
    """Bands of an in-memory array, prepared exactly as :func:`iter_raster_bands` does."""
    check_block_size(block_size)
    for row_off in range(0, values.shape[0], block_size):
        rows = slice(row_off, row_off + block_size)
        block = np.asarray(values[rows])
        invalid = block == nodata if nodata is not None else None
        yield Band(row_off, background(block, invalid), None if stats is None else stats[rows])


def iter_raster_bands(
    values_path: str, *, block_size: int, stats_path: str | None = None, band: int = 1
) -> Iterator[Band]:
    """Windowed reads of full-width bands; nodata (value or mask) becomes 0."""
    check_block_size(block_size)
    with _opened(values_path, stats_path=stats_path, band=band) as (ds, st):
        for row_off in range(0, ds.height, block_size):
            yield _read_band(ds, st, path=values_path, row_off=row_off, block_size=block_size, band=band)


@contextlib.contextmanager
def _opened(values_path: str, *, stats_path: str | None, band: int) -> Iterator[tuple[Any, Any]]:
    """The values raster and the statistics raster (or None), checked, under no GDAL cache
    (rows are read once)."""
    with (
        cache_size(BAND_CACHE_BYTES),
        open_values(values_path, band=band) as ds,
        _open_stats(stats_path, ds) as st,
    ):
        yield ds, st


def _read_band(ds: Any, st: Any, *, path: str, row_off: int, block_size: int, band: int) -> Band:
    """The band of ``ds`` (and statistics ``st``, or None) starting at ``row_off``."""
    window = Window(0, row_off, ds.width, min(block_size, ds.height - row_off))
    try:
        data = ds.read(band, window=window, masked=True)
        stats = None if st is None else st.read(1, window=window)
    except RasterioIOError as exc:
        raise RasterReadError(
            f"{path}: reading rows {row_off}-{row_off + window.height} failed "
            f"({first_line(exc)}); check the file is intact"
        ) from exc
    return Band(row_off, background(data.data, np.ma.getmaskarray(data)), stats)


def background(block: NDArray[Any], invalid: NDArray[np.bool_] | None) -> NDArray[Any]:
    """``block`` with its ``invalid`` pixels and negative values set to 0 (background)."""
    if invalid is not None:
        block = np.where(invalid, 0, block)
    if np.issubdtype(block.dtype, np.signedinteger) and block.size and block.min() < 0:
        block = np.where(block < 0, 0, block)
    return block


#: Width (px) up to which a band is ``block_size`` rows tall; a wider raster gets bands of at
#: most ``block_size x BAND_WIDTH_PX`` pixels, so a band's memory does not grow with the width.
BAND_WIDTH_PX = 8192
#: ... but never fewer rows than this (or than ``block_size``): each seam costs a merge.
MIN_BAND_ROWS = 128


def band_rows(block_size: int, width: int) -> int:
    """Rows per band for a raster ``width`` pixels wide: ``block_size`` up to
    :data:`BAND_WIDTH_PX`, then fewer in proportion (whole multiples of 128)."""
    if width <= BAND_WIDTH_PX:
        return block_size
    rows = block_size * BAND_WIDTH_PX // width // MIN_BAND_ROWS * MIN_BAND_ROWS
    return min(block_size, max(MIN_BAND_ROWS, rows))


def check_block_size(block_size: int) -> None:
    """Refuse a band of no rows."""
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


def gdal_polygons(labels: NDArray[Any], *, row_off: int) -> tuple[Geoms, I64]:
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


def first_pixels(geoms: Geoms, width: int) -> I64:
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


def band_pieces(band: Band, width: int) -> BandPieces:
    """The pieces of one band: attributes, pixel-space polygons, and the seam rows."""
    labels, n = _label(band.values)
    geoms, found = gdal_polygons(labels, row_off=band.row_off)
    geoms = geoms[np.argsort(found)]
    if geoms.shape[0] != n:
        raise RuntimeError(f"GDAL returned {geoms.shape[0]} polygons for {n} pieces; this is a bug")
    first = first_pixels(geoms, width)
    rows, cols = np.divmod(first, width)
    count, total = _piece_sums(labels, band.stats, n)
    value = band.values[rows - band.row_off, cols].astype(np.int64)
    table = Components(value, first, count, total, np.ones(n, np.int64))
    top, bottom = band.values[0].copy(), band.values[-1].copy()  # copies: the band may go
    return BandPieces(table, geoms, labels[0].copy(), top, labels[-1].copy(), bottom)


# --------------------------------------------------------------------------- on Dask workers


def raster_band_pieces(
    values_path: str,
    *,
    row_off: int,
    block_size: int,
    width: int,
    stats_path: str | None = None,
    band: int = 1,
) -> BandPieces:
    """Worker task: read the band at ``row_off`` of the raster (and statistics) and return its pieces.

    Only paths and a row offset come in, only the band's :class:`BandPieces` go back. A
    footprints error goes back as one picklable line (:func:`~pipeline.core.errors.detach`).
    """
    error: FootprintsError | None = None
    try:
        with _opened(values_path, stats_path=stats_path, band=band) as (ds, st):
            got = _read_band(ds, st, path=values_path, row_off=row_off, block_size=block_size, band=band)
        return band_pieces(got, width)
    except FootprintsError as exc:
        error = detach(exc)
    raise error  # outside the except block: nothing unpicklable is chained to it


def pieces_on_workers(
    client: Any,
    values_path: str,
    *,
    height: int,
    width: int,
    block_size: int,
    max_in_flight: int,
    stats_path: str | None = None,
    band: int = 1,
) -> Iterator[BandPieces]:
    """Every band's :func:`raster_band_pieces`, run on ``client``'s workers, yielded in band order.

    At most ``max_in_flight`` bands are submitted past the one awaited, so the workers keep
    busy while the caller merges, and results wait in bounded memory. Tasks still pending
    when the caller stops (an error) are cancelled.
    """
    check_block_size(block_size)
    offsets = iter(range(0, height, block_size))
    pending: deque[tuple[int, Any]] = deque()

    def submit() -> None:
        for row_off in itertools.islice(offsets, max(1, max_in_flight) - len(pending)):
            fut = client.submit(
                raster_band_pieces, values_path, row_off=row_off, block_size=block_size, width=width,
                stats_path=stats_path, band=band, pure=False,
            )  # fmt: skip
            pending.append((row_off, fut))

    try:
        submit()
        while pending:
            row_off, fut = pending.popleft()
            submit()  # the next band starts before this one is awaited
            result = _band_result(fut, row_off=row_off, block_size=block_size)
            fut.release()
            yield result
    finally:
        if pending:
            client.cancel([fut for _, fut in pending])


def _band_result(fut: Any, *, row_off: int, block_size: int) -> BandPieces:
    """The task's result; a band whose workers kept dying is a :class:`WorkerLostError`."""
    from distributed.scheduler import KilledWorker

    try:
        result: BandPieces = fut.result()
    except KilledWorker as exc:
        raise WorkerLostError(
            f"rows {row_off}-{row_off + block_size}: the Dask workers polygonizing them died "
            f"{int(exc.allowed_failures) + 1} times (out of memory?); lower vectorize.block_size "
            "or dask.n_workers, or give the workers more memory"
        ) from exc
    return result
