"""The output folder: who may write it, one run at a time, and whether it is intact.

Before a scene run writes anything, :func:`claim` checks, in this order:

1. the input is not one of the outputs (``segment OUT/probability.tif --out OUT``): never
   overwritten, not even with ``force``;
2. nobody else is writing OUTDIR: an atomic lock file, ``OUTDIR/.footprints.lock``
   (created with ``O_CREAT | O_EXCL``; it holds the PID, host and start time). A lock
   whose process is gone (same host, PID no longer alive) is stale and taken over; a live
   one makes the second run stop with :class:`OutputBusyError` (it does not wait);
3. OUTDIR is ours: outputs already there belong to the same scene (input URL) and config
   digest, as ``owner`` in their ``run.json`` says (or the restart manifest, while a
   publish is half done). Outputs of another scene or config, or files footprints did not
   write, are only replaced with ``force``.

The lock is local only. S3 has no atomic create-if-absent through s3fs, so concurrent
runs into one S3 prefix are not prevented (the bucket flow gives every scene its own
prefix and runs it once); the input and owner checks work on S3 too.

:func:`publish_outputs` moves the staged outputs into place and records a fingerprint of
each (SHA-256 and size; plus the ETag on S3), and :func:`changed_outputs` tells which
published outputs are missing or no longer match, so that a scene is only "up to date"
while all its outputs are intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.core.digest import file_sha256
from pipeline.core.errors import OutputBusyError, OutputConflictError, OutputError
from pipeline.describe.output_files import OPTIONAL_NAMES, OUTPUT_NAMES, fingerprint, staged_names
from pipeline.io.storage import Location, read_json, remove_file, stat, upload
from pipeline.io.write import pid_alive
from pipeline.run.restart import MANIFEST, state_location

LOCK_NAME = ".footprints.lock"
#: A lock file still empty after this many seconds was left by a run killed while creating it.
LOCK_WRITE_GRACE_S = 5.0
_ATTEMPTS = 100  # of 0.1 s at most each: longer than LOCK_WRITE_GRACE_S
FORCE_HINT = "choose another --out, or pass --force (flow parameter force=true) to replace them"


def owner(*, scene: str, config_sha256: str) -> dict[str, str]:
    """What marks OUTDIR as one run's: the scene's input URL and the config digest."""
    return {"scene": scene, "config_sha256": config_sha256}


def check_not_input(source: Location, out: Location) -> None:
    """Refuse an OUTDIR where publishing would replace the input itself."""
    for name in OUTPUT_NAMES:
        if _same_file(source, out.child(name)):
            raise OutputConflictError(
                f"{source.url}: the input is {name} in the output folder {out.url} and would be "
                "overwritten; choose another --out (or move the input out of it)"
            )


def _same_file(a: Location, b: Location) -> bool:
    if a.scheme != b.scheme:
        return False
    if a.path.rstrip("/") == b.path.rstrip("/"):
        return True
    if not a.is_local:
        return False
    try:
        return os.path.samefile(a.path, b.path)
    except OSError:
        return False


def check_owner(out: Location, mine: dict[str, str]) -> None:
    """Refuse to replace outputs in ``out`` that another scene or config (or a user) owns."""
    present = [name for name in OUTPUT_NAMES if stat(out.child(name)) is not None]
    if not present:
        return
    found = recorded_owner(out, run_json="run.json" in present)
    if found is None:
        raise OutputConflictError(
            f"{out.url}: holds {', '.join(present)} and no run.json of footprints saying whose they "
            f"are; {FORCE_HINT}"
        )
    if found["scene"] != mine["scene"]:
        raise OutputConflictError(
            f"{out.url}: holds the outputs of another scene, {found['scene']}; {FORCE_HINT}"
        )
    if found.get("config_sha256") not in (None, mine["config_sha256"]):
        raise OutputConflictError(
            f"{out.url}: holds the outputs of {found['scene']} made with another config; {FORCE_HINT}"
        )


def recorded_owner(out: Location, *, run_json: bool = True) -> dict[str, Any] | None:
    """The owner that ``run.json`` records (``input.url`` for a run.json without one).

    Without a readable ``run.json`` (a publish interrupted before its last file, or a
    damaged one), the restart manifest beside OUTDIR tells whose outputs these are.
    """
    record = (read_json(out.child("run.json")) if run_json else None) or {}
    if isinstance(record.get("owner"), dict) and record["owner"].get("scene"):
        return dict(record["owner"])
    if url := _input_url(record):
        return {"scene": url, "config_sha256": None}
    manifest = read_json(state_location(out).child(MANIFEST)) or {}
    if url := _input_url(manifest):
        return {"scene": url, "config_sha256": manifest.get("config_sha256")}
    return None


def _input_url(record: dict[str, Any]) -> str | None:
    source = record.get("input")
    url = source.get("url") if isinstance(source, dict) else None
    return url if isinstance(url, str) and url else None


@contextlib.contextmanager
def claim(*, source: Location, out: Location, mine: dict[str, str], force: bool = False) -> Iterator[None]:
    """Hold OUTDIR for one run: the input, lock and owner checks of the module docstring."""
    check_not_input(source, out)
    lock = OutDirLock.acquire(Path(out.path)) if out.is_local else None
    try:
        if not force:
            check_owner(out, mine)
        yield
    finally:
        if lock is not None:
            lock.release()


@dataclass(frozen=True)
class OutDirLock:
    """``OUTDIR/.footprints.lock``, held by this process (see :meth:`acquire`)."""

    path: Path
    token: str
    created_dir: bool

    @classmethod
    def acquire(cls, out_dir: Path) -> OutDirLock:
        """Create the lock file atomically, taking over a stale one; raise if it is held."""
        created = not out_dir.exists()
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"{out_dir}: cannot create the output folder ({exc}); choose a writable --out"
            ) from exc
        path = out_dir / LOCK_NAME
        token = uuid.uuid4().hex
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "token": token,
            "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        for _ in range(_ATTEMPTS):
            if _create(path, me):
                return cls(path=path, token=token, created_dir=created)
            holder = _read_lock(path)
            if holder is None:  # released meanwhile, or its creator is still writing it
                time.sleep(0.1)
            elif _is_stale(holder):
                _break(path, holder)
            else:
                raise OutputBusyError(_busy_message(path, out_dir, holder))
        raise OutputBusyError(_busy_message(path, out_dir, _read_lock(path) or {}))

    def release(self) -> None:
        """Remove the lock if it is still ours, and OUTDIR too if this run created it empty."""
        holder = _read_lock(self.path)
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        if self.created_dir:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only succeeds when nothing was published


def _create(path: Path, content: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the lock file ({exc}); choose a writable --out") from exc
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(content))
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write the lock file ({exc}); choose a writable --out") from exc
    return True


def _read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's holder; ``{}`` for an unreadable file left too long; None if absent or new."""
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot read the lock file ({exc}); make it readable, or delete it if no run holds it"
        ) from exc
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict):
            return data
    return {} if age > LOCK_WRITE_GRACE_S else None


