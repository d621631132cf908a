"""report.html: one self-contained page; in headless Chromium it makes no network request."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.describe.quicklook import jpeg_bytes, png_bytes
from pipeline.describe.report import ReportData, area_bins, histogram_svg, render_report
from pipeline.describe.summary import SceneStats
from tests.chromium import CHROMIUM, open_page

SCREENSHOT = Path("/tmp/report-screenshot.png")


def _data(**kw: object) -> ReportData:
    rgb = np.full((40, 60, 3), 120, np.uint8)
    base: dict[str, object] = {
        "record": {
            "scene": "s<1>", "input": {"url": "/d/s.tif", "width": 700, "height": 600, "crs": "EPSG:32614"},
            "grid": {"input_gsd_m": 0.5}, "counts": {"tiles": 4, "tiles_inferred": 3, "buildings": 3},
            "seconds": {"plan": 1.0, "infer_stitch": 2.5}, "footprints_version": "0.1.0",
            "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:04Z", "devices": ["cpu (X)"],
            "host": {"name": "h", "cpu": "X", "cpus": 2}, "gpus": [],
        },
        "stats": SceneStats(3, 90.0, 20.0, 0.85, 0.25, 0.1),
        "areas_m2": np.array([10.0, 20.0, 60.0]), "confidence": np.array([0.8, 0.85, 0.9]),
        "warnings": ["only 3 buildings found"], "model": {"id": "m", "classes": ["building", "boundary"]},
        "quicklook_image": png_bytes(rgb), "crop_image": jpeg_bytes(rgb), "crop_window": (5, 6, 60, 40),
        "confidence_low": 0.8, "outputs": ["mask.tif", "run.json"],
    }  # fmt: skip
    base.update(kw)
    return ReportData(**base)  # type: ignore[arg-type]


def test_the_page_is_self_contained() -> None:
    page = render_report(_data())
    assert "<link" not in page and not re.search(r"<script[^>]+src", page)
    assert not re.search(r"(src|href)=\"(https?:|//)", page) and "url(" not in page and "@import" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert [s[:22] for s in sources] == ["data:image/png;base64,", "data:image/jpeg;base64"]
    assert "http://" not in page and "https://" not in page


def test_the_page_shows_counts_areas_histograms_warnings_timings_and_the_model() -> None:
    page = render_report(_data())
    assert "s&lt;1&gt;: 3 buildings" in page  # escaped
    assert "90 m²" in page and "20.0 m²" in page and "25.0%" in page
    assert page.count("<svg") == 2 and page.count("<rect") >= 10
    assert "only 3 buildings found" in page and 'class="warn"' in page
    assert "infer_stitch" in page and "3.5 s" in page and "cpu (X)" in page
    assert "building, boundary" in page and 'href="mask.tif"' in page


def test_without_the_quicklook_the_page_says_how_it_was_turned_off() -> None:
    page = render_report(_data(quicklook_image=None, crop_image=None, crop_window=None, warnings=[]))
    assert "outputs.quicklook: false" in page and "<img" not in page and 'class="warn"' not in page


def test_histogram_of_nothing_is_an_empty_chart() -> None:
    svg = histogram_svg(np.array([]), bins=area_bins(np.array([])), label="area")
    assert svg.startswith("<svg") and "<rect" in svg


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium: `apt-get install -y chromium` (Debian)"
)
def test_demo_report_in_headless_chromium_makes_no_request_and_shows_the_quicklook_and_counts(
    demo_run: Path,
) -> None:
    expressions = {
        "title": "document.querySelector('h1').textContent",
        "quicklook": "(function(i){return [i.complete, i.naturalWidth, i.naturalHeight, i.src.slice(0, 5)]})"
        "(document.getElementById('quicklook'))",
        "crop": "document.querySelector('#zoom img').naturalWidth",
        "counts": "document.querySelector('.big').textContent",
        "shown": "document.getElementById('quicklook').getBoundingClientRect().width",
    }
    visit = open_page((demo_run / "report.html").as_uri(), expressions=expressions)
    SCREENSHOT.write_bytes(visit.screenshot)
    shutil.copy(SCREENSHOT, demo_run.parent / SCREENSHOT.name)
    schemes = {url.split(":", 1)[0] for url in visit.requests}
    assert schemes <= {"file", "data"}, visit.requests  # no http(s), ws, ftp: nothing left the machine
    assert visit.requests[0] == (demo_run / "report.html").as_uri()
    published = json.loads((demo_run / "run.json").read_text())["counts"]["buildings"]
    assert visit.values["title"] == f"aerial_sample: {published} buildings"
    assert visit.values["quicklook"] == [True, 1000, 1000, "data:"]
    assert (
        visit.values["crop"] == 768
        and visit.values["counts"] == str(published)
        and visit.values["shown"] > 500
    )
    from PIL import Image

    shot = np.asarray(Image.open(SCREENSHOT).convert("RGB"))
    assert shot.shape[1] >= 1200 and shot.shape[0] > 2000 and shot.std() > 30  # a page, not a blank
