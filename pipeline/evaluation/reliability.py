"""How far a building's ``confidence`` can be trusted: precision per confidence bin.

``confidence`` is the mean building probability over a building's pixels. A reliability
table bins the delivered polygons by it and gives, per bin, how many polygons there are,
how many of them match a true building (one-to-one at IoU >= 0.5, as
:func:`pipeline.evaluation.evaluate.match_one_to_one`) and the share that do: the precision of the
buildings in that bin. ``footprints validate`` computes it from polygons vectorized
*without* the confidence filter (``vectorize.min_confidence: 0``), so the bins below the
filter fill too and show what the filter removes (see README, "Reading confidence").

Bins are half-open ``[lo, hi)``, the last one closed; :func:`pool` adds the counts of
several tables (scenes) bin by bin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.table import Table

#: Bin edges: one bin under 0.5 (a building is made of pixels above the threshold, so its mean is
#: rarely lower), then 0.05 wide up to 1.
EDGES: tuple[float, ...] = (0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)


def _row(lo: float, hi: float, count: int, matched: int) -> dict[str, Any]:
    return {
        "bin": f"{lo:.2f}-{hi:.2f}",
        "lo": lo,
        "hi": hi,
        "count": count,
        "matched": matched,
        "precision": matched / count if count else None,
    }


def reliability(
    confidence: NDArray[np.float64], matched: NDArray[np.bool_], *, edges: Sequence[float] = EDGES
) -> list[dict[str, Any]]:
    """One row per bin: ``bin``, ``lo``, ``hi``, ``count``, ``matched`` and ``precision``
    (None for an empty bin). Confidences outside ``[edges[0], edges[-1]]`` or NaN are left out."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(matched, dtype=bool)
    if conf.shape != hit.shape:
        raise ValueError(f"reliability: {conf.shape} confidences for {hit.shape} match flags; pass one each")
    e = np.asarray(edges, dtype=np.float64)
    inside = np.isfinite(conf) & (conf >= e[0]) & (conf <= e[-1])
    k = np.clip(np.searchsorted(e, conf[inside], side="right") - 1, 0, e.size - 2)
    count = np.bincount(k, minlength=e.size - 1)
    good = np.bincount(k, hit[inside].astype(np.int64), minlength=e.size - 1)
    return [_row(float(e[i]), float(e[i + 1]), int(count[i]), int(good[i])) for i in range(e.size - 1)]


def pool(tables: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Bin-by-bin sums of tables with the same bins (an empty list for no tables)."""
    if not tables:
        return []
    first = tables[0]
    if any([r["bin"] for r in t] != [r["bin"] for r in first] for t in tables):
        raise ValueError("reliability.pool: tables with different bins; compute them with the same edges")
    return [
        _row(r["lo"], r["hi"], sum(t[i]["count"] for t in tables), sum(t[i]["matched"] for t in tables))
        for i, r in enumerate(first)
    ]


def reliability_table(rows: Sequence[dict[str, Any]], *, title: str) -> Table:
    """The rows as a rich table: bin, count, matched count and precision."""
    table = Table(title=title)
    for header in ("confidence", "polygons", "matched", "precision"):
        table.add_column(header, justify="right")
    for r in rows:
        precision = "–" if r["precision"] is None else f"{r['precision']:.3f}"
        table.add_row(r["bin"], str(r["count"]), str(r["matched"]), precision)
    return table
