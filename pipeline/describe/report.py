"""``report.html``: one self-contained page about one scene, openable offline.

Pictures are ``data:`` URIs, histograms inline SVG, style and the zoom script inline: the
page makes no network request. It shows the quicklook, a full-resolution crop that zooms
(wheel or buttons) and pans (drag), the counts and areas, histograms of area and confidence,
the warnings, the stage timings, the model card in brief and where the run ran.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.describe.quicklook import RAMP
from pipeline.describe.summary import SceneStats

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:16px 24px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c9cfdb}main{padding:16px 24px;max-width:1200px}
section{background:#fff;border-radius:8px;padding:12px 16px;margin:0 0 16px;box-shadow:0 1px 2px #0002}
h2{font-size:17px;margin:0 0 8px}table{border-collapse:collapse}td,th{padding:2px 12px 2px 0;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff4e0;border-left:4px solid #f0a020}
.big{font-size:28px;font-weight:600}.grid{display:flex;flex-wrap:wrap;gap:24px}
img.ql{max-width:100%;height:auto;display:block}#zoom{overflow:hidden;width:min(100%,768px);
aspect-ratio:1/1;border:1px solid #ccd;cursor:grab;background:#303030;position:relative}
#zoom img{transform-origin:0 0;position:absolute;left:0;top:0;image-rendering:pixelated;user-select:none}
button{margin:4px 4px 4px 0}.legend{height:12px;width:240px;display:inline-block;vertical-align:middle}
"""

ZOOM_JS = """
(function(){var box=document.getElementById('zoom');if(!box)return;var img=box.querySelector('img');
var s=1,x=0,y=0,drag=null;function fit(){s=box.clientWidth/img.naturalWidth;x=0;y=0;draw();}
function draw(){img.style.transform='translate('+x+'px,'+y+'px) scale('+s+')';}
function zoom(f,cx,cy){x=cx-(cx-x)*f;y=cy-(cy-y)*f;s*=f;draw();}
box.addEventListener('wheel',function(e){e.preventDefault();var r=box.getBoundingClientRect();
zoom(e.deltaY<0?1.25:0.8,e.clientX-r.left,e.clientY-r.top);},{passive:false});
box.addEventListener('mousedown',function(e){drag=[e.clientX-x,e.clientY-y];});
window.addEventListener('mouseup',function(){drag=null;});
window.addEventListener('mousemove',function(e){if(drag){x=e.clientX-drag[0];y=e.clientY-drag[1];draw();}});
document.getElementById('zin').onclick=function(){zoom(1.5,box.clientWidth/2,box.clientHeight/2);};
document.getElementById('zout').onclick=function(){zoom(1/1.5,box.clientWidth/2,box.clientHeight/2);};
document.getElementById('zfull').onclick=function(){s=1;x=0;y=0;draw();};
document.getElementById('zfit').onclick=fit;if(img.complete)fit();else img.onload=fit;})();
"""


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows; ``record`` is the scene's ``run.json`` (without checksums)."""

    record: dict[str, Any]
    stats: SceneStats
    areas_m2: NDArray[np.float64]
    confidence: NDArray[np.float64]
    warnings: Sequence[str] = ()
    model: dict[str, Any] = field(default_factory=dict)
    quicklook_image: bytes | None = None  # PNG or JPEG bytes (describe embeds JPEG: smaller)
    crop_image: bytes | None = None
    crop_window: tuple[int, int, int, int] | None = None  # col_off, row_off, cols, rows
    confidence_low: float = 0.5
    outputs: Sequence[str] = ()


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def data_uri(image: bytes) -> str:
    """A ``data:`` URI of a PNG or JPEG."""
    kind = "png" if image.startswith(b"\x89PNG") else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(image).decode("ascii")


def table(rows: Iterable[tuple[str, Any]], *, numeric: bool = True) -> str:
    cls = ' class="n"' if numeric else ""
    body = "".join(f"<tr><th>{esc(k)}</th><td{cls}>{esc(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def histogram_svg(values: NDArray[np.float64], *, bins: NDArray[np.float64], label: str) -> str:
    """Counts of ``values`` in ``bins`` as an inline SVG bar chart (320 x 160)."""
    w, h, pad = 320, 160, 28
    counts, edges = np.histogram(values, bins=bins)
    top = max(1, int(counts.max())) if counts.size else 1
    bar_w = (w - 2 * pad) / max(1, counts.size)
    bars = "".join(
        f'<rect x="{pad + i * bar_w:.1f}" y="{h - pad - (c / top) * (h - 2 * pad):.1f}" '
        f'width="{max(bar_w - 1, 1):.1f}" height="{(c / top) * (h - 2 * pad):.1f}" fill="#3b6fd8">'
        f"<title>{_fmt(edges[i])}-{_fmt(edges[i + 1])}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    ticks = f'<text x="{pad}" y="{h - 8}" font-size="11">{_fmt(edges[0])}</text>' + (
        f'<text x="{w - pad}" y="{h - 8}" font-size="11" text-anchor="end">{_fmt(edges[-1])}</text>'
    )
    axis = f'<text x="{w / 2}" y="{h - 8}" font-size="11" text-anchor="middle">{esc(label)}</text>'
    peak = f'<text x="{pad - 4}" y="{pad + 4}" font-size="11" text-anchor="end">{top}</text>'
    return (
        f'<svg width="{w}" height="{h}" role="img" '
        f'aria-label="{esc(label)}"><line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" '
        f'stroke="#888"/>{bars}{ticks}{axis}{peak}</svg>'
    )


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 else f"{v:.2f}"


def area_bins(areas: NDArray[np.float64], n: int = 12) -> NDArray[np.float64]:
    """Log-spaced bins over the areas (square metres)."""
    if areas.size == 0:
        return np.array([0.0, 1.0])
    lo, hi = max(float(areas.min()), 0.1), max(float(areas.max()), 1.0)
    return np.asarray(np.geomspace(lo, hi * 1.0001, n + 1), dtype=np.float64)


def confidence_bins(low: float, n: int = 10) -> NDArray[np.float64]:
    return np.asarray(np.linspace(min(low, 1.0), 1.0, n + 1), dtype=np.float64)


def legend(low: float) -> str:
    stops = ",".join(f"rgb{c}" for c in RAMP)
    return (
        f'confidence {low:.2f} <span class="legend" style="background:linear-gradient(90deg,{stops})">'
        "</span> 1.00"
    )


def render_report(data: ReportData) -> str:
    """The whole page as one string."""
    rec = data.record
    parts = [_header(data), _warnings(data.warnings), _figures(data), _pictures(data), _run(rec, data.model)]
    parts.append(_outputs(data.outputs))
    title = f"footprints: {rec.get('scene', '')}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
        f"<body>{parts[0]}<main>{''.join(parts[1:])}</main><script>{ZOOM_JS}</script></body></html>\n"
    )


