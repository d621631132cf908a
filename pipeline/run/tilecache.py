"""The finished tiles of one run, as the Dask workers store and load them.

Each inferred tile's uint8 probabilities (and its bit-packed validity mask, where it has
nodata) are saved as ``<index>.npz`` under the cache's root, atomically, by the worker that
inferred it; an all-nodata tile is saved as a marker. The archive is deflated at level 1
(:data:`DEFLATE_LEVEL`), not at ``np.savez_compressed``'s 6. :class:`pipeline.run.restart.SceneState`
says where a run's cache lives and which tiles it may reuse; :mod:`pipeline.run.dispatch`
only loads and saves through it.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pipeline.io.storage import Location, read_bytes, write_bytes_atomic
from pipeline.tiling.grid import Tile

#: What :meth:`TileCache.load` returns for a tile that was all nodata (never inferred).
SKIPPED = "skipped"
CachedTile = tuple[NDArray[np.uint8], NDArray[np.uint8] | None]

#: zlib level of the cached tiles. On real 597² two-class probability tiles (`probability.tif` of
#: the 8192² bench scene), level 1 takes 7.4 ms a tile against ``np.savez_compressed``'s 19.5
#: (level 6), for 7 % more bytes (219 KB against 206): on a CPU worker that was about 5 % of a
#: tile's time, spent on files a finished run deletes.
DEFLATE_LEVEL = 1


def npz_bytes(arrays: dict[str, NDArray[np.uint8]]) -> bytes:
    """``arrays`` as an ``.npz`` archive (what ``np.load`` reads), deflated at :data:`DEFLATE_LEVEL`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=DEFLATE_LEVEL) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class TileCache:
    """Finished tiles of one run key. Small and picklable: it travels to the workers."""

    root: Location

    def location(self, tile: Tile) -> Location:
        return self.root.child(f"{tile.index}.npz")

    def load(self, tile: Tile) -> CachedTile | str | None:
        """The tile's stored ``(probability, packed_valid)``, :data:`SKIPPED` for an
        all-nodata tile, or None when it is not stored."""
        data = read_bytes(self.location(tile))
        if data is None:
            return None
        with np.load(io.BytesIO(data)) as npz:
            if "skipped" in npz.files:
                return SKIPPED
            prob = npz["probability"]
            packed = npz["packed_valid"] if "packed_valid" in npz.files else None
        if prob.dtype != np.uint8 or prob.ndim != 3 or prob.shape[1:] != (tile.height, tile.width):
            return None  # written for another grid: infer again
        return prob, packed

    def save(
        self, tile: Tile, probability: NDArray[np.uint8], packed_valid: NDArray[np.uint8] | None
    ) -> None:
        arrays = {"probability": probability}
        if packed_valid is not None:
            arrays["packed_valid"] = packed_valid
        write_bytes_atomic(self.location(tile), npz_bytes(arrays))

    def save_skipped(self, tile: Tile) -> None:
        write_bytes_atomic(self.location(tile), npz_bytes({"skipped": np.ones(1, dtype=np.uint8)}))
