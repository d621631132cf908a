"""Compare outline regularizers with the polygon metrics of ``footprints evaluate``, and their speed.

Variants (each runs inside the pipeline's own chain: canonical rings, hole filling, the
variant, overlap removal, clipping to the scene; see ``pipeline.vectorize.postprocess``):

* ``raw``: the pixel outlines, no simplification;
* ``douglas-peucker``: shapely ``simplify`` at ``--dp-m`` metres;
* ``ours-walls``: ``pipeline.vectorize.regularize`` as before issue 12 (oriented by its walls, no priors);
* ``ours``: the default, oriented by each outline's minimum rotated rectangle, no priors, diagonals
  that move under ``corner_area_ratio`` of the area dropped (the config's value);
* ``ours+priors``: with shared neighbour orientations and fitted rectangles
  (``--group-m``, ``--group-tolerance-deg``, ``--rectangle-iou``);
* ``buildingregulariser``: the PyPI package (0.2.5, its defaults, one process), when it is
  installed.

Sets (``--sets``):

* ``val``: validation predictions, the ``out/`` folders of ``footprints validate`` under
  ``--val DIR`` (``<scene>/out`` and ``<scene>/truth.tif``): each ``mask.tif`` is split and
  polygonized as ``footprints vectorize OUTDIR/mask.tif`` does (runs older than the 2-band
  ``probability.tif`` are not split), outlined by each variant with the recorded filters
  (``run.json``), and scored against ``truth.tif`` by ``pipeline.evaluation.evaluate``;
* ``masks``: the same scenes' true masks vectorized and post-processed, scored against the
  true masks themselves (a round trip: raw scores 1);
* ``vectors``: the OSM/GeoJSON outlines of the sources with vector labels, rasterized at
  ``--gsd`` metres (pixel centres, in the local UTM zone, at most ``--window-m`` across),
  vectorized, post-processed and scored against the vectors. Each building is burnt with a
  value of its own (a region raster, as the pipeline's split gives), so touching buildings
  stay apart and the round trip measures the outlines, not the merging of neighbours.

Speed is polygons per second of the outline step alone (the chain above), on one core.
Prints one table per set (pooled over scenes; validation also as the macro over sources).

Usage::

    PYTHONPATH=. .venv/bin/python scripts/compare_regularizers.py --val VALDIR --sets val,masks,vectors
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.features import rasterize

from pipeline.config import PipelineConfig
from pipeline.evaluation.evaluate import evaluate_scene
from pipeline.evaluation.report import summarize_scenes
from pipeline.io.vectors import PublishedScene, buildings_frame, outdir_regions
from pipeline.vectorize.buildings import (
    OutlineOptions,
    SceneRegions,
    buildings_from_regions,
    outline_options,
    scene_regions,
)
from pipeline.vectorize.measure import as_geoms
from pipeline.vectorize.overlaps import polygonal_part, remove_overlaps
from pipeline.vectorize.postprocess import fill_holes, postprocess
from pipeline.vectorize.rings import canonical_rings

Geoms = NDArray[np.object_]
REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
VECTOR_LABELS = [
    "open_ai_tanzania/labels/tanzania_sample.geojson",
    "hotosm_fair_utilities/data/1/labels.geojson",
    "hotosm_fair_utilities/data/2/labels.geojson",
    "hotosm_fair_utilities/data/3/labels.geojson",
    "hotosm_fair_utilities/data/4/labels.geojson",
    "hotosm_fair_utilities/data/5/labels.geojson",
    "hotosm_fair_models_banepa/train/osm/osm_features_ac7e343eb1faacd2.geojson",
    "kshitij_swinv2_mask2former/sample/labels/labels.geojson",
    "kshitij_swinv2_mask2former/stage2_sample/labels/*.geojson",
]
Outline = Callable[..., Geoms]
LIMIT_LABELS = 0  # tests and quick looks: the first N label files only


@dataclasses.dataclass
class Variant:
    """How one regularizer is called, and the time and polygons it took so far."""

    name: str
    change: dict[str, Any]
    outlines: Outline = postprocess
    seconds: float = 0.0
    polygons: int = 0

    def timed(self) -> Outline:
        def run(geoms: Geoms, **kwargs: Any) -> Geoms:
            t0 = time.perf_counter()
            out = self.outlines(geoms, **kwargs)
            self.seconds += time.perf_counter() - t0
            self.polygons += int(np.asarray(geoms).size)
            return out

        return run


def library_outlines(geoms: Geoms, *, fill_holes_m2: float, **_: Any) -> Geoms:
    """``buildingregulariser.regularize_geodataframe`` (defaults) inside the pipeline's chain (metric CRS)."""
    from buildingregulariser import regularize_geodataframe

    geoms = as_geoms(geoms)
    if geoms.size == 0:
        return geoms
    metric = canonical_rings(geoms)
    area = np.asarray(shapely.area(metric), dtype=np.float64)
    filled = fill_holes(metric, max_hole_m2=fill_holes_m2)
    df = gpd.GeoDataFrame({"i": np.arange(filled.size)}, geometry=list(filled), crs=None)
    done = regularize_geodataframe(df, num_cores=1)
    out = np.full(filled.size, shapely.Polygon(), dtype=object)
    parts = polygonal_part(np.asarray(done.geometry.values, dtype=object))
    order = np.lexsort((-shapely.area(parts), done["i"].to_numpy()))  # largest piece per building
    idx = done["i"].to_numpy()[order]
    first = order[np.r_[True, idx[1:] != idx[:-1]]] if idx.size else order
    out[done["i"].to_numpy()[first]] = parts[first]
    return remove_overlaps(polygonal_part(out), priority=area)


