"""Offline STAC validation: pystac's validator with the vendored extension schemas.

pystac ships the core schemas; ``tests/schemas/`` holds the extensions' (see its README).
Any schema that is in neither makes the validator fail instead of reaching the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pystac
import pystac.validation

SCHEMAS = Path(__file__).resolve().parent / "schemas"


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
    """Validate a STAC Item or Collection dict offline; the schema URIs it was checked against."""
    validator = pystac.validation.JsonSchemaSTACValidator()
    validator.schema_cache.update(vendored())
    default = pystac.StacIO.default
    pystac.StacIO.set_default(OfflineStacIO)
    try:
        return list(pystac.validation.validate_dict(stac, validator=validator))
    finally:
        pystac.StacIO.set_default(default)
