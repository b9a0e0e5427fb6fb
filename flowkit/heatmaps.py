"""Anomaly maps as pictures, without torch (the onnxruntime path uses it too).

- :func:`resize_map`: a map at the model's square input resolution, resized (bilinear) to an
  image's own size: the map of a 400 × 220 photograph is 400 × 220.
- :func:`heatmap_rgb`: a map as an RGB picture on one scale for every image, so that a
  normal image looks cold and an anomaly hot whatever else is in the folder: the median
  pixel score of the normal validation images (``low``) is black, the model's pixel
  threshold (``high``) the middle of the colour scale, twice as far the top.
- :func:`write_heatmap`: that picture as a PNG file (atomically).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["resize_map", "maps_at", "masks_of", "heatmap_rgb", "write_heatmap", "COLOURS"]

#: Anchor colours of the scale, from cold to hot (black, purple, red, orange, pale yellow).
COLOURS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64
)


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``anomaly_map`` ``(H, W)`` resized (bilinear) to ``size`` = ``(height, width)``."""
    from PIL import Image

    m = np.asarray(anomaly_map, dtype=np.float32)
    h, w = (int(s) for s in size)
    if m.shape == (h, w):
        return m.copy()
    return np.asarray(Image.fromarray(m, mode="F").resize((w, h), Image.BILINEAR))


def maps_at(maps: np.ndarray, sizes: list[tuple[int, int]] | None) -> Any:
    """``maps`` ``(N, S, S)`` as they are, or with ``sizes`` a list of them, each resized to
    its image's ``(height, width)`` (what ``anomaly_map(X, sizes)`` returns)."""
    if sizes is None:
        return maps
    return [resize_map(m, hw) for m, hw in zip(maps, sizes, strict=True)]


def masks_of(maps: Any, threshold: float) -> Any:
    """Defect masks: True above ``threshold``, for an array of maps or a list of them."""
    return [m > threshold for m in maps] if isinstance(maps, list) else maps > threshold


def heatmap_rgb(anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
    """``(H, W, 3)`` uint8: ``low`` black, ``high`` (the pixel threshold) mid-scale,
    ``2 · high - low`` and above the hottest colour."""
    span = max(float(high) - float(low), 1e-12)
    t = np.clip((np.asarray(anomaly_map, dtype=np.float64) - low) / (2.0 * span), 0.0, 1.0)
    pos = t * (len(COLOURS) - 1)
    i = np.minimum(pos.astype(int), len(COLOURS) - 2)
    frac = (pos - i)[..., None]
    rgb = COLOURS[i] * (1.0 - frac) + COLOURS[i + 1] * frac
    return np.round(rgb).astype(np.uint8)


def write_heatmap(path: str | Path, anomaly_map: np.ndarray, low: float, high: float) -> Path:
    """Write :func:`heatmap_rgb` of ``anomaly_map`` to ``path`` as a PNG (atomically)."""
    import io

    from PIL import Image

    from flowkit.artifact import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(heatmap_rgb(anomaly_map, low, high), mode="RGB").save(buf, format="PNG")
    return atomic_write_bytes(Path(path), buf.getvalue())