def variants(args: argparse.Namespace) -> list[Variant]:
    priors = {
        "regularize": True, "group_m": args.group_m, "group_tolerance_deg": args.group_tolerance_deg,
        "rectangle_iou": args.rectangle_iou,
    }  # fmt: skip
    for item in args.set:
        key, _, value = item.partition("=")
        priors[key] = float(value)
    out = [
        Variant("raw", {"regularize": False, "simplify_m": 0.0}),
        Variant(f"douglas-peucker {args.dp_m} m", {"regularize": False, "simplify_m": args.dp_m}),
        Variant(
            "ours-walls",
            {
                "regularize": True,
                "orientation": "walls",
                "group_m": 0.0,
                "rectangle_iou": 0.0,
                "corner_area_ratio": 0.0,
            },
        ),
        Variant(
            "ours", {"regularize": True, "orientation": "envelope", "group_m": 0.0, "rectangle_iou": 0.0}
        ),
        Variant("ours+priors", priors),
    ]
    try:
        import buildingregulariser  # noqa: F401

        out.append(Variant("buildingregulariser", {}, library_outlines))
    except ImportError:
        print("buildingregulariser is not installed: left out", file=sys.stderr)
    return [v for v in out if not args.only or v.name.split()[0] in args.only.split(",")]


# --------------------------------------------------------------------------- scoring


def score(
    variant: Variant, sr: SceneRegions, options: OutlineOptions, *, mask: Path, truth: Path, run: Path | None
) -> dict[str, Any]:
    """Outline ``sr`` with ``variant``, write an OUTDIR (``mask``, buildings, run.json) and evaluate it."""
    opts = dataclasses.replace(options, **variant.change)
    b = buildings_from_regions(
        sr.regions, scene="s", bounds=sr.bounds, options=opts, pixel_m=sr.pixel_m, outlines=variant.timed()
    )
    with tempfile.TemporaryDirectory(prefix="compare-") as tmp:
        out = Path(tmp)
        (out / "mask.tif").symlink_to(mask.resolve())
        if run is not None:
            shutil.copy(run, out / "run.json")
        frame = buildings_frame(b, scene="s", model_id="m")
        frame.to_file(out / "buildings.gpkg", layer="buildings", engine="pyogrio")
        return evaluate_scene(pred_dir=out, truth_path=truth)


def val_scenes(val: Path, limit: int | None) -> list[Path]:
    scenes = sorted(p.parent.parent for p in val.glob("*/out/run.json"))
    return scenes[:limit] if limit else scenes


def vector_truth(folder: Path, work: Path) -> Path | None:
    """The OSM outlines a validation scene's mask was burnt from, where it has them.

    The stage-2 sample's labels are one file per chip, clipped at the chip's edge: they are
    joined (a building cut by a chip edge is one polygon again).
    """
    name = folder.name
    if "hotosm_fair_utilities_data_" in name:
        return (
            REAL / "hotosm_fair_utilities" / "data" / name.split("_data_")[1].split("_")[0] / "labels.geojson"
        )
    if "_stage2_sample_source_" not in name:
        return None
    chips = sorted((REAL / "kshitij_swinv2_mask2former" / "stage2_sample" / "labels").glob("*.geojson"))
    frame = gpd.GeoDataFrame(
        pd.concat([gpd.read_file(c, engine="pyogrio") for c in chips], ignore_index=True)
    )
    joined = shapely.get_parts(shapely.union_all(np.asarray(frame.geometry.values, dtype=object)))
    path = work / f"{name}.gpkg"
    gpd.GeoDataFrame(geometry=list(joined), crs=frame.crs).to_file(path, layer="truth", engine="pyogrio")
    return path


