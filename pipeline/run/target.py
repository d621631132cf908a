"""Where one scene comes from and goes to, and what a rerun finds there.

:class:`SceneTarget` resolves the input and OUTDIR and claims OUTDIR for a run (see
:mod:`pipeline.run.outdir`); :func:`open_state` opens the scene's restart manifest and
:func:`finished_record` says whether the exact run was already published, intact.
"""

from __future__ import annotations

import os
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import PipelineConfig
from pipeline.io.storage import Location, inspect_input, parse_location, read_json
from pipeline.io.write import staging_dir
from pipeline.run.outdir import changed_outputs, claim, owner
from pipeline.run.restart import SceneState, config_digest, run_key

if TYPE_CHECKING:
    from pipeline.run.model_choice import ModelChoice


def scene_id(path: str) -> str:
    return Path(path.rstrip("/")).stem


@dataclass(frozen=True)
class SceneTarget:
    """Where one scene comes from and goes to, with the identity of its input's content."""

    input: Location
    out: Location
    input_identity: dict[str, Any]
    input_modified: str

    @classmethod
    def resolve(cls, *, input_url: str, out_url: str | os.PathLike[str]) -> SceneTarget:
        src = parse_location(input_url)
        ident, modified = inspect_input(src)
        return cls(input=src, out=parse_location(out_url), input_identity=ident, input_modified=modified)

    def claim(self, config: PipelineConfig, *, force: bool = False) -> AbstractContextManager[None]:
        """Hold OUTDIR for this run: never the input, one run at a time, only our outputs
        replaced unless ``force`` (see :mod:`pipeline.run.outdir`)."""
        mine = owner(scene=self.input.url, config_sha256=config_digest(config))
        return claim(source=self.input, out=self.out, mine=mine, force=force)

    def staging(self) -> AbstractContextManager[Path]:
        """Scratch space: hidden inside a local OUTDIR, a local temporary folder otherwise."""
        return staging_dir(self.out.path if self.out.is_local else None)


def open_state(
    *, target: SceneTarget, model: ModelChoice, config: PipelineConfig, force: bool = False
) -> SceneState | None:
    """The scene's restart manifest (None when ``restart.enabled`` is off)."""
    if not config.restart.enabled:
        return None
    model_sha, config_sha = model.sha256, config_digest(config)
    key = run_key(input_identity=target.input_identity, model_sha256=model_sha, config_sha256=config_sha)
    describe = {
        "input": {"url": target.input.url, **target.input_identity},
        "output": target.out.url,
        "model_sha256": model_sha,
        "config_sha256": config_sha,
    }
    return SceneState.open(out=target.out, key=key, describe=describe, force=force)


def finished_record(*, state: SceneState | None, target: SceneTarget) -> dict[str, Any] | None:
    """The published ``run.json`` when this exact run (same key) already completed and
    its five outputs are still what was published (else the scene is published again)."""
    if state is None or not state.complete:
        return None
    if changed := changed_outputs(target.out, state.manifest.get("checksums") or {}):
        warnings.warn(
            f"{target.out.url}: {', '.join(changed)} missing or changed since the scene was "
            "published; publishing it again",
            stacklevel=2,
        )
        return None
    record = read_json(target.out.child("run.json"))
    if record is None or record.get("run_key") != state.key:
        return None
    return record


def display(location: Location) -> Path | str:
    return Path(location.path) if location.is_local else location.url
