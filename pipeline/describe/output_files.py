"""The files a scene publishes: their names, in publishing order, and their fingerprints.

Shared by the describing outputs (which list and checksum them) and by the output folder
(:mod:`pipeline.run.outdir`, which publishes and checks them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.digest import file_sha256

OUTPUT_NAMES = (
    "probability.tif",
    "mask.tif",
    "buildings.geojson",
    "buildings.gpkg",
    "buildings.parquet",
    "quicklook.png",
    "report.html",
    "item.json",
    "run.json",
)
#: The data files: byte-identical whenever the input, model and config are (a rerun, a resume).
DATA_NAMES = OUTPUT_NAMES[:6]
#: Files that describe the run (its timings and times, so they differ from one run to the next).
DESCRIPTION_NAMES = ("report.html", "item.json")
#: Outputs that the config can turn off (``outputs.quicklook``).
OPTIONAL_NAMES = frozenset({"quicklook.png"})


def fingerprint(path: Path) -> dict[str, Any]:
    """SHA-256 and size of a staged output file."""
    return {"sha256": file_sha256(path), "size": path.stat().st_size}


def staged_names(workdir: Path) -> list[str]:
    """The outputs staged in ``workdir``, in publishing order (``run.json`` last)."""
    return [name for name in OUTPUT_NAMES if (workdir / name).is_file()]
