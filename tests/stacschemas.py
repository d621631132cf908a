"""Offline STAC validation with pystac's validator: the core schemas and our extension schemas.

pystac ships the STAC core schemas (Item, Catalog, Collection, v1.1.0). The extensions our
documents declare (projection 2.0.0, raster 1.1.0, file 2.1.0, mlm 1.4.0, and classification
1.1.0 and processing 1.1.0, which MLM refers to) are checked against the project's own JSON
Schemas in ``tests/stac-extensions/``: written from each extension's specification (its field
tables), each with the extension's identifier as ``$id`` so pystac's validator picks it for the
URI a document declares. The extensions' published schemas may not be committed here (see
DESIGN.md, "Outputs and metadata"). So every document is validated against core and extensions
in every run; nothing is skipped and nothing is fetched (a StacIO that refuses the network
stands in while validating, so a schema we do not have is an error, not a download).

Cross-check: with ``$STAC_SCHEMAS`` naming a folder of the extensions' published schemas
(``NAME-vX.Y.Z.json``, each extension's ``json-schema/schema.json`` at its release tag), every
document is validated against those too, after ours.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pystac
import pystac.validation

#: The project's own extension schemas (committed).
OURS = Path(__file__).resolve().parent / "stac-extensions"
#: A folder of the extensions' published schemas, for the optional cross-check.
OFFICIAL_ENV = "STAC_SCHEMAS"


def schema_uri(path: Path) -> str:
    """``projection-v2.0.0.json`` -> the projection extension's v2.0.0 identifier."""
    name, _, version = path.stem.rpartition("-v")
    return f"https://stac-extensions.github.io/{name}/v{version}/schema.json"


@cache
def load(folder: Path) -> dict[str, dict[str, Any]]:
    """Schema URI -> schema, for every ``NAME-vX.Y.Z.json`` in ``folder``."""
    return {schema_uri(p): json.loads(p.read_text()) for p in sorted(folder.glob("*-v*.json"))}


def ours() -> dict[str, dict[str, Any]]:
    return load(OURS)


def official() -> dict[str, dict[str, Any]] | None:
    """The published schemas in ``$STAC_SCHEMAS``, when it is set (a folder that must exist)."""
    folder = os.environ.get(OFFICIAL_ENV)
    if not folder:
        return None
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"${OFFICIAL_ENV}={folder} is not a folder of STAC extension schemas")
    return load(Path(folder))


class OfflineStacIO(pystac.StacIO):
    """A StacIO that refuses the network (the validator fetches unknown schemas through it)."""

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        raise OSError(f"offline: no schema for {source} in tests/stac-extensions (or ${OFFICIAL_ENV})")

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        raise OSError("offline: no writes")


def validate(stac: dict[str, Any]) -> list[str]:
    """Validate a STAC Item, Collection or Catalog dict offline; the schema URIs it was checked against.

    The core schema and, for every extension it declares, our schema of that extension; then, with
    ``$STAC_SCHEMAS`` set, the same against the published schemas there. Raises
    ``pystac.errors.STACValidationError`` when the document is invalid.
    """
    checked = validate_with(stac, ours())
    published = official()
    if published is not None:
        validate_with(stac, published)
    return checked


def validate_with(stac: dict[str, Any], schemas: dict[str, dict[str, Any]]) -> list[str]:
    """Validate against pystac's core schemas and ``schemas`` (URI -> schema) only, offline."""
    validator = pystac.validation.JsonSchemaSTACValidator()
    validator.schema_cache.update(schemas)
    default = pystac.StacIO.default
    pystac.StacIO.set_default(OfflineStacIO)
    try:
        return list(pystac.validation.validate_dict(stac, validator=validator))
    finally:
        pystac.StacIO.set_default(default)
