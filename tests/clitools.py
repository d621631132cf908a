"""Helpers shared by the CLI tests (test_outdir, test_faults): the error line, OUTDIR's files."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from pipeline.describe.output_files import OUTPUT_NAMES
from pipeline.run.outdir import LOCK_NAME, owner


def error_line(output: str) -> str:
    """The one ``error:`` line of a CLI run's output (and no traceback)."""
    lines = [ln for ln in output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def listing(folder: Path) -> dict[str, bytes]:
    """The plain files directly in ``folder``, name → bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def publish_fake(out: Path, *, scene: str, config_sha256: str = "c") -> None:
    """Five output files in ``out`` whose run.json says ``scene`` and ``config_sha256`` own them."""
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_NAMES[:4]:
        (out / name).write_bytes(name.encode())
    record = {"owner": owner(scene=scene, config_sha256=config_sha256), "input": {"url": scene}}
    (out / "run.json").write_text(json.dumps(record))


def write_lock(out: Path, **holder: Any) -> Path:
    """OUTDIR's lock file, held by ``holder`` (``pid``, ``token``; this host unless ``host``)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    path.write_text(json.dumps({"host": socket.gethostname(), "started": "2026-01-01T00:00:00Z", **holder}))
    return path