def _header(data: ReportData) -> str:
    rec, s = data.record, data.stats
    inp = rec.get("input", {})
    return (
        f"<header><h1>{esc(rec.get('scene', ''))}: {s.buildings:,} buildings</h1>"
        f"<p>{esc(inp.get('url', ''))} &middot; {inp.get('width', 0):,} x {inp.get('height', 0):,} px "
        f"&middot; {esc(inp.get('crs', ''))} &middot; GSD {rec.get('grid', {}).get('input_gsd_m', '?')} m "
        f"&middot; finished {esc(rec.get('finished', ''))}</p></header>"
    )


def _warnings(warnings: Sequence[str]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{esc(w)}</li>" for w in warnings)
    return f'<section class="warn"><h2>Warnings</h2><ul>{items}</ul></section>'


def _pictures(data: ReportData) -> str:
    if data.quicklook_image is None:
        return (
            "<section><h2>Quicklook</h2><p>Turned off (<code>outputs.quicklook: false</code>).</p></section>"
        )
    out = (
        f"<section><h2>Quicklook</h2><p>{legend(data.confidence_low)}</p>"
        f'<img class="ql" id="quicklook" alt="quicklook: the scene with its footprints" '
        f'src="{data_uri(data.quicklook_image)}"></section>'
    )
    if data.crop_image is not None and data.crop_window is not None:
        c, r, w, h = data.crop_window
        out += (
            f"<section><h2>Full resolution</h2><p>{w} x {h} px from column {c:,}, row {r:,} "
            "(where the buildings are densest). Wheel or buttons to zoom, drag to pan.</p>"
            '<button id="zin">+</button><button id="zout">&minus;</button><button id="zfull">1:1</button>'
            f'<button id="zfit">fit</button><div id="zoom"><img alt="full-resolution crop" '
            f'src="{data_uri(data.crop_image)}" draggable="false"></div></section>'
        )
    return out


def _figures(data: ReportData) -> str:
    s, counts = data.stats, data.record.get("counts", {})
    headline = (
        f'<div><div class="big">{s.buildings:,}</div>buildings</div>'
        f'<div><div class="big">{s.total_area_m2:,.0f} m²</div>total building area</div>'
        f'<div><div class="big">{s.median_area_m2:,.1f} m²</div>median building area</div>'
    )
    rows = [
        ("mean confidence", "n/a" if math.isnan(s.mean_confidence) else f"{s.mean_confidence:.3f}"),
        ("nodata share", f"{s.nodata_share:.1%}"),
        ("building share of valid pixels", f"{s.building_share:.1%}"),
        *((f"tiles {k.removeprefix('tiles_')}" if k != "tiles" else "tiles", f"{v:,}")
          for k, v in counts.items() if k.startswith("tiles")),
    ]  # fmt: skip
    hists = histogram_svg(
        data.areas_m2, bins=area_bins(data.areas_m2), label="building area (m², log scale)"
    ) + histogram_svg(data.confidence, bins=confidence_bins(data.confidence_low), label="confidence")
    return (
        f'<section><h2>Counts and areas</h2><div class="grid">{headline}</div>{table(rows)}'
        f'<div class="grid">{hists}</div></section>'
    )


def _run(rec: dict[str, Any], model: dict[str, Any]) -> str:
    seconds = rec.get("seconds", {})
    timing = [(k, f"{v:.1f} s") for k, v in seconds.items()] + [("total", f"{sum(seconds.values()):.1f} s")]
    host = rec.get("host", {})
    where = [
        ("footprints", rec.get("footprints_version", "?")), ("started", rec.get("started", "")),
        ("finished", rec.get("finished", "")), ("device", ", ".join(rec.get("devices", [])) or "none"),
        ("host", host.get("name", "")), ("CPU", f"{host.get('cpu', '')} ({host.get('cpus', '?')} logical)"),
        ("GPUs", ", ".join(rec.get("gpus", [])) or "none"),
    ]  # fmt: skip
    card = [(k, _plain(v)) for k, v in model.items() if v not in (None, "", {}, [])]
    return (
        f'<section class="grid"><div><h2>Stage timings</h2>{table(timing)}</div>'
        f"<div><h2>Where it ran</h2>{table(where, numeric=False)}</div></section>"
        f"<section><h2>Model</h2>{table(card, numeric=False)}</section>"
    )


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value)
    return str(value)


def _outputs(names: Sequence[str]) -> str:
    if not names:
        return ""
    links = " &middot; ".join(f'<a href="{esc(n)}">{esc(n)}</a>' for n in names)
    return f"<section><h2>Outputs</h2><p>{links}</p></section>"
