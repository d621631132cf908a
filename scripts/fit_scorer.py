"""Fit the false-positive scorer: a small gradient-boosted classifier over building features.

    python scripts/fit_scorer.py segment --work DIR [--model CKPT] [--per-source 6]
    python scripts/fit_scorer.py fit --work DIR --out models/NAME.scorer.json [--model CKPT]
    python scripts/fit_scorer.py compare --val DIR --scorer FILE

``segment`` runs the pipeline (``footprints segment``, the shipped config) over a fixed,
seeded subset of the *training* scenes of ``configs/dataset.yaml`` (at most ``--per-source``
scenes per source), into ``DIR/<scene>/out`` beside each scene's ``truth.tif``; a rerun
skips the scenes already published. ``fit`` re-vectorizes each of those outputs without the
confidence filter, computes every candidate's features (:mod:`pipeline.vectorize.scoring`), labels it
by one-to-one matching at IoU 0.5 against the truth (as ``footprints evaluate`` matches),
fits LightGBM, chooses the score threshold by grouped cross-validation on the training
scenes (macro object F1 over sources), and writes the scorer. ``compare`` scores the
validation outputs of ``footprints validate`` (``--val DIR``) with the plain confidence
filter and with the scorer, macro over sources. Validation never enters the fit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import itertools

from pipeline.config import PipelineConfig, load_config
from pipeline.evaluation.evaluate import match_candidates
from pipeline.evaluation.validation import scene_slug, write_scene
from pipeline.io.vectors import PublishedScene, outdir_buildings
from pipeline.run.cluster import connect
from pipeline.run.scene import segment_scene
from pipeline.training.dataset import load_dataset
from pipeline.vectorize.scoring import FEATURES, Scorer

MIN_AREA_M2 = 8.0  # as footprints evaluate / validate
PARAMS = {
    "objective": "binary", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 20,
    "feature_fraction": 0.9, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
    "num_threads": 2, "deterministic": True, "force_row_wise": True, "seed": 0, "verbose": -1,
}  # fmt: skip
ROUNDS = 300


def _subset(scenes: list, per_source: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    by_source: dict[str, list] = {}
    for s in scenes:
        by_source.setdefault(s.source, []).append(s)
    chosen = []
    for source in sorted(by_source):
        group = by_source[source]
        idx = rng.permutation(len(group))[:per_source]
        chosen += [group[i] for i in sorted(idx)]
    return chosen


def segment(args: argparse.Namespace) -> None:
    config = load_config(args.config) if args.config else PipelineConfig()
    dataset = load_dataset(args.data, splits=("train",))
    scenes = _subset(list(dataset.scenes), args.per_source, args.seed)
    dc = config.dask
    with connect(
        scheduler=dc.scheduler, n_workers=dc.n_workers, threads_per_worker=dc.threads_per_worker
    ) as c:
        for i, scene in enumerate(scenes, 1):
            folder = args.work / scene_slug(scene)
            image, _ = write_scene(scene, folder)
            segment_scene(
                input_path=os.fspath(image), out_dir=folder / "out", config=config,
                model_path=args.model, client=c,
            )  # fmt: skip
            (folder / "source.txt").write_text(scene.source)
            print(f"[{i}/{len(scenes)}] {scene.source} {scene.name}", flush=True)


def collect(folder: Path) -> dict[str, np.ndarray]:
    """Features, match labels (IoU >= 0.5, one-to-one) and truth count of one segmented scene,
    without the confidence filter; cached in ``folder/scorer-features.npz``."""
    cache = folder / "scorer-features.npz"
    if cache.exists():
        return dict(np.load(cache))
    out = folder / "out"
    record = json.loads((out / "run.json").read_text())
    cfg = PipelineConfig.model_validate(record.get("config") or {})
    cfg = cfg.model_copy(
        update={"vectorize": cfg.vectorize.model_copy(update={"min_confidence": 0.0, "scorer": "none"})}
    )
    published = PublishedScene.from_record(record, config=cfg)
    b = outdir_buildings(out_dir=out, published=published, features=True)
    assert b.features is not None
    m = match_candidates(
        pred_dir=out, truth_path=folder / "truth.tif", polygons=b.geometry, min_area_m2=MIN_AREA_M2
    )
    data = {"features": b.features[m.scored], "label": m.matched, "n_truth": np.array(m.n_truth)}
    np.savez(cache, **data)
    return data


def _scenes(work: Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    rows = []
    for folder in sorted(p for p in work.iterdir() if (p / "out" / "run.json").exists()):
        source = (
            (folder / "source.txt").read_text().strip()
            if (folder / "source.txt").exists()
            else folder.name.split("-")[0]
        )
        rows.append((source, collect(folder)))
        print(f"  {folder.name}: {rows[-1][1]['label'].size} candidates", flush=True)
    return rows


def macro_f1(
    rows: list[tuple[str, dict[str, np.ndarray]]], kept: list[np.ndarray]
) -> tuple[float, dict[str, float]]:
    """Macro over sources of each source's pooled object F1, for the kept candidates."""
    counts: dict[str, list[int]] = {}
    for (source, d), k in zip(rows, kept, strict=True):
        tp = int((d["label"] & k).sum())
        c = counts.setdefault(source, [0, 0, 0])
        c[0] += tp
        c[1] += int(k.sum()) - tp
        c[2] += int(d["n_truth"]) - tp
    f1 = {s: 2 * tp / max(1, 2 * tp + fp + fn) for s, (tp, fp, fn) in counts.items()}
    return float(np.mean(list(f1.values()))), f1


