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
from flowkit.images import as_uint8_array, check_input_shape
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
        try:
            self.threshold_ = float(meta["threshold"])
            shape = tuple(int(v) for v in meta["input_shape"].split(","))
            lo, hi = (float(v) for v in meta["value_range"].split(","))
        except ValueError:
            raise ModelFileError(f"{self.path}: malformed flowkit metadata {meta}") from None
        if len(shape) != 3:
            raise ModelFileError(f"{self.path}: input_shape metadata {shape} is not (C, H, W)")
        self.input_shape_: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.value_range = (lo, hi)
        self.offset_ = -self.threshold_
        self.scorer_spec_ = parse_spec(meta["scorer"])
        self.metadata = meta

    def __repr__(self) -> str:
        return f"OnnxDetector({str(self.path)!r}, scorer={self.metadata['scorer']!r})"

    def _check_images(self, X: Any) -> np.ndarray:
        images = as_uint8_array(X, value_range=self.value_range)
        check_input_shape(images.shape[1:], self.input_shape_)
        return images

    def score(self, X: Any, batch_size: int = 256) -> dict[str, np.ndarray]:
        """``log_prob`` and ``anomaly_score`` (float64 arrays), as :meth:`Detector.score`."""
        images = self._check_images(X)
        scores, log_probs = [], []
        for start in range(0, len(images), batch_size):
            s, lp = self.session.run(None, {INPUT_NAME: images[start : start + batch_size]})
            scores.append(s)
            log_probs.append(lp)
        return {
            "log_prob": np.concatenate(log_probs).astype(np.float64),
            "anomaly_score": np.concatenate(scores).astype(np.float64),
        }

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