def recorded_config(record: dict[str, Any]) -> PipelineConfig:
    """The run's config; runs from before the false-positive scorer get none (they had none)."""
    cfg = PipelineConfig.model_validate(record.get("config") or {})
    if "scorer" in (record.get("config") or {}).get("vectorize", {}):
        return cfg
    return cfg.model_copy(update={"vectorize": cfg.vectorize.model_copy(update={"scorer": "none"})})


def run_val(scenes: list[Path], vs: list[Variant], work: Path) -> dict[str, list[dict[str, Any]]]:
    """Validation predictions, scored against the true masks (and, as ``vector:<source>``, against
    the OSM outlines of the scenes that have them)."""
    results: dict[str, list[dict[str, Any]]] = {v.name: [] for v in vs}
    for folder in scenes:
        out = folder / "out"
        record = json.loads((out / "run.json").read_text())
        published = PublishedScene.from_record(record, recorded_config(record))
        sr = outdir_regions(out_dir=out, published=published)  # split as the run did, where it can
        options = outline_options(published.config.vectorize)
        vectors = vector_truth(folder, work)
        for v in vs:
            entry = score(
                v, sr, options, mask=out / "mask.tif", truth=folder / "truth.tif", run=out / "run.json"
            )
            entry["source"] = folder.name.split("-", 1)[0]
            results[v.name].append(entry)
            if vectors is not None:
                entry = score(v, sr, options, mask=out / "mask.tif", truth=vectors, run=out / "run.json")
                entry["source"] = "vector:" + folder.name.split("-", 1)[0]
                results[v.name].append(entry)
    return results


def run_masks(scenes: list[Path], vs: list[Variant]) -> dict[str, list[dict[str, Any]]]:
    """True masks vectorized, post-processed and scored against themselves."""
    results: dict[str, list[dict[str, Any]]] = {v.name: [] for v in vs}
    for folder in scenes:
        truth = folder / "truth.tif"
        sr = scene_regions(values_path=str(truth), probability_path=None)
        options = outline_options(PublishedScene.from_record({}).config.vectorize)
        for v in vs:
            entry = score(v, sr, options, mask=truth, truth=truth, run=None)
            entry["source"] = folder.name.split("-", 1)[0]
            results[v.name].append(entry)
    return results


def rasterized(label: Path, gsd: float, window_m: float, folder: Path) -> tuple[Path, Path, Path]:
    """The vectors of ``label`` burnt at ``gsd`` m in their UTM zone, one value per building (a
    region raster, so touching buildings stay apart as the split keeps them apart), its 0/1
    ``mask.tif``, and the vectors."""
    frame = gpd.read_file(label, engine="pyogrio")
    utm = frame.estimate_utm_crs()
    geoms = polygonal_part(np.asarray(frame.to_crs(utm).geometry.values, dtype=object))
    geoms = geoms[~shapely.is_empty(geoms)]
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    w, h = min(x1 - x0, window_m), min(y1 - y0, window_m)
    width, height = int(np.ceil(w / gsd)) + 2, int(np.ceil(h / gsd)) + 2
    transform = Affine(gsd, 0.0, cx - width * gsd / 2.0, 0.0, -gsd, cy + height * gsd / 2.0)
    shapes = ((g, i + 1) for i, g in enumerate(geoms))
    regions = rasterize(shapes, out_shape=(height, width), transform=transform, dtype="int32")
    folder.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 1,
        "crs": utm,
        "transform": transform,
    }
    with rasterio.open(folder / "regions.tif", "w", dtype="int32", **profile) as ds:
        ds.write(regions, 1)
    with rasterio.open(folder / "mask.tif", "w", dtype="uint8", nodata=255, **profile) as ds:
        ds.write((regions > 0).astype(np.uint8), 1)
    truth = folder / "truth.gpkg"
    gpd.GeoDataFrame(geometry=list(geoms), crs=utm).to_file(truth, layer="truth", engine="pyogrio")
    return folder / "regions.tif", folder / "mask.tif", truth


def vector_labels() -> list[Path]:
    return [p for pattern in VECTOR_LABELS for p in sorted(REAL.glob(pattern))][: LIMIT_LABELS or None]