def _weights(rows: list[tuple[str, dict[str, np.ndarray]]]) -> np.ndarray:
    """Each source weighs the same in the fit (as in the macro score)."""
    per_source: dict[str, int] = {}
    for source, d in rows:
        per_source[source] = per_source.get(source, 0) + d["label"].size
    return np.concatenate([np.full(d["label"].size, 1.0 / per_source[s]) for s, d in rows])


def _train(x: np.ndarray, y: np.ndarray, w: np.ndarray):
    import lightgbm as lgb

    return lgb.train(
        PARAMS, lgb.Dataset(x, y.astype(float), weight=w * w.size / w.sum()), num_boost_round=ROUNDS
    )


def fit(args: argparse.Namespace) -> None:
    rows = _scenes(args.work)
    x = np.concatenate([d["features"] for _, d in rows])
    y = np.concatenate([d["label"] for _, d in rows])
    w = _weights(rows)
    scene_of = np.concatenate([np.full(d["label"].size, i) for i, (_, d) in enumerate(rows)])
    fold = np.random.default_rng(0).permutation(len(rows)) % args.folds
    oof = np.zeros(y.size)
    for k in range(args.folds):
        test = fold[scene_of] == k
        oof[test] = _train(x[~test], y[~test], w[~test]).predict(x[test])
    offsets = np.cumsum([0] + [d["label"].size for _, d in rows])
    curve = [
        (macro_f1(rows, [oof[a:b] >= t for a, b in itertools.pairwise(offsets)])[0], float(t))
        for t in np.round(np.arange(0.05, 0.96, 0.05), 2)
    ]
    print("out-of-fold macro F1 by threshold: " + ", ".join(f"{t:.2f}: {f:.4f}" for f, t in curve))
    print(f"positives: {int(y.sum())} of {y.size} candidates")
    best = max(curve)
    conf = [d["features"][:, FEATURES.index("confidence")] >= 0.8 for _, d in rows]
    print(
        f"train (out of fold): scorer macro F1 {best[0]:.4f} at {best[1]}; "
        f"confidence>=0.8 {macro_f1(rows, conf)[0]:.4f}"
    )
    record = json.loads(next(args.work.glob("*/out/run.json")).read_text())
    sha = record["model"]["sha256"]
    notes = (
        f"LightGBM {ROUNDS} rounds on {y.size} candidates of {len(rows)} training scenes; "
        f"threshold {best[1]} from {args.folds}-fold grouped CV (macro object F1 {best[0]:.4f})"
    )
    Scorer(model_text=_train(x, y, w).model_to_string(), threshold=float(best[1]), checkpoint_sha256=sha,
           notes=notes).save(args.out)  # fmt: skip
    print(notes)


def compare(args: argparse.Namespace) -> None:
    """Macro object F1 on validation: no filter, the confidence filter alone, and the scorer on
    top of ``--min-confidence``; ``--write-best`` stores the best scorer threshold in the file."""
    rows = _scenes(args.val)
    scorer = Scorer.load(args.scorer)
    conf = [d["features"][:, FEATURES.index("confidence")] for _, d in rows]
    scores = [scorer.score(d["features"]) for _, d in rows]
    floor = args.min_confidence
    grid = sorted({*args.thresholds, scorer.threshold})
    table = {
        "no filter": [np.ones(c.size, bool) for c in conf],
        **{f"confidence >= {t}": [c >= t for c in conf] for t in (0.7, 0.75, 0.8, 0.85, 0.9)},
        **{
            f"confidence >= {floor} and scorer >= {t}": [
                (s >= t) & (c >= floor) for s, c in zip(scores, conf, strict=True)
            ]
            for t in grid
        },
    }
    sources = sorted({s for s, _ in rows})
    print("| filter | macro F1 | " + " | ".join(sources) + " |")
    print("|---|---|" + "---|" * len(sources))
    best = (-1.0, 0.0)
    for name, kept in table.items():
        m, per = macro_f1(rows, kept)
        print(f"| {name} | {m:.4f} | " + " | ".join(f"{per[s]:.3f}" for s in sources) + " |")
        if "scorer" in name:
            best = max(best, (m, float(name.rsplit(" ", 1)[1])))
    if args.write_best:
        notes = (
            f"{scorer.notes}; threshold {best[1]} chosen on validation with confidence >= {floor} "
            f"(macro F1 {best[0]:.4f})"
        )
        replace(scorer, threshold=best[1], notes=notes).save(args.scorer)
        print(notes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("segment")
    s.add_argument("--work", type=Path, required=True)
    s.add_argument("--data", type=Path, default=Path("configs/dataset.yaml"))
    s.add_argument("--model", default=None)
    s.add_argument("--config", type=Path, default=None)
    s.add_argument("--per-source", type=int, default=6)
    s.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("fit")
    f.add_argument("--work", type=Path, required=True)
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--folds", type=int, default=5)
    c = sub.add_parser("compare")
    c.add_argument("--val", type=Path, required=True)
    c.add_argument("--scorer", type=Path, required=True)
    c.add_argument("--thresholds", type=float, nargs="*", default=[0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6])
    c.add_argument("--min-confidence", type=float, default=0.8)
    c.add_argument("--write-best", action="store_true")
    args = p.parse_args()
    {"segment": segment, "fit": fit, "compare": compare}[args.cmd](args)
    print(json.dumps({"done": args.cmd}))


if __name__ == "__main__":
    from pipeline.io.gdal_env import configure_process

    configure_process()  # GDAL's block cache and S3, as the CLI sets them for itself
    main()
