"""The evaluation report: scores from counts, pooling over scenes and sources, and its tables.

* ``overall`` pools every scene: pixel counts over pixels, object counts over objects,
  polygon figures over matched pairs (:func:`pipeline.evaluation.polygon_metrics.pool`).
* ``sources`` (when scenes carry a ``source``) pools the scenes of each source the same way.
* ``macro`` is the unweighted mean over sources of each source's pooled figure (pixel
  precision, recall and IoU; object precision, recall and F1 at both thresholds; polygon
  figures), so a source with many scenes or buildings weighs no more than a small one.
  ``footprints validate`` reports it first: validation sources differ in size and kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from pipeline.evaluation import polygon_metrics
from pipeline.evaluation.error_kinds import KINDS_PRED, KINDS_TRUTH
from pipeline.evaluation.reliability import reliability_table

COUNTS = ("tp", "fp", "fn")
OBJECT_KINDS = ("object", "object_iou25")
MACRO_KEYS = {
    "pixel": ("precision", "recall", "iou"),
    "object": ("precision", "recall", "f1"),
    "object_iou25": ("precision", "recall", "f1"),
}


def _ratio(num: int, den: int, *, perfect: bool) -> float:
    if den == 0:
        return 1.0 if perfect else 0.0
    return float(num) / float(den)


def _scores(tp: int, fp: int, fn: int, name: str, num: int, den: int) -> dict[str, float | int]:
    perfect = tp == fp == fn == 0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, tp + fp, perfect=perfect),
        "recall": _ratio(tp, tp + fn, perfect=perfect),
        name: _ratio(num, den, perfect=perfect),
    }


def pixel_scores(*, tp: int, fp: int, fn: int) -> dict[str, float | int]:
    """Precision, recall and IoU from pixel counts (so scenes can be pooled)."""
    return _scores(tp, fp, fn, "iou", tp, tp + fp + fn)


def object_scores(*, tp: int, fp: int, fn: int) -> dict[str, float | int]:
    """Precision, recall and F1 from matched-object counts (so scenes can be pooled)."""
    return _scores(tp, fp, fn, "f1", 2 * tp, 2 * tp + fp + fn)


# --------------------------------------------------------------------------- pooling


def _counts(scenes: Sequence[dict[str, Any]], kind: str) -> dict[str, int]:
    return {key: sum(int(s[kind][key]) for s in scenes) for key in COUNTS}


def pool(scenes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Metrics of several scenes as one: counts added, polygon figures pooled over pairs."""
    out: dict[str, Any] = {"pixel": pixel_scores(**_counts(scenes, "pixel"))}
    for kind in OBJECT_KINDS:
        if all(kind in s for s in scenes):
            out[kind] = object_scores(**_counts(scenes, kind))
    if all("polygon" in s for s in scenes):
        out["polygon"] = polygon_metrics.pool([s["polygon"] for s in scenes])
    if scenes and all("errors" in s for s in scenes):
        out["errors"] = {
            side: {kind: sum(int(s["errors"][side][kind]) for s in scenes) for kind in kinds}
            for side, kinds in (("truth", KINDS_TRUTH), ("pred", KINDS_PRED))
        }
    return out


