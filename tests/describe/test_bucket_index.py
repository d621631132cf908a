"""A bucket's index.html and STAC collection.json, from the bucket manifest's entries."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline.describe.bucket_index import index_html, write_bucket_index
from pipeline.describe.stac import item_json, scene_item
from pipeline.run.bucket import BucketManifest, plan_bucket, scene_entry
from tests.describe.test_stac import NAMES, checksums, record
from tests.stacschemas import validate


def _bucket(tmp_path: Path) -> tuple[Path, BucketManifest]:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for name in ("a.tif", "b.tif", "c.tif"):
        (inp / name).write_bytes(b"x")
    jobs = plan_bucket(input_url=str(inp), output_url=str(out))
    manifest = BucketManifest(input_url=str(inp), output_url=str(out), pattern="*.tif", jobs=jobs)
    done: dict[str, Any] = {
        "counts": {"buildings": 12}, "summary": {"total_area_m2": 1234.5, "median_area_m2": 80.25},
        "warnings": ["only 12 buildings found"],
    }  # fmt: skip
    for scene in ("a", "b"):
        (out / scene).mkdir(parents=True)
        item = item_json(scene_item(record(scene), checksums=checksums(NAMES), outputs=NAMES))
        (out / scene / "item.json").write_text(json.dumps(item))
    manifest.record(scene_entry(jobs[0], record=done, error=None))
    manifest.record(scene_entry(jobs[1], record={**done, "skipped": True, "warnings": []}, error=None))
    manifest.record(scene_entry(jobs[2], record=None, error=OSError("disk <full>")))
    return out, manifest


def test_index_links_every_report_with_its_counts_and_status(tmp_path: Path) -> None:
    out, manifest = _bucket(tmp_path)
    index, collection = write_bucket_index(
        output_url=str(out), entries=manifest.scenes(), summary=manifest.summary()
    )
    page = Path(index.path).read_text()
    assert re.findall(r'href="([^"]+/report.html)"', page) == ["a/report.html", "b/report.html"]
    assert "1,234" in page and "80.2" in page and "only 12 buildings found" in page
    assert ">failed<" in page and "OSError: disk &lt;full&gt;" in page and ">up-to-date<" in page
    assert "1 done, 1 up-to-date, 1 failed" in page
    assert not re.search(r"(src|href)=\"https?:", page) and "<script" not in page
    data = json.loads(Path(collection.path).read_text())
    validate(data)
    assert [lk["href"] for lk in data["links"] if lk["rel"] == "item"] == ["./a/item.json", "./b/item.json"]


def test_an_empty_bucket_index_still_renders() -> None:
    page = index_html(title="t", entries=[], summary={"done": 0})
    assert page.startswith("<!DOCTYPE html>") and "0 scenes" in page
