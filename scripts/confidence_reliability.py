"""The reliability table of ``confidence`` for the OUTDIRs of an earlier ``footprints validate`` run.

``footprints validate`` prints it for the scenes it segments; this script computes the same
table (:func:`pipeline.evaluation.validation.scene_reliability`, then
:func:`pipeline.evaluation.reliability.pool`)
from a validate output folder without segmenting again: each ``<scene>/out`` is vectorized
with its recorded config but no confidence filter and matched against ``<scene>/truth.tif``.

Usage::

    PYTHONPATH=. .venv/bin/python scripts/confidence_reliability.py --val VALDIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.evaluation import reliability
from pipeline.evaluation.validation import scene_reliability
from scripts.compare_regularizers import recorded_config, val_scenes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--val", type=Path, required=True, help="a `footprints validate --out` folder")
    ap.add_argument("--min-area-m2", type=float, default=8.0)
    args = ap.parse_args()
    tables = []
    for folder in val_scenes(args.val, None):
        out = folder / "out"
        config = recorded_config(json.loads((out / "run.json").read_text()))
        truth = folder / "truth.tif"
        tables.append(scene_reliability(out, truth, config=config, min_area_m2=args.min_area_m2))
    print("| confidence | polygons | matched | precision |\n|---|---|---|---|")
    for row in reliability.pool(tables):
        precision = "–" if row["precision"] is None else f"{row['precision']:.3f}"
        print(f"| {row['bin']} | {row['count']} | {row['matched']} | {precision} |")


if __name__ == "__main__":
    from pipeline.io.gdal_env import configure_process

    configure_process()  # GDAL's block cache and S3, as the CLI sets them for itself
    main()
