"""Measure polygon post-processing: raw pixel polygons vs simplified vs regularized.

For each (prediction, truth) pair, the prediction's polygons are post-processed in the
metric frame of the scene (:class:`pipeline.geo.MetricFrame`) and scored against the
truth polygons (4-connected components of the truth mask, ``reference_polygons``):

* mean IoU per building: each output polygon is matched to the truth polygon of highest
  IoU (candidates from an STRtree; 0 when it touches none), averaged over buildings;
* total vertex count (closing coordinates not counted) and vertices per building.

Polygons under ``--min-area-m2`` are dropped on both sides first, as the pipeline does.

Predictions are given as

* ``--pred OUTDIR --truth LABELS``: a ``footprints segment`` output folder; its polygons
  come from ``regions.scratch.tif`` when present (split regions), else ``mask.tif``
  (building = 1, 255 = nodata);
* ``--pair PRED TRUTH``: PRED is a mask/region raster (value > 0) or a vector file of
  polygons (GeoJSON, GPKG, ...);
* ``--rasterize VECTOR GSD``: true *vector* outlines are rasterized at GSD metres (in a
  ``--window-m`` square around their median centre, in the metric frame) and the pixel
  polygons are scored against the vectors themselves: how close each variant gets to
  the real outlines, e.g. with ``open_ai_tanzania/labels/tanzania_sample.geojson``.

Without arguments the ground-truth masks themselves are the predictions (Inria Austin
and SpaceNet Rio img50-57 from ``../shared/data/real``): this measures what the
post-processing alone costs against the exact pixel outlines (raw IoU is 1 by design).

Usage::

    .venv/bin/python scripts/measure_postprocess.py
    .venv/bin/python scripts/measure_postprocess.py --pred out/austin --truth labels/austin.tif
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from pyproj import CRS as ProjCRS
from rasterio.features import rasterize

from pipeline.evaluate import candidate_ious
from pipeline.geo import MetricFrame, reproject
from pipeline.overlaps import polygonal_part
from pipeline.polygonize import reference_polygons
from pipeline.postprocess import postprocess

Geoms = NDArray[np.object_]
REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
MASK_NODATA = 255


@dataclass(frozen=True)
class Scene:
    """Prediction and truth polygons of one source, in the metric frame."""

    name: str
    pred: Geoms
    truth: Geoms
    frame: MetricFrame


@dataclass(frozen=True)
class Row:
    source: str
    variant: str
    buildings: int
    iou_sum: float
    vertices: int
    seconds: float

    def cells(self) -> list[str]:
        n = max(self.buildings, 1)
        return [
            self.source, self.variant, str(self.buildings), f"{self.iou_sum / n:.4f}",
            str(self.vertices), f"{self.vertices / n:.1f}", f"{self.seconds * 1000:.0f}",
        ]  # fmt: skip


# --------------------------------------------------------------------------- reading


def raster_polygons(path: Path, *, mask_mode: bool) -> tuple[Geoms, ProjCRS, tuple[float, ...]]:
    """Polygons of a raster (regions: value > 0; mask mode: value == 1, 255 = nodata)."""
    with rasterio.open(path) as ds:
        data = ds.read(1)
        transform, crs, b = ds.transform, ds.crs, ds.bounds
    if crs is None:
        sys.exit(f"{path}: raster has no CRS; metric areas are unknown")
    values = (data == 1).astype(np.uint8) if mask_mode else np.where(data > 0, data, 0)
    geoms = reference_polygons(values, transform=transform).geometry
    return geoms, ProjCRS.from_wkt(crs.to_wkt()), (b.left, b.bottom, b.right, b.top)


def truth_polygons(path: Path) -> tuple[Geoms, ProjCRS, tuple[float, ...]]:
    """Truth mask (value > 0; nodata 0 is background) as 4-connected polygons."""
    with rasterio.open(path) as ds:
        data = ds.read(1)
        transform, crs, b = ds.transform, ds.crs, ds.bounds
    if crs is None:
        sys.exit(f"{path}: truth raster has no CRS")
    geoms = reference_polygons((data > 0).astype(np.uint8), transform=transform).geometry
    return geoms, ProjCRS.from_wkt(crs.to_wkt()), (b.left, b.bottom, b.right, b.top)


def prediction_polygons(path: Path) -> tuple[Geoms, ProjCRS, tuple[float, ...]]:
    """Polygons of an OUTDIR (regions.scratch.tif, else mask.tif), a raster or a vector file."""
    if path.is_dir():
        regions = path / "regions.scratch.tif"
        if regions.exists():
            return raster_polygons(regions, mask_mode=False)
        return raster_polygons(path / "mask.tif", mask_mode=True)
    if path.suffix.lower() in {".tif", ".tiff", ".vrt", ".png", ".img"}:
        return raster_polygons(path, mask_mode=False)
    frame = gpd.read_file(path)
    if frame.crs is None:
        sys.exit(f"{path}: vector file has no CRS")
    geoms = np.asarray(frame.geometry.values, dtype=object)
    b = frame.total_bounds
    return geoms, ProjCRS.from_user_input(frame.crs), (b[0], b[1], b[2], b[3])


def load_scene(name: str, pred_path: Path, truth_path: Path, *, min_area_m2: float) -> Scene:
    pred, crs, bounds = prediction_polygons(pred_path)
    truth, truth_crs, _ = truth_polygons(truth_path)
    if truth_crs != crs:
        truth = reproject(truth, src=truth_crs, dst=crs)
    frame = MetricFrame.for_scene(crs, (bounds[0], bounds[1], bounds[2], bounds[3]))
    pred_m, truth_m = frame.to_metric(pred), frame.to_metric(truth)
    pred_m = pred_m[shapely.area(pred_m) >= min_area_m2]
    truth_m = truth_m[shapely.area(truth_m) >= min_area_m2]
    metric = MetricFrame(scene=frame.metric, metric=frame.metric)
    return Scene(name=name, pred=pred_m, truth=truth_m, frame=metric)


# --------------------------------------------------------------------------- scoring


def best_iou(pred: Geoms, truth: Geoms) -> NDArray[np.float64]:
    """Highest IoU of each prediction with any truth polygon (0 when none intersects)."""
    pi, _, iou = candidate_ious(pred, truth)
    best = np.zeros(pred.shape[0], dtype=np.float64)
    np.maximum.at(best, pi, iou)
    return best


def vertex_count(geoms: Geoms) -> int:
    rings = shapely.get_num_interior_rings(geoms) + 1
    return int((shapely.get_num_coordinates(geoms) - rings).sum())


def rasterized_scene(path: Path, gsd: float, *, window_m: float, min_area_m2: float) -> Scene:
    """True vector outlines rasterized at ``gsd`` (pixel centres) as predictions, vectors as truth."""
    frame = gpd.read_file(path)
    if frame.crs is None:
        sys.exit(f"{path}: vector file has no CRS")
    b = frame.total_bounds
    mf = MetricFrame.for_scene(ProjCRS.from_user_input(frame.crs), (b[0], b[1], b[2], b[3]))
    truth = polygonal_part(mf.to_metric(np.asarray(frame.geometry.values, dtype=object)))
    truth = truth[~shapely.is_empty(truth)]
    centre = shapely.centroid(truth)
    cx, cy = float(np.median(shapely.get_x(centre))), float(np.median(shapely.get_y(centre)))
    half = window_m / 2.0
    truth = truth[shapely.within(truth, shapely.box(cx - half, cy - half, cx + half, cy + half))]
    size = round(window_m / gsd)
    transform = Affine(gsd, 0.0, cx - half, 0.0, -gsd, cy + half)
    mask = rasterize(((g, 1) for g in truth), out_shape=(size, size), transform=transform, dtype="uint8")
    pred = reference_polygons(mask, transform=transform).geometry
    metric = MetricFrame(scene=mf.metric, metric=mf.metric)
    name = f"{path.stem} @ {gsd} m"
    return Scene(
        name, pred[shapely.area(pred) >= min_area_m2], truth[shapely.area(truth) >= min_area_m2], metric
    )


def variants(regularize_simplify_m: float) -> dict[str, Callable[[Scene], Geoms]]:
    def chain(simplify_m: float, regularize: bool, holes: float) -> Callable[[Scene], Geoms]:
        def run(s: Scene) -> Geoms:
            return postprocess(
                s.pred, frame=s.frame, fill_holes_m2=holes, simplify_m=simplify_m,
                regularize=regularize, angle_tolerance_deg=15.0, min_edge_m=1.0,
            )  # fmt: skip

        return run

    return {
        "raw (pixels)": lambda s: s.pred,
        "simplified 0.3 m": chain(0.3, False, 0.0),
        "simplified 0.5 m": chain(0.5, False, 0.0),
        f"regularized (simplify_m {regularize_simplify_m})": chain(regularize_simplify_m, True, 1.0),
    }


def measure(scene: Scene, fns: dict[str, Callable[[Scene], Geoms]]) -> list[Row]:
    rows = []
    for variant, fn in fns.items():
        t0 = time.perf_counter()
        out = fn(scene)
        seconds = time.perf_counter() - t0
        out = out[~shapely.is_empty(out)]
        iou = best_iou(out, scene.truth)
        rows.append(Row(scene.name, variant, int(out.size), float(iou.sum()), vertex_count(out), seconds))
    return rows


def pooled(rows: list[Row], source: str) -> list[Row]:
    out: dict[str, Row] = {}
    for r in rows:
        prev = out.get(r.variant)
        if prev is None:
            out[r.variant] = Row(source, r.variant, r.buildings, r.iou_sum, r.vertices, r.seconds)
        else:
            out[r.variant] = Row(
                source, r.variant, prev.buildings + r.buildings, prev.iou_sum + r.iou_sum,
                prev.vertices + r.vertices, prev.seconds + r.seconds,
            )  # fmt: skip
    return list(out.values())


def table(rows: list[Row]) -> str:
    head = ["source", "variant", "buildings", "mean IoU", "vertices", "vertices/building", "ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def default_pairs() -> list[tuple[str, Path, Path, str]]:
    """(name, pred, truth, group): the ground-truth masks scored against themselves."""
    austin = REAL / "inria_austin" / "labels" / "aerial_sample.tif"
    rio = sorted((REAL / "spacenet1_rio" / "building_mask_vis").glob("*img5[0-7].tif"))
    pairs = [("inria_austin", austin, austin, "inria_austin")]
    pairs += [(p.stem.rsplit("_", 1)[-1], p, p, "spacenet1_rio") for p in rio]
    return pairs


def parse_pairs(args: argparse.Namespace) -> list[tuple[str, Path, Path, str]]:
    preds, truths = args.pred or [], args.truth or []
    if len(preds) != len(truths):
        sys.exit("give one --truth per --pred")
    pairs = [(Path(p).name, Path(p), Path(t), Path(p).name) for p, t in zip(preds, truths, strict=True)]
    pairs += [(Path(p).stem, Path(p), Path(t), Path(p).stem) for p, t in args.pair or []]
    return pairs or default_pairs()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pred", action="append", help="a `footprints segment` output folder")
    ap.add_argument("--truth", action="append", help="truth mask raster for the --pred before it")
    ap.add_argument(
        "--pair", nargs=2, action="append", metavar=("PRED", "TRUTH"), help="raster/vector + mask"
    )
    ap.add_argument("--rasterize", nargs=2, action="append", metavar=("VECTOR", "GSD"), help="true outlines")
    ap.add_argument("--window-m", type=float, default=600.0, help="--rasterize window side (m)")
    ap.add_argument("--min-area-m2", type=float, default=8.0)
    ap.add_argument(
        "--simplify-m", type=float, default=0.3, help="simplify_m of the regularized chain (config value)"
    )
    args = ap.parse_args()
    fns = variants(args.simplify_m)
    groups: dict[str, list[Row]] = {}
    for vector, gsd in args.rasterize or []:
        scene = rasterized_scene(
            Path(vector), float(gsd), window_m=args.window_m, min_area_m2=args.min_area_m2
        )
        groups.setdefault(scene.name, []).extend(measure(scene, fns))
    pairs = parse_pairs(args) if (args.pred or args.pair or not args.rasterize) else []
    for name, pred, truth, group in pairs:
        scene = load_scene(name, pred, truth, min_area_m2=args.min_area_m2)
        groups.setdefault(group, []).extend(measure(scene, fns))
    rows = [r for g, rs in groups.items() for r in pooled(rs, g)]
    everything = [r for rs in groups.values() for r in rs]
    print(table(rows + pooled(everything, "**overall**")))


if __name__ == "__main__":
    main()
