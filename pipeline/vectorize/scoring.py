"""False-positive scoring: each candidate building judged from its own features.

The confidence filter judges a building by one number, its mean probability. The scorer
adds its shape and its border: a gradient-boosted classifier (LightGBM) over the features
below, fitted on training scenes only (``scripts/fit_scorer.py``), gives each candidate the
probability that it is a real building (that it matches a true one at IoU 0.5), and the
candidates under the scorer's threshold are dropped.

Features are computed on the raw pixel outline, before simplification and squaring, so
they do not depend on the post-processing; lengths and areas are measured on the outlines
in metres that the vectorizer converted them to (:class:`~pipeline.core.geo.MetricFrame`):

* ``log_area``: log10 of the area in m²;
* ``confidence``: mean building probability inside (the delivered ``confidence``);
* ``solidity``: area over the convex hull's area;
* ``rectangularity``: area over the minimum rotated rectangle's area;
* ``compactness``: 4πA/P², 1 for a disc;
* ``edge_in`` and ``edge_out``: mean probability in the band of ``EDGE_PX`` pixels just inside
  and just outside the outline, and ``contrast``, their difference (border strength: a real
  roof ends sharply, a false positive fades out).

A scorer is fitted for one checkpoint (its probabilities are its features): the file records
the checkpoint's SHA-256, and :meth:`Scorer.check_model` refuses any other model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from numpy.typing import NDArray
from rasterio.features import rasterize
from rasterio.windows import Window
from scipy import ndimage

from pipeline.core.errors import ConfigError

FEATURES = (
    "log_area", "confidence", "solidity", "rectangularity", "compactness", "edge_in", "edge_out", "contrast",
)  # fmt: skip
EDGE_PX = 2
FORMAT = "footprints-scorer/1"


def shape_features(metric: NDArray[np.object_]) -> NDArray[np.float64]:
    """``log_area``, ``solidity``, ``rectangularity``, ``compactness`` of metric polygons, (n, 4)."""
    if metric.size == 0:
        return np.empty((0, 4))
    area = shapely.area(metric)
    hull = shapely.area(shapely.convex_hull(metric))
    rect = shapely.area(shapely.oriented_envelope(metric))
    perimeter = shapely.length(metric)
    with np.errstate(divide="ignore", invalid="ignore"):
        cols = [
            np.log10(np.maximum(area, 1e-6)),
            np.where(hull > 0, area / hull, 0.0),
            np.where(rect > 0, area / rect, 0.0),
            np.where(perimeter > 0, 4 * math.pi * area / perimeter**2, 0.0),
        ]
    return np.stack(cols, axis=1).astype(np.float64)


def edge_features(polygons: NDArray[np.object_], probability_path: str) -> NDArray[np.float64]:
    """Mean probability (0-1) just inside and just outside each outline, (n, 2).

    ``polygons`` are in the raster's CRS. Each building is read through a window around it
    (bounded memory at any scene size); the bands are ``EDGE_PX`` pixels wide and the outside
    band stops at the raster's edge. The bands hold the pixels within city-block distance
    ``EDGE_PX`` of the outline (4-connected erosion and dilation). A band with no pixel (a
    sliver) gives the inside mean.
    """
    out = np.zeros((polygons.size, 2))
    pad = EDGE_PX + 1
    with rasterio.open(probability_path) as ds:
        scale = 255.0 if ds.dtypes[0] == "uint8" else 1.0
        inverse = ~ds.transform
        for i, poly in enumerate(polygons):
            x0, y0, x1, y1 = shapely.bounds(poly)
            c0, r0 = inverse @ (x0, y1)
            c1, r1 = inverse @ (x1, y0)
            col_lo, row_lo = max(0, math.floor(min(c0, c1)) - pad), max(0, math.floor(min(r0, r1)) - pad)
            col_hi = min(ds.width, math.ceil(max(c0, c1)) + pad)
            row_hi = min(ds.height, math.ceil(max(r0, r1)) + pad)
            window = Window(col_lo, row_lo, col_hi - col_lo, row_hi - row_lo)
            values = ds.read(1, window=window).astype(np.float64) / scale
            inside = rasterize(
                [(poly, 1)], out_shape=values.shape, transform=ds.window_transform(window), dtype="uint8"
            ).astype(bool)
            out[i] = _bands(values, inside)
    return out


def _bands(values: NDArray[np.float64], inside: NDArray[np.bool_]) -> tuple[float, float]:
    if not inside.any():
        return 0.0, 0.0
    inner = inside & ~ndimage.binary_erosion(inside, iterations=EDGE_PX, border_value=1)
    outer = ndimage.binary_dilation(inside, iterations=EDGE_PX) & ~inside
    body = float(values[inside].mean())
    edge_in = float(values[inner].mean()) if inner.any() else body
    edge_out = float(values[outer].mean()) if outer.any() else edge_in
    return edge_in, edge_out


def candidate_features(
    polygons: NDArray[np.object_],
    *,
    metric: NDArray[np.object_],
    confidence: NDArray[np.float64],
    probability_path: str,
) -> NDArray[np.float64]:
    """The :data:`FEATURES` table (n, 8) of raw outlines: ``polygons`` in the raster's CRS (their
    border bands) and the same outlines in metres, ``metric`` (their shape)."""
    shape = shape_features(metric)
    edges = edge_features(polygons, probability_path)
    cols = [shape[:, :1], confidence.reshape(-1, 1), shape[:, 1:], edges, edges[:, :1] - edges[:, 1:]]
    return np.concatenate(cols, axis=1)


@dataclass(frozen=True)
class Scorer:
    """A fitted classifier, its threshold and the checkpoint digest it was fitted for."""

    model_text: str
    threshold: float
    checkpoint_sha256: str
    features: tuple[str, ...] = FEATURES
    notes: str = ""

    @cached_property
    def booster(self) -> Any:
        """The LightGBM booster, parsed from ``model_text`` once per scorer."""
        try:
            import lightgbm as lgb
        except (ImportError, OSError) as exc:  # OSError: the wheel's libgomp.so.1 is missing
            raise ConfigError(
                f"vectorize.scorer: LightGBM cannot be loaded ({exc}); install it with `make venv` "
                "(and Debian's libgomp1), or set vectorize.scorer: none"
            ) from exc
        return lgb.Booster(model_str=self.model_text)

    def score(self, table: NDArray[np.float64]) -> NDArray[np.float64]:
        """The probability that each row is a real building."""
        if table.shape[0] == 0:
            return np.empty(0)
        return np.asarray(self.booster.predict(table, num_threads=1), dtype=np.float64)

    def keep(self, table: NDArray[np.float64]) -> NDArray[np.bool_]:
        return self.score(table) >= self.threshold

    def check_model(self, sha256: str, *, path: Path) -> None:
        """Refuse a checkpoint other than the one this scorer was fitted on."""
        if sha256 != self.checkpoint_sha256:
            raise ConfigError(
                f"{path}: scorer was fitted for checkpoint {self.checkpoint_sha256[:12]}, not the model "
                f"in use ({sha256[:12]}); refit it with scripts/fit_scorer.py or set vectorize.scorer: none"
            )

    def save(self, path: Path) -> None:
        body = {
            "format": FORMAT, "features": list(self.features), "threshold": self.threshold,
            "checkpoint_sha256": self.checkpoint_sha256, "notes": self.notes, "lightgbm": self.model_text,
        }  # fmt: skip
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(body, indent=1) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Scorer:
        try:
            body: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{path}: cannot read the scorer ({exc}); give a file written by fit_scorer.py"
            ) from exc
        if body.get("format") != FORMAT or tuple(body.get("features", ())) != FEATURES:
            raise ConfigError(
                f"{path}: not a {FORMAT} scorer with features {', '.join(FEATURES)}; refit it with "
                "scripts/fit_scorer.py"
            )
        return cls(
            model_text=str(body["lightgbm"]), threshold=float(body["threshold"]),
            checkpoint_sha256=str(body["checkpoint_sha256"]), notes=str(body.get("notes", "")),
        )  # fmt: skip


@dataclass(frozen=True)
class ScoreContext:
    """What the vectorizer needs to compute features (and filter, when ``scorer`` is set)."""

    probability_path: str
    scorer: Scorer | None = None


def resolve_scorer(setting: str, *, checkpoint: str | None, sha256: str | None) -> Scorer | None:
    """``vectorize.scorer``: ``none``; ``auto`` (``CKPT.scorer.json`` beside the checkpoint, when
    there is one); or a path. A scorer fitted for another checkpoint is refused."""
    if setting == "none":
        return None
    if setting == "auto":
        if checkpoint is None or not (path := Path(checkpoint).with_suffix(".scorer.json")).is_file():
            return None
    elif not (path := Path(setting)).is_file():
        raise ConfigError(
            f"{path}: vectorize.scorer file not found; give a scorer written by scripts/fit_scorer.py, "
            "'auto' or 'none'"
        )
    scorer = Scorer.load(path)
    if sha256 is None:
        raise ConfigError(f"{path}: a scorer needs a trained checkpoint; set vectorize.scorer: none")
    scorer.check_model(sha256, path=path)
    return scorer
