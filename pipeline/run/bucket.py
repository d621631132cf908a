"""A bucket of scenes: list them, give each an output folder, and keep a manifest.

``segment-bucket`` lists the scenes under ``input_url`` (a local folder, ``file://``
or ``s3://bucket/prefix``), writes each one's outputs under
``output_url/<scene-stem>/`` and keeps ``output_url/manifest.json``: for every scene
its input, its outputs, its counts and its status (``done``, ``up-to-date`` or
``failed`` with the error). The manifest is rewritten whole after every scene.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.core.errors import InputNotFoundError
from pipeline.describe.output_files import OUTPUT_NAMES
from pipeline.io.storage import Location, list_scenes, parse_location, redact, write_json

MANIFEST = "manifest.json"


@dataclass(frozen=True, slots=True)
class SceneJob:
    """One scene of a bucket: where it is read from and where its outputs go."""

    scene: str
    input_url: str
    output_url: str


def plan_bucket(*, input_url: str, output_url: str, pattern: str = "*.tif") -> list[SceneJob]:
    """One job per scene under ``input_url`` matching ``pattern``, in name order."""
    out = parse_location(output_url)
    scenes = list_scenes(input_url, pattern=pattern)
    if not scenes:
        raise InputNotFoundError(
            f"{redact(input_url)}: no scene matches pattern {pattern!r}; check input_url and pattern"
        )
    dupes = sorted(stem for stem, n in Counter(s.stem for s in scenes).items() if n > 1)
    if dupes:
        raise InputNotFoundError(
            f"{redact(input_url)}: scenes {dupes} share a stem and would share an output folder; "
            "narrow the pattern"
        )
    return [SceneJob(scene=s.stem, input_url=s.url, output_url=out.child(s.stem).url) for s in scenes]


def scene_entry(
    job: SceneJob, *, record: dict[str, Any] | None, error: BaseException | None
) -> dict[str, Any]:
    """A manifest entry for a finished (or failed) scene."""
    entry: dict[str, Any] = {"scene": job.scene, "input": job.input_url, "output": job.output_url}
    if error is not None:
        return {**entry, "status": "failed", "error": redact(f"{type(error).__name__}: {error}")}
    assert record is not None
    out = parse_location(job.output_url)
    counts = record.get("counts", {})
    skipped = bool(record.get("skipped"))
    return {
        **entry,
        "status": "up-to-date" if skipped else "done",
        "outputs": {name: out.child(name).url for name in OUTPUT_NAMES},
        "counts": counts,  # of the run that produced the outputs (see run.json)
        "summary": record.get("summary") or {},
        "warnings": record.get("warnings") or [],
        "tiles_inferred_now": 0 if skipped else int(counts.get("tiles_inferred", 0)),
        "run_key": record.get("run_key"),
    }


@dataclass
class BucketManifest:
    """``output_url/manifest.json``, rewritten whole (atomically) as scenes finish."""

    input_url: str
    output_url: str
    pattern: str
    jobs: list[SceneJob]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def location(self) -> Location:
        return parse_location(self.output_url).child(MANIFEST)

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.entries[entry["scene"]] = entry
            self.write()

    def scenes(self) -> list[dict[str, Any]]:
        """Every scene's entry, in the jobs' order (``pending`` until it ends)."""
        return [
            self.entries.get(j.scene, {"scene": j.scene, "input": j.input_url, "status": "pending"})
            for j in self.jobs
        ]

    def summary(self) -> dict[str, int]:
        statuses = [s["status"] for s in self.scenes()]
        return {k: statuses.count(k) for k in ("done", "up-to-date", "failed", "pending")}

    def write(self) -> None:
        scenes = self.scenes()
        payload = {
            "input_url": redact(self.input_url),
            "output_url": redact(self.output_url),
            "pattern": self.pattern,
            "updated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "summary": self.summary(),
            "tiles_inferred_now": sum(int(s.get("tiles_inferred_now", 0)) for s in scenes),
            "scenes": scenes,
        }
        write_json(self.location, payload)

    @property
    def failed(self) -> list[str]:
        return [name for name, e in self.entries.items() if e["status"] == "failed"]
