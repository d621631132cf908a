"""Prepare ``.gpu/`` for ``scripts/gpu_train.sh`` on a lent GPU machine (see that script).

The GPU machine has PyTorch, timm and numpy but no GDAL, no segmentation-models-pytorch, no
pydantic and no network, and what travels to it is capped at 64 MiB together with the working
tree. This writes, into an ignored folder:

* ``.gpu/dataset.npz``: the DATASET.yaml's scenes as a datapack (:mod:`pipeline.training.datapack`);
* ``.gpu/wheels/``: the pure-Python or cp312 wheels the training code imports that the machine
  lacks, downloaded from PyPI here.

Usage: ``.venv/bin/python scripts/gpu_prepare.py [--data configs/dataset.yaml] [--quality 88]``

``--bench`` prepares ``scripts/gpu_bench.sh`` instead: ``.gpu/bench/`` gets the demo scene and
``site.tar.xz``, the packages a ``footprints bench`` run imports that the machine lacks (GDAL
through rasterio and pyogrio, Dask, the geometry stack, pydantic, pystac), installed for its
Python 3.12 and packed with xz (as wheels they are about 90 MB, over the 64 MiB that travel). It does not
fit yet: 68.5 MB, since pyogrio 0.13 bundles an 83 MB GDAL 3.12 beside rasterio's GDAL 3.10 (see
DESIGN.md, "Performance"); the size check below says so.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
LIMIT_MB = 64 * 1.048576  # 64 MiB: working tree and carried folders together
#: What pipeline.training.train and pipeline.training.datapack import beyond the machine's own
#: packages (KINDS.md).
WHEELS = (
    "segmentation_models_pytorch==0.6.0",
    "pydantic==2.14.3",
    "pydantic_core==2.50.4",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "affine==3.0.1",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: What a footprints bench run imports that the machine's image lacks (KINDS.md's package list);
#: versions from requirements.lock.
BENCH_PACKAGES = (
    "rasterio", "affine", "cligj", "click-plugins", "pyogrio", "pyproj", "shapely", "geopandas",
    "dask", "distributed", "partd", "locket", "zict", "tblib", "tornado",
    "pydantic", "pydantic_core", "annotated-types", "typing-inspection",
    "boto3", "botocore", "jmespath", "s3transfer", "segmentation_models_pytorch", "lazy-importer",
    "truststore", "orjson",
)  # fmt: skip


def download_wheels(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", "-d", str(folder)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run([*command, *WHEELS], check=True)


def locked(names: tuple[str, ...]) -> list[str]:
    """``name==version`` from requirements.lock for ``names``, and every pystac distribution."""
    pins = dict(
        line.split("==", 1) for line in (REPO / "requirements.lock").read_text().split() if "==" in line
    )
    wanted = [n for n in pins if n in names or n.startswith("pystac")]
    missing = set(names) - set(pins)
    if missing:
        sys.exit(f"requirements.lock has no pin for {sorted(missing)}")
    return [f"{n}=={pins[n]}" for n in wanted]


def pack_site(folder: Path) -> Path:
    """The bench's packages installed for the GPU machine's Python and packed as one .tar.xz."""
    import shutil
    import tarfile

    site = folder / "site"
    shutil.rmtree(site, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-compile",
        "--only-binary=:all:",
    ]
    command += ["--python-version", "3.12", "--implementation", "cp", "--target", str(site)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run([*command, *locked(BENCH_PACKAGES)], check=True)
    target = folder / "site.tar.xz"
    with tarfile.open(target, "w:xz", preset=9) as tar:
        for path in sorted(site.rglob("*"), key=lambda p: (p.suffix, p.name)):  # like files side by side
            tar.add(path, arcname=str(path.relative_to(site)), recursive=False)
    shutil.rmtree(site)
    return target


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
    parser.add_argument("--bench", action="store_true", help="prepare .gpu/bench/ for gpu_bench.sh instead")
    args = parser.parse_args()
    if args.bench:
        prepare_bench(args.out / "bench")
        return

    from pipeline.training.datapack import write_pack
    from pipeline.training.dataset import load_dataset

    pack = write_pack(load_dataset(args.data), args.out / "dataset.npz", quality=args.quality)
    download_wheels(args.out / "wheels")
    carried = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 1e6
    total = carried + tree_mb()
    print(f"{pack}: {pack.stat().st_size / 1e6:.1f} MB; .gpu/ {carried:.1f} MB; with the tree {total:.1f} MB")
    if total > LIMIT_MB:
        sys.exit(f"{total:.1f} MB would travel, over the device tool's {LIMIT_MB:.1f} MB; lower --quality")


def prepare_bench(folder: Path) -> None:
    import shutil

    from peak_rss import DEMO

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(DEMO, folder / DEMO.name)
    packed = pack_site(folder)
    carried = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    total = carried + tree_mb()
    size = packed.stat().st_size / 1e6
    print(f"{packed}: {size:.1f} MB; {folder} {carried:.1f} MB; with the tree {total:.1f} MB")
    if total > LIMIT_MB:
        sys.exit(f"{total:.1f} MB would travel, over the device tool's {LIMIT_MB:.1f} MB")


if __name__ == "__main__":
    main()