def by_source(scenes: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each source's scenes pooled (sources in name order), with its number of scenes."""
    names = sorted({str(s["source"]) for s in scenes})
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        members = [s for s in scenes if str(s["source"]) == name]
        out[name] = {"scenes": len(members), **pool(members)}
    return out


def macro(sources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over sources of each source's pooled figures."""
    entries = list(sources.values())
    out: dict[str, Any] = {"sources": len(entries)}
    for kind, keys in MACRO_KEYS.items():
        if entries and all(kind in e for e in entries):
            out[kind] = {key: sum(float(e[kind][key]) for e in entries) / len(entries) for key in keys}
    if entries and all("polygon" in e for e in entries):
        out["polygon"] = polygon_metrics.macro([e["polygon"] for e in entries])
    return out


def summarize_scenes(scenes: Sequence[dict[str, Any]], *, per_source: bool) -> dict[str, Any]:
    """``overall``, and with ``per_source`` ``macro`` (first) and ``sources`` too."""
    if not per_source:
        return {"overall": pool(scenes)}
    sources = by_source(scenes)
    return {"macro": macro(sources), "overall": pool(scenes), "sources": sources}


# --------------------------------------------------------------------------- tables


def _f(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _count_cells(entry: dict[str, Any]) -> list[str]:
    obj = entry.get("object", {})
    return [str(obj[key]) if key in obj else "–" for key in COUNTS]


def _row(name: str, result: dict[str, Any]) -> list[str]:
    px, obj = result["pixel"], result["object"]
    scores = [px.get("precision"), px.get("recall"), px.get("iou")]
    scores += [obj.get("precision"), obj.get("recall"), obj.get("f1")]
    return [name, *(_f(v) for v in scores), *_count_cells(result)]


def _title(report: dict[str, Any], what: str = "") -> str:
    iou, area = report["params"]["iou_threshold"], report["params"]["min_area_m2"]
    return f"footprints evaluate{what} (object IoU >= {iou}, min area {area} m²)"


def _metric_table(title: str, first: str) -> Table:
    table = Table(title=title)
    table.add_column(first, overflow="fold", max_width=28)
    for header in ("px P", "px R", "px IoU", "obj P", "obj R", "obj F1", "TP", "FP", "FN"):
        table.add_column(header, justify="right")
    return table


def results_table(report: dict[str, Any]) -> Table:
    """Per-scene and overall metrics: pixel P/R/IoU, object P/R/F1 and object counts."""
    table = _metric_table(_title(report), "scene")
    for scene in report["scenes"]:
        table.add_row(*_row(str(scene["scene"]), scene))
    table.add_section()
    table.add_row(*_row("overall", report["overall"]), style="bold")
    return table


def headline_table(report: dict[str, Any]) -> Table:
    """Macro average over sources first, pooled figures second."""
    n = report["macro"]["sources"]
    table = _metric_table(_title(report, f": macro average over {n} sources, then pooled"), "average")
    table.add_row(*_row("macro", report["macro"]), style="bold")
    table.add_row(*_row("pooled", report["overall"]))
    return table


def sources_table(report: dict[str, Any]) -> Table:
    """One row per source: scenes, pixel IoU, object P/R/F1 and counts."""
    table = Table(title="per source (pooled over its scenes)")
    table.add_column("source", overflow="fold", max_width=28)
    for header in ("scenes", "px IoU", "obj P", "obj R", "obj F1", "TP", "FP", "FN"):
        table.add_column(header, justify="right")
    for name, entry in report["sources"].items():
        obj = entry["object"]
        scores = (entry["pixel"]["iou"], obj["precision"], obj["recall"], obj["f1"])
        table.add_row(name, str(entry["scenes"]), *(_f(v) for v in scores), *_count_cells(entry))
    return table


def _polygon_row(name: str, entry: dict[str, Any]) -> list[str]:
    poly = entry["polygon"]
    return [
        name,
        _f(entry["object_iou25"]["f1"]),
        _f(poly["mean_iou"]),
        _f(poly["c_iou"]),
        _f(poly["n_ratio"]),
        _f(poly["polis_m"], 2),
        _f(poly["max_tangent_deg"], 1),
        _f(poly["rotation_deg"], 1),
    ]


def polygon_table(report: dict[str, Any]) -> Table:
    """Object F1 at the loose threshold and the shape figures of matched pairs, per source or scene."""
    params = report["params"]
    title = f"polygon metrics, pairs matched at IoU >= {params['iou_threshold']} (PoLiS m, angles °)"
    table = Table(title=title)
    per_source = "sources" in report
    table.add_column("source" if per_source else "scene", overflow="fold", max_width=28)
    for header in (f"F1@{params['loose_iou_threshold']}", "IoU", "C-IoU", "N-ratio", "PoLiS", "tan", "rot"):
        table.add_column(header, justify="right")
    rows = report["sources"].items() if per_source else ((s["scene"], s) for s in report["scenes"])
    for name, entry in rows:
        table.add_row(*_polygon_row(str(name), entry))
    table.add_section()
    if "macro" in report:
        table.add_row(*_polygon_row("macro", report["macro"]), style="bold")
    table.add_row(*_polygon_row("pooled" if "macro" in report else "overall", report["overall"]))
    return table


def errors_table(report: dict[str, Any]) -> Table:
    """Unmatched buildings by kind (pipeline.evaluation.error_kinds), per source or scene, then pooled."""
    table = Table(title="errors by kind: missed truth buildings (FN) | unmatched predictions (FP)")
    per_source = "sources" in report
    table.add_column("source" if per_source else "scene", overflow="fold", max_width=28)
    for header in ("FN merge", "split", "outline", "miss", "FP merge", "split", "outline", "false pos"):
        table.add_column(header, justify="right")
    rows = report["sources"].items() if per_source else ((s["scene"], s) for s in report["scenes"])
    for name, entry in [*rows, ("pooled" if per_source else "overall", report["overall"])]:
        if "errors" in entry:
            errors = entry["errors"]
            cells = [str(errors["truth"][k]) for k in KINDS_TRUTH] + [
                str(errors["pred"][k]) for k in KINDS_PRED
            ]
            table.add_row(str(name), *cells)
    return table


def confidence_table(report: dict[str, Any]) -> Table:
    """``footprints validate``'s reliability table: precision per confidence bin."""
    rel = report["reliability"]
    title = (
        "reliability of `confidence`: precision per bin, buildings vectorized without the confidence "
        f"filter (delivered: confidence >= {rel['min_confidence']})"
    )
    return reliability_table(rel["bins"], title=title)


def report_tables(report: dict[str, Any]) -> list[Table]:
    """With sources: macro and pooled, per source, polygons, errors, per scene; else per scene first.
    A validation report ends with its reliability table."""
    if "macro" in report:
        tables = [
            headline_table(report), sources_table(report), polygon_table(report),
            errors_table(report), results_table(report),
        ]  # fmt: skip
    else:
        tables = [results_table(report), polygon_table(report), errors_table(report)]
    return tables + ([confidence_table(report)] if "reliability" in report else [])