def _is_stale(holder: dict[str, Any]) -> bool:
    """Held by a process of this host that is gone (or a lock that was never filled in)."""
    if not holder:
        return True
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    return not pid_alive(pid)


def _break(path: Path, holder: dict[str, Any]) -> None:
    """Move a stale lock aside; put it back if, meanwhile, it was a fresh one we moved."""
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        if _read_lock(aside) != holder:  # a run took the lock between our read and the rename
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
    finally:
        aside.unlink(missing_ok=True)


def _busy_message(path: Path, out_dir: Path, holder: dict[str, Any]) -> str:
    who = f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}"
    return (
        f"{path}: another footprints run ({who}) is writing to {out_dir}; wait for it to finish, "
        "or delete the lock file if that run is gone"
    )


def publish_outputs(
    workdir: Path, out: Location, staged: dict[str, dict[str, Any]]
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Move the staged outputs to ``out`` (``run.json`` last): their URLs and checksums.

    ``staged`` has the :func:`fingerprint` of every output but ``run.json`` (which records
    them); the checksums returned add ``run.json``'s and, on S3, each object's ETag once
    uploaded, so that :func:`changed_outputs` needs no download. An optional output that
    this run did not make (the quicklook, turned off) is removed from ``out`` first.
    """
    urls: dict[str, str] = {}
    checksums = {**{k: dict(v) for k, v in staged.items()}, "run.json": fingerprint(workdir / "run.json")}
    names = staged_names(workdir)
    for name in OPTIONAL_NAMES - set(names):
        remove_file(out.child(name))
    for name in names:
        upload(workdir / name, dest := out.child(name))
        urls[name] = dest.url
        if not out.is_local:
            checksums[name]["etag"] = _etag(stat(dest) or {})
    return urls, checksums


def _etag(info: dict[str, Any]) -> str:
    return str(info.get("ETag") or info.get("etag") or "").strip('"')


def changed_outputs(out: Location, checksums: dict[str, Any]) -> list[str]:
    """The outputs in ``out`` that are missing or differ from the published ``checksums``.

    An optional output that was not published (see :data:`OPTIONAL_NAMES`) is not missing.
    """
    expected = [n for n in OUTPUT_NAMES if n not in OPTIONAL_NAMES or n in checksums]
    return [name for name in expected if not _matches(out.child(name), checksums.get(name))]


def _matches(where: Location, want: Any) -> bool:
    if not isinstance(want, dict):
        return False  # published without checksums (or not at all)
    return _local_matches(where, want) if where.is_local else _object_matches(where, want)


def _local_matches(where: Location, want: dict[str, Any]) -> bool:
    path = Path(where.path)
    if not path.is_file() or path.stat().st_size != want.get("size"):
        return False
    return file_sha256(path) == want.get("sha256")


def _object_matches(where: Location, want: dict[str, Any]) -> bool:
    if (info := stat(where)) is None:
        return False
    return int(info.get("size", -1)) == want.get("size") and _etag(info) == want.get("etag")
