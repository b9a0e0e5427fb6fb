"""ONNX export: one graph from a uint8 image batch to the anomaly score and log-likelihood.

The graph holds the whole Detector: uint8 → float scaling, the encoder, the density stage's
log-likelihood (preprocessing, flow and the preprocessing's Jacobian) and the scorer's
:meth:`~flowkit.scorers.Scorer.export_score` (the kNN scorer as a matrix product and a top-k
over its stored normal latents). The batch dimension is dynamic. The threshold, input shape,
components and flowkit version go into the model's metadata, so that
:class:`flowkit.runtime.OnnxDetector` needs nothing but the ``.onnx`` file and onnxruntime.

Export checks itself: the graph is run with onnxruntime on random-noise probe images (batches
of 1 and 7, unlike the traced batch of 4) and must agree with the PyTorch scores within
``1e-3`` relative, or nothing is written. That check catches a broken graph (a batch size baked
in, a wrong op), whose errors are of order one; noise is far outside the training data, where
float32 rounding differences grow. On real images the two agree within ``1e-4`` relative for
every exportable built-in component (``tests/test_export.py``).

Example:
    >>> import flowkit
    >>> det = flowkit.Detector.load("model.flowkit")            # doctest: +SKIP
    >>> flowkit.export_onnx(det, "model.onnx")                  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import io
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flowkit import __version__, artifact
from flowkit.data.base import to_float
from flowkit.errors import ConfigError, NotExportableError
from flowkit.registry import format_spec
from flowkit.scorers import ScoreContext

__all__ = [
    "export_onnx",
    "ScoringGraph",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "MAP_OUTPUT",
    "output_names",
    "DEFAULT_OPSET",
]

INPUT_NAME = "images"
OUTPUT_NAMES = ("anomaly_score", "log_likelihood")
#: The third output of a model with anomaly maps: float32 ``(N, H, W)`` at the input size.
MAP_OUTPUT = "anomaly_map"
DEFAULT_OPSET = 18
RTOL = 1e-3  # on noise probes; see the module doc


class ScoringGraph(nn.Module):
    """A fitted Detector as one module: uint8 ``(N, C, H, W)`` → (anomaly score, log-lik).

    The log-likelihood is the density stage's own (:meth:`flowkit.stages.Density.for_export`:
    preprocessing, flow and the preprocessing's Jacobian), the one scoring uses.
    """

    def __init__(self, detector: Any) -> None:
        super().__init__()
        detector.check_fitted()
        self.encoder = detector.encoder_
        self.density = detector.density_.for_export(f"{detector.flow_spec_[0]} flow")
        self.scorer = detector.scorer_
        self.part_sizes = detector.density_.part_sizes
        self.spatial = detector.density_.spatial

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z, log_prob, *maps = self.density(self.encoder.encode(to_float(images)))
        ctx = ScoreContext(
            log_prob=log_prob,
            latents=z,
            images=images,
            encoder=self.encoder,
            part_sizes=self.part_sizes,
            maps=maps[0] if maps else None,
        )
        return (self.scorer.export_score(ctx).float(), log_prob, *maps)


def output_names(spatial: bool) -> list[str]:
    """The graph's outputs: :data:`OUTPUT_NAMES`, and ``anomaly_map`` for a spatial density."""
    return [*OUTPUT_NAMES, *((MAP_OUTPUT,) if spatial else ())]


def _describe(detector: Any) -> str:
    return " + ".join(
        format_spec(*spec)
        for spec in (detector.encoder_spec_, detector.flow_spec_, detector.scorer_spec_)
    )


def _metadata(detector: Any) -> dict[str, str]:
    c, h, w = detector.input_shape_
    return {
        "flowkit_version": __version__,
        "threshold": repr(float(detector.threshold_)),
        "input_shape": f"{c},{h},{w}",
        "value_range": ",".join(repr(float(v)) for v in detector.value_range),
        "encoder": format_spec(*detector.encoder_spec_),
        "preprocess": str(detector.preprocess),
        "flow": format_spec(*detector.flow_spec_),
        "scorer": format_spec(*detector.scorer_spec_),
        "outputs": "anomaly_score (higher = more anomalous), log_likelihood"
        + (", anomaly_map" if detector.density_.spatial else ""),
        **_map_metadata(detector.calibration_stage_),
    }


def _map_metadata(calibration: Any) -> dict[str, str]:
    """The pixel threshold and the heatmaps' display range, for a model with maps."""
    if calibration.pixel_threshold_ is None:
        return {}
    return {
        "pixel_threshold": repr(float(calibration.pixel_threshold_)),
        "map_range": ",".join(repr(float(v)) for v in calibration.map_range_),
    }


