"""flowkit: unsupervised image anomaly detection by likelihood on learned representations.

An encoder maps images to latent vectors; a normalizing flow learns their density on normal
images; a low likelihood flags an anomaly. The registries live in :mod:`flowkit.registry`
(``flowkit.registry.encoders.register("name")``); ``flowkit.encoders``, ``flowkit.flows`` and
``flowkit.scorers`` are the modules holding the built-in components.

Example:
    >>> import flowkit
    >>> flowkit.list_flows("r*")
    ['realnvp']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowkit.data.base import ImageSet
    from flowkit.encoders.base import Encoder
    from flowkit.flows.base import Flow
    from flowkit.scorers import Scorer

__version__ = "0.2.0"

# Torch-free at import: the registries, errors and plugin system load here; the torch-backed
# classes load on first use (PEP 562), so `flowkit score --backend onnx` and
# `flowkit.OnnxDetector` run where torch is not installed.
from flowkit.errors import (  # noqa: E402
    ConfigError,
    DataError,
    DatasetNotFoundError,
    FlowkitError,
    FlowkitPluginWarning,
    ModelFileError,
    NotExportableError,
    TrainingDivergedError,
    UnknownComponentError,
)
from flowkit.hookspecs import hookimpl  # noqa: E402
from flowkit.plugins import load_plugins  # noqa: E402  (installs the registries' loader)
from flowkit.registry import Registry, format_spec, parse_spec  # noqa: E402
from flowkit.registry import datasets as _datasets  # noqa: E402
from flowkit.registry import encoders as _encoders  # noqa: E402
from flowkit.registry import flows as _flows  # noqa: E402
from flowkit.registry import scorers as _scorers  # noqa: E402

_LAZY = {
    "ImageSet": "flowkit.data.base",
    "Detector": "flowkit.detector",
    "Encoder": "flowkit.encoders.base",
    "Flow": "flowkit.flows.base",
    "TransformFlow": "flowkit.flows.base",
    "Scorer": "flowkit.scorers",
    "ScoreContext": "flowkit.scorers",
    "export_onnx": "flowkit.export",
    "OnnxDetector": "flowkit.runtime",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flowkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "load_plugins",
    "Detector",
    "OnnxDetector",
    "export_onnx",
    "Encoder",
    "Flow",
    "TransformFlow",
    "ImageSet",
    "Scorer",
    "ScoreContext",
    "Registry",
    "hookimpl",
    "create_encoder",
    "create_flow",
    "create_scorer",
    "load_dataset",
    "list_encoders",
    "list_flows",
    "list_datasets",
    "list_scorers",
    "parse_spec",
    "format_spec",
    "FlowkitError",
    "ConfigError",
    "DataError",
    "DatasetNotFoundError",
    "ModelFileError",
    "NotExportableError",
    "TrainingDivergedError",
    "UnknownComponentError",
    "FlowkitPluginWarning",
]


def _create(registry: Registry, spec: str, kwargs: dict[str, Any]) -> Any:
    name, options = parse_spec(spec)
    return registry.create(name, **{**options, **kwargs})


def create_encoder(spec: str, **kwargs: Any) -> Encoder:
    """Build an encoder, e.g. ``create_encoder("dcgan_ae:latent_dim=32", in_channels=1,
    image_size=32)``."""
    return _create(_encoders, spec, kwargs)


def create_flow(spec: str, **kwargs: Any) -> Flow:
    """Build a flow: ``create_flow("realnvp:layers=4", features=32)``."""
    return _create(_flows, spec, kwargs)


def create_scorer(spec: str, **kwargs: Any) -> Scorer:
    """Build a scorer: ``create_scorer("nll")``, or a combination as the bench and the
    Detector read it: ``create_scorer("nll+knn:k=2,metric=cosine")`` (each part's options
    are its own, so ``kwargs`` apply to a single scorer only)."""
    from flowkit.spec import Spec

    parsed = Spec.parse(spec)
    if parsed.is_combination and kwargs:
        raise ConfigError(
            f"keyword options go to a single scorer, not to the combination {spec!r}: write "
            "each part's options in the spec, e.g. 'nll+knn:k=2,metric=cosine'"
        )
    name, options = parsed.factory_args()
    return _scorers.create(name, **{**options, **kwargs})


def load_dataset(spec: str, **kwargs: Any) -> ImageSet:
    """Load a dataset: ``load_dataset("mnist", root="~/data", split="train")``."""
    return _create(_datasets, spec, kwargs)


def list_encoders(pattern: str = "*") -> list[str]:
    return _encoders.list(pattern)


def list_flows(pattern: str = "*") -> list[str]:
    return _flows.list(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    return _datasets.list(pattern)


def list_scorers(pattern: str = "*") -> list[str]:
    return _scorers.list(pattern)
