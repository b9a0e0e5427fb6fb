"""Score with an exported model and onnxruntime alone: no torch is imported on this path.

:class:`OnnxDetector` reads a ``.onnx`` file written by ``flowkit export`` (or
:func:`flowkit.export.export_onnx`), takes the threshold and input contract from its metadata
and offers the scoring half of :class:`flowkit.Detector`'s interface. A runtime environment
needs onnxruntime, numpy and Pillow (and typer + rich for the ``flowkit score`` command); see
the README's "Deploy" section.

Example:
    >>> from flowkit.runtime import OnnxDetector
    >>> det = OnnxDetector("model.onnx")                        # doctest: +SKIP
    >>> det.predict(images)                 # 1 normal, -1 anomaly  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flowkit.errors import ConfigError, ModelFileError
from flowkit.images import as_uint8_array, check_input_shape, check_unambiguous
from flowkit.registry import parse_spec

__all__ = ["OnnxDetector"]

INPUT_NAME = "images"  # flowkit.export.INPUT_NAME (not imported: that module needs torch)
REQUIRED = ("flowkit_version", "threshold", "input_shape", "value_range", "scorer")


def _providers(device: str) -> list[str]:
    if device in ("auto", "cpu"):
        import onnxruntime as ort

        available = ort.get_available_providers()
        if device == "auto" and "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ConfigError(f"unknown device {device!r} for onnxruntime; use auto, cpu or cuda")


class OnnxDetector:
    """An exported flowkit model run by onnxruntime.

    Args:
        path: the ``.onnx`` file.
        device: ``"auto"`` (CUDA when onnxruntime has it), ``"cpu"`` or ``"cuda"``.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).

    Attributes (from the model's metadata): ``threshold_`` (on the anomaly score),
    ``offset_ = -threshold_``, ``input_shape_`` ``(C, H, W)``, ``value_range``,
    ``scorer_spec_``, ``metadata`` (all of it, as strings).
    """

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError(
                "the onnx backend needs onnxruntime: pip install onnxruntime"
            ) from None
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such model file")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=_providers(device)
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            with open(self.path, "rb") as fh:
                if fh.read(len(b"FLOWKIT-MODEL")) == b"FLOWKIT-MODEL":
                    raise ModelFileError(
                        f"{self.path} is a flowkit model file (Detector.save, flowkit train), "
                        "not an ONNX graph: score it with --backend torch, or make an .onnx "
                        "file with flowkit export"
                    ) from None
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            raise ModelFileError(
                f"{self.path} is not a readable ONNX model ({type(exc).__name__}: {first})"
            ) from None
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        missing = [k for k in REQUIRED if k not in meta]
        if missing:
            raise ModelFileError(
                f"{self.path} is an ONNX model but not one written by `flowkit export` "
                f"(metadata lacks {', '.join(missing)})"
            )
        threshold, shape, (lo, hi) = _check_metadata(self.path, meta, self.session)
        self.threshold_ = threshold
        self.input_shape_: tuple[int, int, int] = shape
        self.value_range = (lo, hi)
        self.offset_ = -self.threshold_
        self.scorer_spec_ = parse_spec(meta["scorer"])
        self.metadata = meta
        self.pixel_threshold_, self.map_range_ = _map_metadata(self.path, meta, self.session)

    def __repr__(self) -> str:
        return f"OnnxDetector({str(self.path)!r}, scorer={self.metadata['scorer']!r})"

    def _check_images(self, X: Any) -> np.ndarray:
        check_unambiguous(X, self.input_shape_)
        images = as_uint8_array(X, value_range=self.value_range)
        check_input_shape(images.shape[1:], self.input_shape_)
        return images

    def score(self, X: Any, maps: bool = False, batch_size: int = 256) -> dict[str, np.ndarray]:
        """``log_prob`` and ``anomaly_score`` (float64 arrays), as :meth:`Detector.score`;
        with ``maps``, also ``anomaly_map`` ``(N, H, W)`` (models with anomaly maps)."""
        images = self._check_images(X)
        if maps:
            self._check_maps()
        scores, log_probs, heat = [], [], []
        for start in range(0, len(images), batch_size):
            s, lp, *m = self.session.run(None, {INPUT_NAME: images[start : start + batch_size]})
            scores.append(s)
            log_probs.append(lp)
            heat += m
        out = {
            "log_prob": np.concatenate(log_probs).astype(np.float64),
            "anomaly_score": np.concatenate(scores).astype(np.float64),
        }
        if maps:
            _, h, w = self.input_shape_
            out["anomaly_map"] = np.concatenate(heat) if heat else np.empty((0, h, w), np.float32)
        return out

    def _check_maps(self) -> None:
        if self.pixel_threshold_ is None:
            raise ConfigError(
                f"{self.path} gives no anomaly maps: export a model with a spatial flow "
                "(flowkit train --preset defects)"
            )

    def anomaly_map(self, X: Any, sizes: list[tuple[int, int]] | None = None) -> Any:
        """Anomaly maps as :meth:`flowkit.Detector.anomaly_map` gives them."""
        from flowkit.heatmaps import maps_at

        return maps_at(self.score(X, maps=True)["anomaly_map"], sizes)

    def predict_mask(self, X: Any, sizes: list[tuple[int, int]] | None = None) -> Any:
        """Defect masks as :meth:`flowkit.Detector.predict_mask` gives them."""
        from flowkit.heatmaps import masks_of

        return masks_of(self.anomaly_map(X, sizes), self.pixel_threshold_)

    def log_likelihood(self, X: Any) -> np.ndarray:
        return self.score(X)["log_prob"]

    def anomaly_score(self, X: Any) -> np.ndarray:
        return self.score(X)["anomaly_score"]

    def score_samples(self, X: Any) -> np.ndarray:
        """``-anomaly_score``: higher = more normal (scikit-learn's convention)."""
        return -self.anomaly_score(X)

    def decision_function(self, X: Any) -> np.ndarray:
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """1 for normal, -1 for anomalies (score above the stored threshold)."""
        return np.where(self.anomaly_score(X) > self.threshold_, -1, 1)


def _map_metadata(
    path: Path, meta: dict[str, str], session: Any
) -> tuple[float | None, tuple[float, float] | None]:
    """The pixel threshold and display range of a model with anomaly maps (a third output),
    checked; ``(None, None)`` for a model without them."""
    import math

    outputs = [o.name for o in session.get_outputs()]
    if "pixel_threshold" not in meta and len(outputs) == 2:
        return None, None
    try:
        threshold = float(meta["pixel_threshold"])
        low, high = (float(v) for v in meta["map_range"].split(","))
    except (KeyError, ValueError):
        raise ModelFileError(
            f"{path}: invalid flowkit metadata: a model with anomaly maps needs a numeric "
            "pixel_threshold and map_range"
        ) from None
    if len(outputs) != 3 or not all(math.isfinite(v) for v in (threshold, low, high)):
        raise ModelFileError(
            f"{path}: invalid flowkit metadata: the pixel threshold and map range must be "
            "finite, and the graph must output the anomaly map"
        )
    return threshold, (low, high)


def _check_metadata(
    path: Path, meta: dict[str, str], session: Any
) -> tuple[float, tuple[int, int, int], tuple[float, float]]:
    """The threshold, input shape and value range of flowkit's metadata, each checked by
    type and range, and the shape against the graph's own input: a NaN threshold would label
    every image normal, a wrong shape fail deep inside onnxruntime."""
    import math

    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{path}: invalid flowkit metadata: {what}")

    try:
        threshold = float(meta["threshold"])
    except ValueError:
        raise bad(f"threshold {meta['threshold']!r} is not a number") from None
    if not math.isfinite(threshold):
        raise bad(f"threshold must be finite, got {meta['threshold']!r}")
    try:
        shape = tuple(int(v) for v in meta["input_shape"].split(","))
        lo, hi = (float(v) for v in meta["value_range"].split(","))
    except ValueError:
        raise bad(
            f"input_shape {meta['input_shape']!r} or value_range {meta['value_range']!r} "
            "is malformed"
        ) from None
    if len(shape) != 3 or min(shape) < 1:
        raise bad(f"input_shape must be three positive integers C,H,W, got {shape}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise bad(f"value_range must be two finite numbers lo < hi, got {(lo, hi)}")
    if not isinstance(meta.get("flowkit_version", ""), str):
        raise bad("flowkit_version must be text")
    inputs = session.get_inputs()
    graph = tuple(inputs[0].shape[1:]) if inputs else ()
    if (
        len(inputs) != 1
        or len(graph) != 3
        or any(isinstance(g, int) and g != s for g, s in zip(graph, shape, strict=True))
    ):
        raise bad(f"input_shape {shape} does not match the graph's input {tuple(graph)}")
    return threshold, shape, (lo, hi)  # type: ignore[return-value]
