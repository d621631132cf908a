"""Offline STAC validation: pystac's validator, core schemas always, extension schemas where present.

pystac ships the core Item/Collection schemas, so every STAC document is validated against
them. The extensions' schemas (projection, raster, file, mlm and what mlm references) are not
committed: no package registry ships them, and copies taken from the extensions' repositories
may not be committed here. Put them (``NAME-vX.Y.Z.json``, each extension's
``json-schema/schema.json`` at its release tag) in ``tests/schemas/`` (git-ignored) or in the
folder ``$STAC_SCHEMAS``; without them the extension part of a test is skipped, saying so. The
validator never reaches the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pystac
import pystac.validation

SCHEMAS = Path(os.environ.get("STAC_SCHEMAS") or Path(__file__).resolve().parent / "schemas")


def vendored() -> dict[str, dict[str, Any]]:
    """Schema URI -> schema, for every ``NAME-vX.Y.Z.json`` in ``tests/schemas``."""
    out = {}
    for path in sorted(SCHEMAS.glob("*-v*.json")):
        name, _, version = path.stem.rpartition("-v")
        out[f"https://stac-extensions.github.io/{name}/v{version}/schema.json"] = json.loads(path.read_text())
    return out


class OfflineStacIO(pystac.StacIO):
    """A StacIO that refuses the network (the validator fetches unknown schemas through it)."""

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        raise OSError(f"offline: {source} is not vendored in tests/schemas")

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        raise OSError("offline: no writes")


def validate(stac: dict[str, Any]) -> list[str]:
    """Validate a STAC Item or Collection dict offline; the schema URIs it was checked against.

    The core schema always; then, when every extension schema it names is available, the whole
    document (else the test is skipped after the core check, naming the missing schemas).
    """
    import pytest

    _validate({**stac, "stac_extensions": []})
    missing = sorted(set(stac.get("stac_extensions", [])) - set(vendored()))
    if missing:
        pytest.skip(
            f"STAC extension schemas not available offline ({', '.join(missing)}): see tests/stacschemas.py"
        )
    return _validate(stac)


def _validate(stac: dict[str, Any]) -> list[str]:
    validator = pystac.validation.JsonSchemaSTACValidator()
    validator.schema_cache.update(vendored())
    default = pystac.StacIO.default
    pystac.StacIO.set_default(OfflineStacIO)
    try:
        return list(pystac.validation.validate_dict(stac, validator=validator))
    finally:
        pystac.StacIO.set_default(default)
