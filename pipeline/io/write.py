"""Write outputs: streamed Cloud-Optimized GeoTIFFs and vector files, all atomically.

Rasters are streamed row band by row band into tiled, ZSTD-compressed scratch
GeoTIFFs, then GDAL's COG driver builds the overviews block by block and lays the
file out as a COG. Vector files are written by pyogrio. Every file is first written
under a temporary name in the destination folder and renamed into place, so an
interrupted run never leaves a partial file under a final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from numpy.typing import NDArray
from rasterio.windows import Window

from pipeline.core.errors import OutputError
from pipeline.core.raster import RasterGrid
from pipeline.io.gdal_env import STREAM_CACHE_BYTES, cache_size
from pipeline.io.scratch import RowBlocks, scratch_profile
from pipeline.tiling.stitch import MASK_NODATA

BLOCK = 512
#: GDAL's settings around every streamed write. Never GDAL_CACHEMAX: changing the cache size
#: while a raster holds dirty blocks writes them out half-filled (see :mod:`pipeline.io.scratch`).
GDAL_ENV = {"GDAL_TIFF_INTERNAL_MASK": True, "GDAL_NUM_THREADS": "2"}


STAGING_PREFIX = ".footprints-tmp-"


def sweep_stale_staging(out: Path) -> list[Path]:
    """Remove staging folders left in ``out`` by runs that were killed (their PID is gone)."""
    removed = []
    for path in out.glob(f"{STAGING_PREFIX}*"):
        pid_text = path.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or pid_alive(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        pass
    return True


@contextlib.contextmanager
def staging_dir(out_dir: str | os.PathLike[str] | None) -> Iterator[Path]:
    """A hidden scratch folder inside ``out_dir`` (or a local temporary folder when
    ``out_dir`` is None, for remote outputs), removed afterwards whatever happens."""
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="footprints-") as tmpdir:
            yield Path(tmpdir)
        return
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output folder ({exc}); choose a writable --out") from exc
    sweep_stale_staging(out)
    tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: probability.tif stores p * 255 as uint8: value * PROBABILITY_SCALE + 0 is the probability.
PROBABILITY_SCALE = 1 / 255
MASK_DESCRIPTION = "building mask: 1 building, 0 background, 255 nodata"


def probability_description(name: str) -> str:
    """A probability band's description, e.g. ``building probability``."""
    return f"{name} probability"


@dataclass
class CogSink:
    """Streams ``probability`` and ``mask`` rows into scratch GeoTIFFs, then makes COGs.

    ``probability.tif`` is uint8 0-255 with an internal nodata mask, one band per class
    that the stitcher blends (``classes``: building, then the boundary or contact class
    that splits touching buildings), each with its description and scale 1/255, offset 0;
    ``mask.tif`` is uint8 0/1 with nodata 255. Both lie on ``grid``, the input's.
    """

    workdir: Path
    grid: RasterGrid
    channels: int = 1
    classes: tuple[str, ...] = ("building", "boundary")
    rows_written: int = 0
    _prob: Any = field(init=False, repr=False)
    _mask: Any = field(init=False, repr=False)
    _blocks: RowBlocks = field(init=False, repr=False)

    def _profile(self, *, nodata: int | None, count: int = 1) -> dict[str, Any]:
        return {
            **scratch_profile(self.grid, dtype="uint8", count=count, nodata=nodata),
            # GDAL 3.10's threaded compression of a multi-band file with an internal mask races
            # ("Bad value 1 for ExtraSamples tag" now and then): compress those in one thread
            **({"NUM_THREADS": "1"} if count > 1 else {}),
        }

    def __post_init__(self) -> None:
        self._blocks = RowBlocks.of(self.grid, self._write_blocks)
        with rasterio.Env(**GDAL_ENV):
            self._prob = rasterio.open(
                self.workdir / "probability.scratch.tif", "w",
                **self._profile(nodata=None, count=self.channels),
            )  # fmt: skip
            for band in range(1, self.channels + 1):
                self._prob.set_band_description(band, probability_description(self.classes[band - 1]))
            self._prob.scales = (PROBABILITY_SCALE,) * self.channels
            self._prob.offsets = (0.0,) * self.channels
            self._mask = rasterio.open(
                self.workdir / "mask.scratch.tif", "w", **self._profile(nodata=MASK_NODATA)
            )
            self._mask.set_band_description(1, MASK_DESCRIPTION)

    def write_rows(
        self,
        *,
        row_off: int,
        probability: NDArray[np.uint8],
        mask: NDArray[np.uint8],
        valid: NDArray[np.bool_],
    ) -> None:
        """Buffer the rows; each row of scratch blocks is written whole once it fills."""
        self._blocks.add(row_off, probability, mask, valid)

    def _write_blocks(self, row_off: int, arrays: tuple[NDArray[Any], ...]) -> None:
        probability, mask, valid = arrays
        h = probability.shape[1]
        window = Window(0, row_off, self.grid.width, h)
        with rasterio.Env(**GDAL_ENV):
            for band in range(self.channels):
                self._prob.write(
                    np.where(valid, probability[band], 0).astype(np.uint8), band + 1, window=window
                )
            self._prob.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=window)
            self._mask.write(np.where(valid, mask, MASK_NODATA).astype(np.uint8), 1, window=window)
        self.rows_written = max(self.rows_written, row_off + h)

    def close(self) -> None:
        with rasterio.Env(**GDAL_ENV):
            for ds in (self._prob, self._mask):
                if ds is not None and not ds.closed:
                    ds.close()

    def finish(self) -> tuple[Path, Path]:
        """Close the scratch files and convert them to COGs in ``workdir``."""
        self.close()
        if self.rows_written != self.grid.height:
            raise OutputError(
                f"{self.workdir}: only {self.rows_written} of {self.grid.height} rows were stitched; "
                "this is a bug, please report it"
            )
        prob = self.workdir / "probability.tif"
        mask = self.workdir / "mask.tif"
        to_cog(self.workdir / "probability.scratch.tif", prob, resampling="average")
        to_cog(self.workdir / "mask.scratch.tif", mask, resampling="nearest")
        return prob, mask


