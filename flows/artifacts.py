"""Prefect artifacts: what the UI shows of a scene and of a bucket (an adapter over run.json).

Per scene a table artifact (counts, areas, timings, device) and a markdown artifact that
links ``report.html``; per bucket a markdown artifact that links ``index.html`` and lists
every scene's status. Keys are ``footprints-<scene>`` (lowercase letters, digits and dashes,
as Prefect requires), so a scene's latest artifacts are found under one key in the UI.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pipeline.io.storage import Location, parse_location, redact


def artifact_key(*parts: str) -> str:
    """``footprints-...`` from ``parts``, in the characters Prefect accepts in a key."""
    slug = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    return f"footprints-{slug}"[:100]


def href(location: Location) -> str:
    """A link to ``location``: ``file://`` for a local path, the URL otherwise."""
    return Path(location.path).resolve().as_uri() if location.is_local else redact(location.url)


def scene_table(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a scene's table artifact: ``measure``, ``value``."""
    counts, summary, seconds = record.get("counts", {}), record.get("summary", {}), record.get("seconds", {})
    rows: list[tuple[str, Any]] = [
        ("buildings", counts.get("buildings")),
        ("total area (m²)", summary.get("total_area_m2")),
        ("median area (m²)", summary.get("median_area_m2")),
        ("mean confidence", summary.get("mean_confidence")),
        ("nodata share", summary.get("nodata_share")),
        *((k, v) for k, v in counts.items() if k.startswith("tiles")),
        *((f"seconds: {k}", v) for k, v in seconds.items()),
        ("device", ", ".join(record.get("devices", [])) or record.get("device")),
    ]
    return [{"measure": k, "value": v} for k, v in rows if v is not None]


def scene_markdown(record: dict[str, Any], out: Location) -> str:
    """A scene's markdown artifact: headline, warnings and links to its report and outputs."""
    counts, summary = record.get("counts", {}), record.get("summary", {})
    lines = [
        f"# {record.get('scene')}: {counts.get('buildings', 0):,} buildings",
        "",
        f"**[Open the report]({href(out.child('report.html'))})** (report.html, works offline)",
        "",
        f"Total building area {summary.get('total_area_m2', 0):,.0f} m², "
        f"median {summary.get('median_area_m2', 0):,.1f} m².",
    ]
    if warnings := record.get("warnings"):
        lines += ["", "**Warnings**", "", *(f"- {w}" for w in warnings)]
    lines += ["", f"Outputs: {redact(out.url)} (STAC item: item.json)"]
    return "\n".join(lines)


def publish_scene_artifacts(record: dict[str, Any], out_url: str) -> None:
    """The table and markdown artifacts of one scene's run (in the current flow run)."""
    out, scene = parse_location(out_url), str(record.get("scene"))
    create_table_artifact(
        scene_table(record), key=artifact_key(scene), description=f"{scene}: counts and timings"
    )
    create_markdown_artifact(
        scene_markdown(record, out), key=artifact_key(scene, "report"), description=f"{scene}: report"
    )


def bucket_markdown(*, index: Location, scenes: list[dict[str, Any]], summary: dict[str, int]) -> str:
    """A bucket's markdown artifact: a link to index.html and a line per scene."""
    counts = ", ".join(f"{v} {k}" for k, v in summary.items() if v)
    lines = [f"# {len(scenes)} scenes: {counts}", "", f"**[Open the index]({href(index)})** (index.html)", ""]
    lines += ["| scene | status | buildings |", "|---|---|---|"]
    for entry in scenes:
        buildings = (entry.get("counts") or {}).get("buildings", "")
        lines.append(f"| {entry['scene']} | {entry['status']} | {buildings} |")
    return "\n".join(lines)


def publish_bucket_artifacts(
    *, index: Location, scenes: list[dict[str, Any]], summary: dict[str, int]
) -> None:
    create_markdown_artifact(
        bucket_markdown(index=index, scenes=scenes, summary=summary),
        key=artifact_key("bucket", index.path.rstrip("/").rsplit("/", 2)[-2] or "index"),
        description="segment-bucket: index of the scenes' reports",
    )
