"""Tile-level restart: a per-scene manifest and a cache of finished tiles.

A scene run is identified by its *run key*: the input's content (SHA-256 for local
files, ETag plus size on S3), the model's SHA-256 and the digest of the config
sections that change the outputs. State lives in a hidden sibling of the output
folder, ``<parent>/.footprints-state/<name>/``, so OUTDIR itself only ever holds the
five outputs. When that folder cannot be created (a read-only parent of a local
OUTDIR), it lives in ``$XDG_STATE_HOME/footprints/<name>-<hash of OUTDIR>/`` instead
(``~/.local/state`` without the variable):

- ``manifest.json``: the key, when the run was first started, the finished tiles
  and stages, and ``status`` (``running`` or ``complete``);
- ``tiles/<key>/<index>.npz``: each inferred tile's uint8 probabilities, written by
  the Dask worker that inferred it, atomically.

On a rerun, workers load finished tiles instead of inferring them; since stitching
is deterministic, the outputs are byte-identical to an uninterrupted run. A scene
whose manifest is complete under the same key, with its five outputs in place and
matching the checksums recorded when they were published, is not run again at all.
Tiles are deleted once the scene has been published.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.core.errors import OutputError, os_reason
from pipeline.io.storage import Location, read_json, remove_tree, write_json
from pipeline.run.tilecache import TileCache

STATE_DIR = ".footprints-state"
MANIFEST = "manifest.json"
FORMAT = 1
#: The manifest is rewritten at most this often while tiles finish (and at every stage).
FLUSH_SECONDS = 1.0


def config_digest(config: Any) -> str:
    """SHA-256 of the config sections that change the outputs.

    ``dask`` (where and how it runs) and ``tiling.batch_size`` do not change a pixel.
    """
    data = config.model_dump(mode="json", exclude={"dask", "restart"})
    data.get("tiling", {}).pop("batch_size", None)
    if data.get("outputs") == type(config)().model_dump(mode="json")["outputs"]:
        del data["outputs"]  # the defaults: digests stay those of configs written before it existed
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def run_key(*, input_identity: dict[str, Any], model_sha256: str | None, config_sha256: str) -> str:
    payload = {"input": input_identity, "model": model_sha256, "config": config_sha256}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def state_location(out: Location) -> Location:
    """``<parent>/.footprints-state/<name>`` for the output folder ``out``.

    For a local ``out`` whose parent does not let that folder be created (read-only, or a
    file in the way), :func:`fallback_state_location`, once it is writable or exists.
    """
    parent, _, name = out.path.rstrip("/").rpartition("/")
    beside = Location(out.scheme, f"{parent}/{STATE_DIR}/{name}")
    if not out.is_local or _can_create(Path(beside.path)):
        return beside
    fallback = fallback_state_location(out)
    return fallback if _can_create(Path(fallback.path)) else beside


def fallback_state_location(out: Location) -> Location:
    """``$XDG_STATE_HOME/footprints/<name>-<hash of OUTDIR>`` (``~/.local/state`` by default)."""
    home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    digest = hashlib.sha256(out.path.encode()).hexdigest()[:12]
    return Location("file", os.path.join(os.path.abspath(home), "footprints", f"{out.name}-{digest}"))


def _can_create(folder: Path) -> bool:
    """Whether ``folder`` is, or can become, a writable folder: its nearest existing
    ancestor is a folder this process may write (``os.access``: also false on a
    read-only file system)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


@dataclass
class SceneState:
    """The client's view of one scene's manifest. Not thread-safe: one per scene run."""

    location: Location
    key: str
    manifest: dict[str, Any]
    _done: set[int] = field(default_factory=set)
    _last_flush: float = 0.0

    @classmethod
    def open(cls, *, out: Location, key: str, describe: dict[str, Any], force: bool = False) -> SceneState:
        """Load the manifest for ``key``, or start a new one (discarding other keys' tiles)."""
        location = state_location(out)
        found = read_json(location.child(MANIFEST))
        if found is not None and found.get("key") == key and found.get("format") == FORMAT and not force:
            state = cls(location=location, key=key, manifest=found)
            state._done = set(found.get("tiles_done", []))
            return state
        remove_tree(location.child("tiles"))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        manifest = {
            "format": FORMAT,
            "key": key,
            "created": now,
            "status": "running",
            **describe,
            "tiles_total": None,
            "tiles_done": [],
            "stages": {},
            "attempts": 0,
        }
        return cls(location=location, key=key, manifest=manifest)

    @property
    def cache(self) -> TileCache:
        return TileCache(self.location.child("tiles", self.key[:16]))

    @property
    def created(self) -> str:
        return str(self.manifest["created"])

    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete"

    @property
    def tiles_done(self) -> int:
        return len(self._done)

    @property
    def finished_tiles(self) -> frozenset[int]:
        """Indexes of the tiles recorded as finished so far (by this or earlier attempts)."""
        return frozenset(self._done)

    def start(self, *, tiles_total: int) -> None:
        self.manifest["status"] = "running"  # also when republishing a complete scene
        self.manifest["tiles_total"] = tiles_total
        self.manifest["attempts"] = int(self.manifest.get("attempts", 0)) + 1
        self.flush()

    def record_tiles(self, indices: list[int]) -> None:
        """Note finished tiles; the manifest is rewritten at most every FLUSH_SECONDS."""
        self._done.update(indices)
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def record_stage(self, name: str) -> None:
        self.manifest["stages"][name] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.flush()

    def finish(
        self, *, outputs: dict[str, str], checksums: dict[str, Any] | None = None, keep_tiles: bool = False
    ) -> None:
        """Mark the scene published and drop its tiles (unless ``keep_tiles``).

        ``checksums`` fingerprint each published output (see :mod:`pipeline.run.outdir`): the
        scene is up to date only while they all still match.
        """
        self.manifest["status"] = "complete"
        self.manifest["outputs"] = outputs
        self.manifest["checksums"] = checksums or {}
        self.record_stage("published")
        if not keep_tiles:
            remove_tree(self.location.child("tiles"))

    def flush(self) -> None:
        self.manifest["tiles_done"] = sorted(self._done)
        try:
            write_json(self.location.child(MANIFEST), self.manifest)
        except OutputError as exc:
            raise OutputError(
                f"{self.location.url}: cannot write the restart state ({os_reason(exc)}); make that folder "
                "(or $XDG_STATE_HOME) writable, or set `restart.enabled: false` in the config to run "
                "without restarts"
            ) from exc
        self._last_flush = time.monotonic()

    def discard_if_unused(self, *, drop: bool = False) -> None:
        """Remove the state of a first attempt that failed before finishing a tile (any, with ``drop``)."""
        first = self.manifest.get("attempts", 0) <= 1 and not self._done and not self.complete
        if drop or first:
            remove_tree(self.location)
            if self.location.is_local:
                with contextlib.suppress(OSError):
                    Path(self.location.path).parent.rmdir()  # only when no other scene's state is there
