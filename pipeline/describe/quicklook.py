"""Pictures of a scene: the imagery with the footprints drawn over it, coloured by confidence.

:func:`overview_view` fits the whole scene into at most ``max_side`` pixels; the imagery
is a decimated read (:func:`pipeline.io.read.read_rgb`, served by GDAL from the overviews), so
memory is that of the picture whatever the scene's size. :func:`crop_view` is a window at
full resolution where the buildings are densest. Outlines are drawn with PIL's
``ImageDraw`` in the picture's pixels; nodata is dark grey.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from rasterio.windows import Window

from pipeline.io.read import RasterInfo, read_rgb
from pipeline.vectorize.buildings import Buildings

#: Confidence colour ramp, low to high: red, amber, yellow, green (RGB).
RAMP = ((215, 25, 28), (253, 174, 97), (255, 255, 100), (26, 230, 80))
NODATA_RGB = (48, 48, 48)


@dataclass(frozen=True)
class View:
    """A window of the scene (in scene pixels) drawn into ``height`` x ``width`` picture pixels."""

    col_off: int
    row_off: int
    cols: int
    rows: int
    height: int
    width: int

    @property
    def window(self) -> Window:
        return Window(self.col_off, self.row_off, self.cols, self.rows)

    def to_picture(self, transform: Affine) -> Affine:
        """Scene CRS -> picture pixel coordinates."""
        window = transform @ Affine.translation(self.col_off, self.row_off)
        inverse: Affine = ~(window @ Affine.scale(self.cols / self.width, self.rows / self.height))
        return inverse


def overview_view(height: int, width: int, *, max_side: int = 2048) -> View:
    """The whole scene, its long side at most ``max_side`` pixels (never enlarged)."""
    scale = min(1.0, max_side / max(height, width))
    return View(0, 0, width, height, max(1, round(height * scale)), max(1, round(width * scale)))


def crop_view(height: int, width: int, *, transform: Affine, buildings: Buildings, side: int = 768) -> View:
    """A full-resolution window of at most ``side`` pixels centred where most buildings are."""
    rows, cols = min(side, height), min(side, width)
    if len(buildings):
        centres = shapely.centroid(buildings.geometry)
        x, y = shapely.get_x(centres), shapely.get_y(centres)
        c, r = ~transform @ (x, y)
        bins = (max(1, math.ceil(height / (rows / 2))), max(1, math.ceil(width / (cols / 2))))
        counts, r_edges, c_edges = np.histogram2d(r, c, bins=bins, range=((0, height), (0, width)))
        i, j = np.unravel_index(int(np.argmax(counts)), counts.shape)
        centre_r, centre_c = (r_edges[i] + r_edges[i + 1]) / 2, (c_edges[j] + c_edges[j + 1]) / 2
    else:
        centre_r, centre_c = height / 2, width / 2
    row_off = int(np.clip(round(centre_r - rows / 2), 0, height - rows))
    col_off = int(np.clip(round(centre_c - cols / 2), 0, width - cols))
    return View(col_off, row_off, cols, rows, rows, cols)


def ramp_colour(value: float, *, low: float, high: float = 1.0) -> tuple[int, int, int]:
    """The ramp's colour of ``value`` between ``low`` (red) and ``high`` (green)."""
    t = float(np.clip((value - low) / max(high - low, 1e-9), 0.0, 1.0)) * (len(RAMP) - 1)
    i = min(int(t), len(RAMP) - 2)
    a, b, f = RAMP[i], RAMP[i + 1], t - i
    return (round(a[0] + (b[0] - a[0]) * f), round(a[1] + (b[1] - a[1]) * f), round(a[2] + (b[2] - a[2]) * f))


def draw_outlines(
    image: Image.Image, buildings: Buildings, *, to_picture: Affine, low: float, line: int = 2
) -> None:
    """Draw every building's rings onto ``image`` in its confidence colour (NaN: white)."""
    draw = ImageDraw.Draw(image)
    a, b, c, d, e, f = to_picture[:6]
    matrix, offset = np.array([[a, b], [d, e]]), np.array([c, f])
    shapes = shapely.transform(buildings.geometry, lambda xy: xy @ matrix.T + offset)
    box = shapely.box(-line, -line, image.width + line, image.height + line)
    seen = shapely.intersects(shapes, box) if len(buildings) else np.zeros(0, bool)
    for shape, conf in zip(shapes[seen], buildings.confidence[seen], strict=True):
        colour = (255, 255, 255) if math.isnan(conf) else ramp_colour(conf, low=low)
        for ring in _rings(shape):
            draw.line([tuple(p) for p in np.asarray(ring.coords)], fill=colour, width=line, joint="curve")


def _rings(shape: shapely.Geometry) -> list[shapely.LinearRing]:
    polygons = getattr(shape, "geoms", [shape])
    return [ring for p in polygons for ring in (p.exterior, *p.interiors)]


def render(
    info: RasterInfo, view: View, buildings: Buildings, *, low: float, line: int = 2
) -> NDArray[np.uint8]:
    """The view's imagery with the footprints drawn over it: ``(height, width, 3)`` uint8."""
    pixels, valid = read_rgb(info, window=view.window, out_shape=(view.height, view.width))
    rgb = np.moveaxis(pixels, 0, -1).copy()
    rgb[~valid] = NODATA_RGB
    image = Image.fromarray(rgb)
    draw_outlines(image, buildings, to_picture=view.to_picture(info.grid.transform), low=low, line=line)
    return np.asarray(image)


def png_bytes(rgb: NDArray[np.uint8]) -> bytes:
    """``rgb`` as a PNG (deterministic: no time or text chunks)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def jpeg_bytes(rgb: NDArray[np.uint8], quality: int = 88) -> bytes:
    """``rgb`` as a JPEG: how report.html embeds its pictures (a tenth of the PNG's size)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
