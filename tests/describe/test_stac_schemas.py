"""Our STAC extension schemas (tests/stac-extensions): the real outputs pass, each broken rule fails.

The schemas are the project's own, written from the extensions' specifications (see
tests/stacschemas.py). Each case below breaks one rule of one extension's specification in a
real document (the item of a tiny `segment` run, the committed MLM JSON) and must be rejected
by that extension's schema; the documents themselves must pass.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pystac
import pytest
from pystac.extensions.file import FileExtension
from pystac.extensions.mlm import MLMExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.validation.local_validator import get_local_schema_cache
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.describe.stac import item_json, scene_item
from tests.conftest import coordinate_image, write_tif
from tests.describe.test_stac import NAMES, checksums, record
from tests.stacschemas import OFFICIAL_ENV, OURS, ours, schema_uri, validate

MLM_JSON = Path(__file__).resolve().parents[2] / "models" / "deeplabv3-lite0-buildings.mlm.json"
DELETE = object()
Path_ = tuple[str | int, ...]


def uri(name: str) -> str:
    """The schema URI of one of our extensions by short name (``"mlm"``)."""
    (found,) = [u for u in ours() if f"/{name}/" in u]
    return found


@pytest.fixture(scope="module")
def segment_item(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """item.json of a tiny `segment` run (160 x 128 px, 4 tiles): a real output."""
    tmp = tmp_path_factory.mktemp("seg")
    src = write_tif(tmp / "s.tif", coordinate_image(128, 160))
    config = tmp / "c.yaml"
    config.write_text("tiling: {tile_size: 128, overlap: 16}\n")
    result = CliRunner().invoke(
        app, ["segment", str(src), "--out", str(tmp / "out"), "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    item: dict[str, Any] = json.loads((tmp / "out" / "item.json").read_text())
    return item


@pytest.fixture(scope="module")
def mlm_item() -> dict[str, Any]:
    item: dict[str, Any] = json.loads(MLM_JSON.read_text())
    return item


def mutated(doc: dict[str, Any], changes: dict[Path_, Any]) -> dict[str, Any]:
    """A copy of ``doc`` with each path set to its value (or deleted); each path exists up to its last key."""
    out = copy.deepcopy(doc)
    for path, value in changes.items():
        parent: Any = out
        for key in path[:-1]:
            parent = parent[key]
        if value is DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    assert out != doc, changes
    return out


def rejected_by(doc: dict[str, Any], extension: str) -> str:
    """Validate ``doc``, expecting ``extension``'s schema to reject it; the error's text."""
    with pytest.raises(pystac.errors.STACValidationError) as error:
        validate(doc)
    text = str(error.value)
    assert f"against schema at {uri(extension)}" in text, text
    return text


# --- the real outputs pass ---------------------------------------------------------------


@pytest.mark.slow
def test_the_item_of_a_segment_run_validates(segment_item: dict[str, Any]) -> None:
    checked = validate(segment_item)
    assert checked[1:] == [uri("projection"), uri("raster"), uri("file")]


def test_the_committed_mlm_json_validates(mlm_item: dict[str, Any]) -> None:
    checked = validate(mlm_item)
    assert checked[1:] == [uri("mlm"), uri("raster"), uri("file")]


def test_an_item_in_a_crs_without_epsg_code_validates() -> None:
    wkt = 'PROJCS["custom",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",-99.5],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1]]'  # noqa: E501
    rec = record()
    rec["input"]["crs"] = wkt
    item = item_json(scene_item(rec, checksums=checksums(NAMES), outputs=NAMES))
    assert item["properties"]["proj:code"] is None and item["properties"]["proj:wkt2"].startswith("PROJCRS")
    validate(item)


def test_a_collection_with_file_and_projection_fields_validates() -> None:
    validate(_collection())
    with_checksum = mutated(_collection(), {("assets", "index", "file:checksum"): "1220" + "ab" * 31})
    rejected_by(with_checksum, "file")  # a sha2-256 digest one byte short
    at_top = mutated(_collection(), {("file:size",): 12})
    rejected_by(at_top, "file")  # an Asset / Link field, not a Collection field
    bad_code = mutated(_collection(), {("proj:code",): 32614})
    rejected_by(bad_code, "projection")


def _collection() -> dict[str, Any]:
    return {
        "type": "Collection", "stac_version": "1.1.0", "id": "c", "description": "d", "license": "other",
        "stac_extensions": [uri("projection"), uri("file")],
        "extent": {"spatial": {"bbox": [[-98.0, 29.0, -97.0, 30.0]]},
                   "temporal": {"interval": [["2026-01-01T00:00:00Z", None]]}},
        "links": [], "proj:code": "EPSG:32614",
        "assets": {"index": {"href": "./index.html", "type": "text/html", "roles": ["metadata"],
                             "file:checksum": "1220" + "ab" * 32, "file:size": 1234}},
    }  # fmt: skip


# --- each broken rule fails --------------------------------------------------------------

PROPS, PROB, MASK = ("properties",), ("assets", "probability"), ("assets", "mask")
SEGMENT_CASES: dict[str, tuple[str, dict[Path_, Any]]] = {
    # projection 2.0.0
    "proj:code not a string": ("projection", {(*PROPS, "proj:code"): 32614}),
    "proj:code not authority:code": ("projection", {(*PROPS, "proj:code"): "32614"}),
    "proj:epsg removed in 2.0": ("projection", {(*PROPS, "proj:epsg"): 32614}),
    "proj:shape of one number": ("projection", {(*PROPS, "proj:shape"): [128]}),
    "proj:shape of three numbers": ("projection", {(*PROPS, "proj:shape"): [128, 160, 3]}),
    "proj:shape not integers": ("projection", {(*PROPS, "proj:shape"): [128.5, 160]}),
    "proj:transform of 5 numbers": ("projection", {(*PROPS, "proj:transform"): [0.5, 0, 6e5, 0, -0.5]}),
    "proj:bbox of 3 numbers": ("projection", {(*PROPS, "proj:bbox"): [0, 0, 1]}),
    "proj:centroid off the globe": ("projection", {(*PROPS, "proj:centroid"): {"lat": 95.0, "lon": 0.0}}),
    "proj:wkt2 not a string": ("projection", {(*PROPS, "proj:wkt2"): {"wkt": "x"}}),
    "proj:wkt2 in WKT1": (
        "projection",
        {(*PROPS, "proj:wkt2"): 'PROJCS["WGS 84 / UTM zone 14N",GEOGCS["WGS 84"]]'},
    ),
    "no proj field at all": (
        "projection",
        {(*PROPS, "proj:code"): DELETE, (*PROPS, "proj:shape"): DELETE, (*PROPS, "proj:transform"): DELETE},
    ),
    # raster 1.1.0
    "raster data_type unknown": ("raster", {(*MASK, "raster:bands", 0, "data_type"): "uint7"}),
    "raster nodata not a number nor nan/inf": ("raster", {(*MASK, "raster:bands", 0, "nodata"): "none"}),
    "raster sampling unknown": ("raster", {(*MASK, "raster:bands", 0, "sampling"): "center"}),
    "raster scale not a number": ("raster", {(*PROB, "raster:bands", 0, "scale"): "1/255"}),
    "raster:bands empty": ("raster", {(*MASK, "raster:bands"): []}),
    "raster:bands in item properties": ("raster", {(*PROPS, "raster:bands"): [{"data_type": "uint8"}]}),
    "raster statistics valid_percent over 100": (
        "raster",
        {(*MASK, "raster:bands", 0, "statistics"): {"valid_percent": 120}},
    ),
    "raster histogram without buckets": (
        "raster",
        {(*MASK, "raster:bands", 0, "histogram"): {"count": 2, "min": 0, "max": 1}},
    ),
    "raster: field unknown": ("raster", {(*MASK, "raster:band"): []}),
    # file 2.1.0
    "file:checksum upper case": ("file", {(*MASK, "file:checksum"): "1220" + "AB" * 32}),
    "file:checksum not hex": ("file", {(*MASK, "file:checksum"): "sha256:" + "ab" * 32}),
    "file:checksum a bare digest whose code varint never ends": (
        "file",
        {(*MASK, "file:checksum"): "ab" * 32},
    ),
    "file:checksum sha2-256 digest truncated": ("file", {(*MASK, "file:checksum"): "1220" + "ab" * 16}),
    "file:checksum odd length": ("file", {(*MASK, "file:checksum"): "1220" + "ab" * 32 + "c"}),
    "file:size negative": ("file", {(*MASK, "file:size"): -1}),
    "file:size a string": ("file", {(*MASK, "file:size"): "1024"}),
    "file:byte_order unknown": ("file", {(*MASK, "file:byte_order"): "middle-endian"}),
    "file:local_path absolute": ("file", {(*MASK, "file:local_path"): "/tmp/mask.tif"}),
    "file:local_path with backslash": ("file", {(*MASK, "file:local_path"): "out\\mask.tif"}),
    "file:values mapping without summary": ("file", {(*MASK, "file:values"): [{"values": [1]}]}),
    "file:checksum in item properties": ("file", {(*PROPS, "file:checksum"): "1220" + "ab" * 32}),
    "file: field unknown": ("file", {(*MASK, "file:sha256"): "ab" * 32}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", SEGMENT_CASES)
def test_a_broken_rule_in_the_segment_item_is_rejected(segment_item: dict[str, Any], case: str) -> None:
    extension, changes = SEGMENT_CASES[case]
    rejected_by(mutated(segment_item, changes), extension)


MODEL, INPUT, OUTPUT = ("assets", "model"), (*PROPS, "mlm:input", 0), (*PROPS, "mlm:output", 0)
MLM_CASES: dict[str, tuple[str, dict[Path_, Any]]] = {
    **{
        f"{field} missing": ("mlm", {(*PROPS, field): DELETE})
        for field in ("mlm:name", "mlm:architecture", "mlm:tasks", "mlm:input", "mlm:output")
    },
    "mlm:name empty": ("mlm", {(*PROPS, "mlm:name"): ""}),
    "mlm:tasks not a list": ("mlm", {(*PROPS, "mlm:tasks"): "semantic-segmentation"}),
    "mlm:input empty": ("mlm", {(*PROPS, "mlm:input"): []}),
    "mlm:total_parameters a string": ("mlm", {(*PROPS, "mlm:total_parameters"): "5.7M"}),
    "mlm:pretrained a string": ("mlm", {(*PROPS, "mlm:pretrained"): "yes"}),
    "mlm:accelerator_count zero": ("mlm", {(*PROPS, "mlm:accelerator_count"): 0}),
    "mlm: field unknown": ("mlm", {(*PROPS, "mlm:epochs"): 12}),
    "mlm:artifact_type in item properties (an Asset field)": ("mlm", {(*PROPS, "mlm:artifact_type"): "x"}),
    "input without bands": ("mlm", {(*INPUT, "bands"): DELETE}),
    "input structure without data_type": ("mlm", {(*INPUT, "input", "data_type"): DELETE}),
    "input data_type unknown": ("mlm", {(*INPUT, "input", "data_type"): "float"}),
    "input shape with a zero dimension": ("mlm", {(*INPUT, "input", "shape"): [-1, 3, 0, -1]}),
    "input dim_order shorter than shape": (
        "mlm",
        {(*INPUT, "input", "dim_order"): ["batch", "bands", "height"]},
    ),
    "input band object without name": (
        "mlm",
        {(*INPUT, "bands", 0): {"format": "rio-calc", "expression": "b1"}},
    ),
    "input band object with format but no expression": (
        "mlm",
        {(*INPUT, "bands", 0): {"name": "red", "format": "rio-calc"}},
    ),
    "value_scaling z-score without stddev": ("mlm", {(*INPUT, "value_scaling", 0, "stddev"): DELETE}),
    "value_scaling type unknown": ("mlm", {(*INPUT, "value_scaling", 0, "type"): "standardize"}),
    "value_scaling processing without expression": (
        "mlm",
        {(*INPUT, "value_scaling", 0): {"type": "processing", "format": "gdal-calc"}},
    ),
    "resize_type unknown": ("mlm", {(*INPUT, "resize_type"): "bilinear"}),
    "pre_processing_function without expression": (
        "mlm",
        {(*INPUT, "pre_processing_function"): {"format": "python"}},
    ),
    "output without tasks": ("mlm", {(*OUTPUT, "tasks"): DELETE}),
    "output without result": ("mlm", {(*OUTPUT, "result"): DELETE}),
    "class value a string": ("mlm", {(*OUTPUT, "classification:classes", 0, "value"): "0"}),
    "class without description": ("mlm", {(*OUTPUT, "classification:classes", 0, "description"): DELETE}),
    "class color_hint with #": ("mlm", {(*OUTPUT, "classification:classes", 0, "color_hint"): "#FF0000"}),
    "classification:classes empty": ("mlm", {(*OUTPUT, "classification:classes"): []}),
    "no asset with the mlm:model role": ("mlm", {(*MODEL, "roles"): ["data"]}),
    "model asset without mlm:artifact_type": ("mlm", {(*MODEL, "mlm:artifact_type"): DELETE}),
    "mlm:compile_method unknown": ("mlm", {(*MODEL, "mlm:compile_method"): "ahead-of-time"}),
    "mlm:input in an asset (Item properties only)": ("mlm", {(*MODEL, "mlm:input"): []}),
    "model asset band without a name": ("mlm", {(*MODEL, "raster:bands", 0, "name"): DELETE}),
    "model asset raster data_type unknown": ("raster", {(*MODEL, "raster:bands", 0, "data_type"): "byte"}),
    "model asset checksum truncated": ("file", {(*MODEL, "file:checksum"): "1220" + "b8fd469c" * 7}),
}


@pytest.mark.parametrize("case", MLM_CASES)
def test_a_broken_rule_in_the_mlm_json_is_rejected(mlm_item: dict[str, Any], case: str) -> None:
    extension, changes = MLM_CASES[case]
    rejected_by(mutated(mlm_item, changes), extension)


def test_an_undeclared_extension_is_not_checked_and_a_declared_one_must_be_listed(
    mlm_item: dict[str, Any],
) -> None:
    """pystac checks the extensions a document lists; each of our schemas also requires being listed."""
    undeclared = mutated(mlm_item, {("stac_extensions",): [uri("mlm"), uri("raster")]})
    assert validate(undeclared)[1:] == [uri("mlm"), uri("raster")]
    with pytest.raises(jsonschema.ValidationError, match="contain"):
        jsonschema.validate(undeclared, ours()[uri("file")])


# --- the schemas themselves --------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(OURS.glob("*.json")), ids=lambda p: p.name)
def test_each_schema_is_ours_draft_07_and_names_its_specification(path: Path) -> None:
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["$id"] == schema_uri(path)
    name, _, version = path.stem.rpartition("-v")
    assert "footprints' own JSON Schema" in schema["$comment"] and f"v{version}" in schema["$comment"]
    assert f"https://github.com/stac-extensions/{name}/blob/v{version}/README.md" in schema["$comment"]


def test_every_reference_resolves_offline() -> None:
    """Each $ref is within the file, or names one of our schemas or one pystac ships."""
    offline = set(ours()) | set(get_local_schema_cache())
    for path in sorted(OURS.glob("*.json")):
        for ref in re.findall(r'"\$ref":\s*"([^"]+)"', path.read_text()):
            target = ref.split("#", 1)[0]
            assert not target or target in offline, (path.name, ref)


def test_every_extension_pystac_writes_for_us_has_our_schema() -> None:
    """A pystac upgrade that moves one of our extensions to another version fails here, not later."""
    used = {
        ext.get_schema_uri() for ext in (ProjectionExtension, RasterExtension, FileExtension, MLMExtension)
    }
    assert used <= set(ours())
    assert set(ours()) == used | {uri("classification"), uri("processing")}  # the two MLM refers to


def test_the_published_schemas_are_checked_too_when_stac_schemas_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlm_item: dict[str, Any]
) -> None:
    """$STAC_SCHEMAS adds a second validation; a stricter schema there rejects what ours accept."""
    for path in OURS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    stricter = json.loads((tmp_path / "file-v2.1.0.json").read_text())
    stricter["properties"]["assets"] = {
        "additionalProperties": {"properties": {"file:size": {"maximum": 10}}}
    }
    (tmp_path / "file-v2.1.0.json").write_text(json.dumps(stricter))
    assert validate(mlm_item)  # ours alone accept it
    monkeypatch.setenv(OFFICIAL_ENV, str(tmp_path))
    with pytest.raises(pystac.errors.STACValidationError, match="is greater than the maximum of 10"):
        validate(mlm_item)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(OFFICIAL_ENV, str(empty))
    with pytest.raises(Exception, match=re.escape(f"offline: no schema for {uri('mlm')}")):
        validate(mlm_item)
