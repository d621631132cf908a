"""A bucket's front page and catalog: ``index.html`` and ``collection.json`` in ``output_url``.

``index.html`` is a self-contained table (no network requests) with one row per scene: its
status, buildings, total and median area, warnings and a link to its ``report.html``.
``collection.json`` is a STAC Collection linking every published scene's ``item.json``.
Both are rewritten whole, after the scenes, from the bucket manifest's entries.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from pipeline.describe.stac import bucket_collection
from pipeline.io.storage import Location, parse_location, read_json, redact, write_bytes_atomic, write_json

CSS = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330}table{border-collapse:collapse}"
    "td,th{padding:4px 14px 4px 0;text-align:left;border-bottom:1px solid #e3e6ec}td.n{text-align:right}"
    ".failed{color:#b00020}.warn{color:#a05a00}"
)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _row(entry: dict[str, Any]) -> str:
    scene, status = entry["scene"], entry["status"]
    summary = entry.get("summary") or {}
    counts = entry.get("counts") or {}
    link = (
        f'<a href="{_esc(scene)}/report.html">{_esc(scene)}</a>'
        if status in ("done", "up-to-date")
        else _esc(scene)
    )
    notes = entry.get("error") or "; ".join(entry.get("warnings") or [])
    cls = "failed" if status == "failed" else "warn" if notes else ""
    cells = [
        link, _esc(status), f'{counts.get("buildings", "")}',
        f'{summary["total_area_m2"]:,.0f}' if "total_area_m2" in summary else "",
        f'{summary["median_area_m2"]:,.1f}' if "median_area_m2" in summary else "",
    ]  # fmt: skip
    tds = "".join(f'<td class="n">{c}</td>' if i >= 2 else f"<td>{c}</td>" for i, c in enumerate(cells))
    return f'<tr>{tds}<td class="{cls}">{_esc(notes)}</td></tr>'


def index_html(*, title: str, entries: Sequence[dict[str, Any]], summary: dict[str, int]) -> str:
    """The bucket's front page as one self-contained HTML string."""
    head = "".join(
        f"<th>{h}</th>" for h in ("scene", "status", "buildings", "total m²", "median m²", "notes")
    )
    rows = "".join(_row(e) for e in entries)
    counts = ", ".join(f"{v} {k}" for k, v in summary.items() if v)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{_esc(title)}</h1><p>{len(entries)} scenes: {_esc(counts)}. "
        'STAC: <a href="collection.json">collection.json</a>, bucket manifest: '
        f'<a href="manifest.json">manifest.json</a>.</p><table><tr>{head}</tr>{rows}</table></body></html>\n'
    )


def scene_items(out: Location, entries: Sequence[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """``(href relative to out, item JSON)`` of every published scene that has an ``item.json``."""
    items = []
    for entry in entries:
        if entry.get("status") not in ("done", "up-to-date"):
            continue
        item = read_json(out.child(entry["scene"], "item.json"))
        if item is not None:
            items.append((f"./{entry['scene']}/item.json", item))
    return items


def write_bucket_index(
    *, output_url: str, entries: Sequence[dict[str, Any]], summary: dict[str, int]
) -> tuple[Location, Location]:
    """Write ``index.html`` and ``collection.json`` into ``output_url``; their locations."""
    out = parse_location(output_url)
    name = out.path.rstrip("/").rsplit("/", 1)[-1] or "bucket"
    title = f"Building footprints: {redact(output_url)}"
    collection = bucket_collection(
        collection_id=f"footprints-{name}", description=title, items=scene_items(out, entries)
    )
    write_json(out.child("collection.json"), collection)
    page = index_html(title=title, entries=entries, summary=summary)
    write_bytes_atomic(index := out.child("index.html"), page.encode("utf-8"))
    return index, out.child("collection.json")
