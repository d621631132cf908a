"""Prepare ``.gpu/`` for ``scripts/gpu_train.sh`` on a lent GPU machine (see that script).

The GPU machine has PyTorch, timm and numpy but no GDAL, no segmentation-models-pytorch, no
pydantic and no network, and what travels to it is capped at 64 MiB together with the working
tree. This writes, into an ignored folder:

* ``.gpu/dataset.npz``: the DATASET.yaml's scenes as a datapack (:mod:`pipeline.datapack`);
* ``.gpu/wheels/``: the pure-Python or cp312 wheels the training code imports that the machine
  lacks, downloaded from PyPI here.

Usage: ``.venv/bin/python scripts/gpu_prepare.py [--data configs/dataset.yaml] [--quality 88]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT_MB = 64 * 1.048576  # 64 MiB: working tree and carried folders together
#: What pipeline.train and pipeline.datapack import beyond the machine's own packages (KINDS.md).
WHEELS = (
    "segmentation_models_pytorch==0.6.0",
    "pydantic==2.14.3",
    "pydantic_core==2.50.4",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "affine==3.0.1",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def download_wheels(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", "-d", str(folder)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run([*command, *WHEELS], check=True)


def tree_mb() -> float:
    """Size of what the device tool sends: tracked plus untracked, not ignored, files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.split(b"\0")  # fmt: skip
    return (
        sum((REPO / p.decode()).stat().st_size for p in listed if p and (REPO / p.decode()).is_file()) / 1e6
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "configs" / "dataset.yaml")
    parser.add_argument("--out", type=Path, default=REPO / ".gpu")
    parser.add_argument("--quality", type=int, default=88, help="JPEG quality of the packed images")
    args = parser.parse_args()

    from pipeline.datapack import write_pack
    from pipeline.dataset import load_dataset

    pack = write_pack(load_dataset(args.data), args.out / "dataset.npz", quality=args.quality)
    download_wheels(args.out / "wheels")
    carried = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 1e6
    total = carried + tree_mb()
    print(f"{pack}: {pack.stat().st_size / 1e6:.1f} MB; .gpu/ {carried:.1f} MB; with the tree {total:.1f} MB")
    if total > LIMIT_MB:
        sys.exit(f"{total:.1f} MB would travel, over the device tool's {LIMIT_MB:.1f} MB; lower --quality")


if __name__ == "__main__":
    main()
