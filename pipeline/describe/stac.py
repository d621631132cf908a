"""STAC for the outputs (an adapter over ``run.json``, with pystac).

Each scene's OUTDIR gets ``item.json``: a STAC Item whose assets are the outputs, with
the projection (v2.0.0), raster (v1.1.0) and file (v2.1.0, SHA-256 multihash and size)
extensions. A bucket gets ``collection.json``, a STAC Collection linking every scene's
item. Hrefs are relative, so a folder or prefix can be moved or served as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pystac
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from rasterio.crs import CRS
from rasterio.warp import transform as warp_points

from pipeline.io.write import PROBABILITY_SCALE
from pipeline.tiling.stitch import MASK_NODATA

#: Asset key, media type, roles and title of each output.
ASSETS: dict[str, tuple[str, str, list[str], str]] = {
    "probability.tif": ("probability", pystac.MediaType.COG, ["data"], "Building probability (COG)"),
    "mask.tif": ("mask", pystac.MediaType.COG, ["data"], "Building mask (COG)"),
    "buildings.geojson": ("geojson", pystac.MediaType.GEOJSON, ["data"], "Building footprints, EPSG:4326"),
    "buildings.gpkg": ("gpkg", pystac.MediaType.GEOPACKAGE, ["data"], "Building footprints, scene CRS"),
    "buildings.parquet": (
        "parquet",
        "application/vnd.apache.parquet",
        ["data"],
        "Building footprints, GeoParquet 1.1, scene CRS",
    ),
    "quicklook.png": ("quicklook", pystac.MediaType.PNG, ["overview", "visual"], "Imagery and footprints"),
    "report.html": ("report", pystac.MediaType.HTML, ["metadata"], "Report"),
    "run.json": ("run", pystac.MediaType.JSON, ["metadata"], "Run record"),
}


def multihash(sha256_hex: str) -> str:
    """The file extension's ``file:checksum``: a SHA-256 multihash (0x12, 32 bytes), in hex."""
    return "1220" + sha256_hex


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def footprint(crs: CRS, transform: Sequence[float], height: int, width: int) -> dict[str, Any]:
    """The raster's outline in EPSG:4326 (its four corners: exact for rotated grids too)."""
    a, b, c, d, e, f = transform[:6]
    corners = [(0, 0), (width, 0), (width, height), (0, height)]
    xs = [a * col + b * row + c for col, row in corners]
    ys = [d * col + e * row + f for col, row in corners]
    lon, lat = warp_points(crs, "EPSG:4326", xs, ys)
    ring = [[round(x, 7), round(y, 7)] for x, y in zip(lon, lat, strict=True)]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def bbox_of(geometry: dict[str, Any]) -> list[float]:
    xs = [p[0] for p in geometry["coordinates"][0]]
    ys = [p[1] for p in geometry["coordinates"][0]]
    return [min(xs), min(ys), max(xs), max(ys)]


def scene_item(
    record: dict[str, Any], *, checksums: dict[str, dict[str, Any]], outputs: Sequence[str]
) -> pystac.Item:
    """The STAC Item of one published scene, from its run record and the outputs' checksums."""
    inp, grid = record["input"], record["grid"]
    crs = CRS.from_user_input(inp["crs"])
    transform = [float(v) for v in inp["transform"]]
    geometry = footprint(crs, transform, inp["height"], inp["width"])
    started, finished = parse_time(record.get("started")), parse_time(record.get("finished"))
    item = pystac.Item(
        id=str(record["scene"]), geometry=geometry, bbox=bbox_of(geometry),
        datetime=parse_time(inp.get("modified")) or finished, properties={},
    )  # fmt: skip
    common = item.common_metadata
    common.created, common.updated, common.gsd = started, finished, grid["input_gsd_m"]
    common.description = (
        f"Building footprints of {inp['url']} by footprints {record.get('footprints_version')}"
    )
    item.properties["footprints:buildings"] = record["counts"]["buildings"]
    item.properties["footprints:model"] = record["model"]["id"]
    epsg = crs.to_epsg()
    ProjectionExtension.add_to(item)
    ProjectionExtension.ext(item).apply(
        code=f"EPSG:{epsg}" if epsg else None, wkt2=None if epsg else crs.to_wkt(version="WKT2_2019"),
        shape=[inp["height"], inp["width"]], transform=transform[:6],
    )  # fmt: skip
    RasterExtension.add_to(item)
    FileExtension.add_to(item)
    for name in outputs:
        item.add_asset(ASSETS[name][0], _asset(name, checksums.get(name), record))
    return item


def _asset(name: str, checksum: dict[str, Any] | None, record: dict[str, Any]) -> pystac.Asset:
    _, media, roles, title = ASSETS[name]
    asset = pystac.Asset(href=f"./{name}", media_type=media, roles=roles, title=title)
    if checksum is not None:
        FileExtension.ext(asset).apply(checksum=multihash(checksum["sha256"]), size=int(checksum["size"]))
    gsd = float(record["grid"]["input_gsd_m"])
    if name == "probability.tif":
        classes = record.get("probability_bands") or ["building"]
        RasterExtension.ext(asset).apply([_band(c, gsd) for c in classes])
    elif name == "mask.tif":
        band = RasterBand.create(nodata=MASK_NODATA, data_type=DataType.UINT8, spatial_resolution=gsd,
                                 sampling=None)  # fmt: skip
        band.properties.update(name="mask", description="1 building, 0 background, 255 nodata")
        RasterExtension.ext(asset).apply([band])
    return asset


def _band(name: str, gsd: float) -> RasterBand:
    band = RasterBand.create(
        data_type=DataType.UINT8, scale=PROBABILITY_SCALE, offset=0.0, spatial_resolution=gsd
    )
    band.properties.update(name=name, description=f"{name} probability: value x 1/255")
    return band


def item_json(item: pystac.Item) -> dict[str, Any]:
    """The item as JSON, links included (none: hrefs are relative to its folder)."""
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def bucket_collection(
    *, collection_id: str, description: str, items: Sequence[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """A STAC Collection of scene items (``(href relative to the collection, item JSON)``)."""
    boxes = [it["bbox"] for _, it in items if it.get("bbox")]
    corners = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    bbox = (
        [*corners[:, :2].min(axis=0), *corners[:, 2:].max(axis=0)] if boxes else [-180.0, -90.0, 180.0, 90.0]
    )
    bbox = [float(v) for v in bbox]
    times = sorted(t for _, it in items if (t := parse_time(it["properties"].get("datetime"))) is not None)
    interval = [[times[0], times[-1]]] if times else [[None, None]]
    collection = pystac.Collection(
        id=collection_id, description=description, license="other",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent(interval)),  # type: ignore[arg-type]
        title="Building footprints",
    )  # fmt: skip
    for href, it in items:
        collection.add_link(pystac.Link(rel="item", target=href, media_type=pystac.MediaType.JSON,
                                        title=str(it.get("id"))))  # fmt: skip
    return collection.to_dict(include_self_link=False, transform_hrefs=False)