def run_vectors(
    gsd: float, window_m: float, vs: list[Variant], work: Path
) -> dict[str, list[dict[str, Any]]]:
    """True vector outlines rasterized at ``gsd``, vectorized, post-processed, scored against the vectors."""
    results: dict[str, list[dict[str, Any]]] = {v.name: [] for v in vs}
    options = outline_options(PublishedScene.from_record({}).config.vectorize)
    for i, label in enumerate(vector_labels()):
        values, mask, truth = rasterized(label, gsd, window_m, work / f"{i}")
        sr = scene_regions(values_path=str(values), probability_path=None)
        for v in vs:
            entry = score(v, sr, options, mask=mask, truth=truth, run=None)
            entry["source"] = label.relative_to(REAL).parts[0]
            results[v.name].append(entry)
    return results


# --------------------------------------------------------------------------- report


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(title: str, results: dict[str, list[dict[str, Any]]], vs: list[Variant], *, macro: bool) -> str:
    head = ["variant", "F1@0.5", "F1@0.25", "pairs", "mean IoU", "C-IoU", "N-ratio", "PoLiS m", "tangent °",
            "rotation °", "polygons/s"]  # fmt: skip
    lines = [f"\n{title}", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in vs:
        report = summarize_scenes(results[v.name], per_source=True)
        pooled = report["overall"]
        poly = report["macro"]["polygon"] if macro else pooled["polygon"]
        objs = report["macro"] if macro else pooled
        rate = v.polygons / v.seconds if v.seconds else 0.0
        f1s = (objs["object"]["f1"], objs["object_iou25"]["f1"])
        scores = (*f1s, poly["mean_iou"], poly["c_iou"], poly["n_ratio"])
        angles = (poly["max_tangent_deg"], poly["rotation_deg"])
        cells = [v.name, *(_f(x) for x in scores[:2]), str(pooled["polygon"]["pairs"]),
                 *(_f(x) for x in scores[2:]), _f(poly["polis_m"], 2), *(_f(x, 1) for x in angles),
                 f"{rate:,.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reset(vs: list[Variant]) -> None:
    for v in vs:
        v.seconds, v.polygons = 0.0, 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--val", type=Path, help="a `footprints validate --out` folder")
    ap.add_argument("--sets", default="val,masks,vectors")
    ap.add_argument("--gsd", default="0.3,0.5", help="pixel sizes (m) of the rasterized vectors")
    ap.add_argument(
        "--window-m", type=float, default=3000.0, help="largest side of a rasterized label set (m)"
    )
    ap.add_argument("--limit", type=int, help="first N validation scenes only")
    ap.add_argument("--only", help="comma-separated variant names (raw, douglas-peucker, ours-walls, ...)")
    ap.add_argument("--dp-m", type=float, default=0.5)
    ap.add_argument("--group-m", type=float, default=5.0)
    ap.add_argument("--group-tolerance-deg", type=float, default=5.0)
    ap.add_argument("--rectangle-iou", type=float, default=0.85)
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="another vectorize setting of ours+priors, e.g. min_edge_m=1.0 (repeatable)",
    )  # fmt: skip
    args = ap.parse_args()
    vs = variants(args)
    sets = args.sets.split(",")
    if {"val", "masks"} & set(sets) and args.val is None:
        sys.exit("--val DIR is needed for the val and masks sets")
    scenes = val_scenes(args.val, args.limit) if args.val else []
    if "val" in sets:
        with tempfile.TemporaryDirectory(prefix="compare-val-") as tmp:
            results = run_val(scenes, vs, Path(tmp))
        on_masks = {k: [e for e in r if not e["source"].startswith("vector:")] for k, r in results.items()}
        on_vectors = {k: [e for e in r if e["source"].startswith("vector:")] for k, r in results.items()}
        print(table(f"Validation predictions ({len(scenes)} scenes), pooled", on_masks, vs, macro=False))
        print(table("Validation predictions, macro over sources", on_masks, vs, macro=True))
        n = len(on_vectors[vs[0].name])
        print(table(f"Validation predictions against OSM outlines ({n} scenes)", on_vectors, vs, macro=False))
        reset(vs)
    if "masks" in sets:
        results = run_masks(scenes, vs)
        print(table(f"True masks, round trip ({len(scenes)} scenes)", results, vs, macro=False), flush=True)
        reset(vs)
    if "vectors" in sets:
        with tempfile.TemporaryDirectory(prefix="compare-vectors-") as tmp:
            for gsd in (float(g) for g in args.gsd.split(",")):
                results = run_vectors(gsd, args.window_m, vs, Path(tmp) / str(gsd))
                print(
                    table(f"True vector outlines rasterized at {gsd} m", results, vs, macro=False), flush=True
                )
                reset(vs)


if __name__ == "__main__":
    from pipeline.io.gdal_env import configure_process

    configure_process()  # GDAL's block cache and S3, as the CLI sets them for itself
    main()