def _probe(input_shape: tuple[int, int, int], n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, *input_shape), dtype=np.uint8))


def _trace(graph: ScoringGraph, probe: torch.Tensor, opset: int, what: str) -> bytes:
    """The ONNX bytes of ``graph`` (torch.export based exporter, dynamic batch)."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; say so up front)
    except ImportError:
        raise ConfigError(
            "ONNX export needs the onnx extra: pip install 'flowkit[onnx]' "
            "(onnx, onnxscript, onnxruntime)"
        ) from None
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                graph,
                (probe,),
                input_names=[INPUT_NAME],
                output_names=output_names(graph.spatial),
                dynamic_shapes={"images": {0: batch}},
                opset_version=opset,
                dynamo=True,
                verbose=False,
                report=False,
            )
    except NotExportableError:
        raise
    except Exception as exc:  # the exporter's own errors are many and unstable
        raise NotExportableError(
            f"{what} cannot be exported to ONNX: torch.onnx failed ({_root_cause(exc)})"
        ) from None
    if program is None:
        raise NotExportableError(f"{what}: torch.onnx returned no program")
    buf = io.BytesIO()
    program.save(buf)  # type: ignore[union-attr]
    return buf.getvalue()


def _root_cause(exc: BaseException) -> str:
    """The innermost cause's type and first line, without the exporter's ANSI colours."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return f"{type(exc).__name__}: {(text.splitlines() or [''])[0][:200]}"


@contextmanager
def _quiet() -> Iterator[None]:
    """No warnings and no graph dumps from torch.export's loggers while exporting."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.fx", "torch.export", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _with_metadata(model_bytes: bytes, metadata: dict[str, str]) -> bytes:
    import onnx

    model = onnx.load_from_string(model_bytes)
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "flowkit", __version__
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _verify(model_bytes: bytes, detector: Any, what: str, rtol: float) -> float:
    """Run the graph with onnxruntime on probe batches; the largest relative difference."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(
            "checking the export needs onnxruntime: pip install 'flowkit[onnx]' "
            "(or skip the check with check=False / --no-check)"
        ) from None
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    worst = 0.0
    for n, seed in ((1, 1), (7, 2)):  # a batch size unlike the traced one, and one image
        probe = _probe(detector.input_shape_, n, seed)
        spatial = detector.density_.spatial
        ref = detector.score(probe, maps=spatial)
        try:
            got = session.run(None, {INPUT_NAME: probe.numpy()})
        except Exception as exc:  # onnxruntime's own exception types
            raise NotExportableError(
                f"{what}: the exported graph fails on a batch of {n} ({_root_cause(exc)}), "
                "so it was not written"
            ) from None
        expect = [ref["anomaly_score"], ref["log_prob"], *([ref["anomaly_map"]] if spatial else [])]
        for name, value, expected in zip(output_names(spatial), got, expect, strict=True):
            scale = np.maximum(np.abs(expected), 1.0)
            err = float(np.max(np.abs(value.astype(np.float64) - expected) / scale))
            worst = max(worst, err)
            if not err <= rtol:
                raise NotExportableError(
                    f"{what}: the exported graph's {name} differs from PyTorch's by {err:.2e} "
                    f"(relative; tolerance {rtol:g}), so it was not written"
                )
    return worst


def export_onnx(
    detector: Any,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    rtol: float = RTOL,
) -> Path:
    """Write ``detector`` as one ONNX graph to ``path`` (atomically) and return the path.

    Inputs: ``images``, uint8 ``(N, C, H, W)`` with dynamic ``N``. Outputs:
    ``anomaly_score`` and ``log_likelihood``, float32 ``(N,)``. With ``check`` (the default)
    the graph is run with onnxruntime on noise probes and must match the PyTorch scores within
    ``rtol`` (relative, on ``max(|score|, 1)``); otherwise nothing is written.

    Raises :class:`NotExportableError` naming the component that has no ONNX form.
    """
    detector.check_fitted()
    what = _describe(detector)
    # a CPU twin: the same fitted stages, scored on the CPU (the graph is traced there)
    cpu = copy.copy(detector).set_params(device="cpu")
    graph = ScoringGraph(cpu).to("cpu").eval()
    probe = _probe(cpu.input_shape_, 4, 0)
    with torch.no_grad():
        graph(probe)  # a scorer without an ONNX form says so here, before tracing
    model_bytes = _with_metadata(_trace(graph, probe, opset, what), _metadata(cpu))
    if check:
        _verify(model_bytes, cpu, what, rtol)
    return artifact.atomic_write_bytes(path, model_bytes)