def to_cog(src: Path, dst: Path, *, resampling: str) -> None:
    """Convert a tiled GeoTIFF to a COG with overviews (GDAL COG driver, streamed). It reads
    each scratch block once: a small cache (:data:`~pipeline.io.gdal_env.STREAM_CACHE_BYTES`)
    loses nothing."""
    with cache_size(STREAM_CACHE_BYTES), rasterio.Env(**GDAL_ENV):
        rasterio.shutil.copy(
            src,
            dst,
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE=BLOCK,
            OVERVIEWS="AUTO",
            OVERVIEW_RESAMPLING=resampling.upper(),
            BIGTIFF="IF_SAFER",
            NUM_THREADS="2",
        )
    src.unlink()


GEOJSON_OPTIONS = {"RFC7946": "YES", "COORDINATE_PRECISION": 7, "WRITE_BBOX": "NO"}


_GDAL_OPTIONS_LOCK = threading.Lock()


@contextlib.contextmanager
def _current_date(timestamp: str | None) -> Iterator[None]:
    """Pin the date GDAL stamps into a GeoPackage (``gpkg_contents.last_change``).

    With it, a rerun of the same scene writes a byte-identical ``buildings.gpkg``.
    GDAL config options are process-wide, hence the lock.
    """
    if timestamp is None:
        yield
        return
    import pyogrio

    with _GDAL_OPTIONS_LOCK:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": timestamp})
        try:
            yield
        finally:
            pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})


def write_vector(
    frame: Any, path: Path, *, driver: str, layer: str = "buildings", timestamp: str | None = None
) -> None:
    """Write a GeoDataFrame (GeoJSON per RFC 7946, GPKG or GeoParquet) atomically.

    The file is written under a temporary name next to ``path`` and renamed into place.
    ``timestamp`` (ISO 8601) replaces the current date that GeoPackages record.
    """
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        if driver == "Parquet":  # GeoParquet 1.1, with a bbox covering column for spatial filters
            frame.to_parquet(tmp, index=False, schema_version="1.1.0", write_covering_bbox=True)
        elif driver == "GeoJSON":
            frame.to_file(tmp, driver=driver, layer=layer, engine="pyogrio", **GEOJSON_OPTIONS)
        else:
            with _current_date(timestamp):
                frame.to_file(tmp, driver=driver, layer=layer, engine="pyogrio")
        os.replace(tmp, path)
    except ImportError as exc:
        raise OutputError(f"{path}: writing {driver} needs {exc.name}; `pip install pyarrow`") from exc
    except (OSError, RuntimeError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OutputError(f"{path}: cannot write ({message}); choose a writable output path") from exc
    finally:
        tmp.unlink(missing_ok=True)
