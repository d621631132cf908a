"""Peak RSS of `footprints segment` on a generated large RGB GeoTIFF.

    python scripts/peak_rss.py --size 8192 [--source SCENE.tif] [--workdir DIR] [--config FILE]

The scene is the source image (default: the Inria demo scene) repeated, mirrored
alternately so that seams look natural, over SIZE x SIZE pixels, written block by block.
Memory is sampled every 50 ms over the whole process tree (client and Dask workers).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.rss import run_with_peak_rss

DEMO = Path(__file__).resolve().parents[2] / "shared/data/real/inria_austin/images/aerial_sample.tif"


def write_mosaic(source: Path, out: Path, size: int) -> None:
    with rasterio.open(source) as src:
        img = src.read([1, 2, 3])
        res = src.res[0]
        crs = src.crs
        left, top = src.bounds.left, src.bounds.top
    h, w = img.shape[1:]
    profile = {
        "driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8", "crs": crs,
        "transform": rasterio.transform.from_origin(left, top, res, res), "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    reps = -(-size // w)
    row_tiles = [img if (j % 2 == 0) else img[:, :, ::-1] for j in range(reps)]
    strip = np.concatenate(row_tiles, axis=2)[:, :, :size]
    with rasterio.open(out, "w", **profile) as ds:
        for i, r in enumerate(range(0, size, h)):
            band = strip if i % 2 == 0 else strip[:, ::-1, :]
            rows = min(h, size - r)
            ds.write(band[:, :rows], window=Window(0, r, size, rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--source", type=Path, default=DEMO)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--config", type=Path, default=None, help="pipeline YAML passed to segment")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="footprints-rss-"))
    work.mkdir(parents=True, exist_ok=True)
    scene = work / f"mosaic{args.size}.tif"
    if not scene.exists():
        write_mosaic(args.source, scene, args.size)
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli.main",
        "segment",
        str(scene),
        "--out",
        str(work / "out"),
        "--force",
    ]
    if args.config is not None:
        cmd += ["--config", str(args.config)]
    t0 = time.perf_counter()
    rc, peak, err = run_with_peak_rss(cmd, timeout=3600)
    wall = time.perf_counter() - t0
    if rc != 0:
        sys.exit(err[-3000:])
    record = json.loads((work / "out" / "run.json").read_text())
    print(json.dumps({
        "size": args.size, "peak_rss_mb": round(peak / 2**20, 1), "wall_s": round(wall, 1),
        "seconds": record["seconds"], "counts": record["counts"],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
