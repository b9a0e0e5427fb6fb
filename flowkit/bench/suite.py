"""Benchmark suites (TOML files) and their expansion into a grid of cells."""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import types
import typing
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from flowkit.errors import ConfigError
from flowkit.registry import canonical_spec, encoders, flows, format_spec, parse_spec, scorers

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "Suite",
    "Cell",
    "load_suite",
    "suite_dirs",
    "list_suites",
    "ENCODER_FIELDS",
    "FLOW_FIELDS",
    "SCORER_FIELDS",
]

PROTOCOLS = ("loo", "ood", "given")
PROTOCOL_HELP = (
    "loo (leave one class out), ood (train on dataset, test against out_datasets) or given "
    "(the dataset's own train/test parts with labelled anomalies, e.g. MVTec AD)"
)


def suite_dirs() -> list[Path]:
    """Where named suites are looked up: ``$FLOWKIT_SUITES``, then the source checkout's
    ``benchmarks/suites``."""
    import os

    dirs = [Path(p) for p in os.environ.get("FLOWKIT_SUITES", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[2] / "benchmarks" / "suites")
    return dirs


def list_suites() -> list[str]:
    return sorted({p.stem for d in suite_dirs() if d.is_dir() for p in d.glob("*.toml")})


@dataclass
class Suite:
    """A benchmark grid: dataset × target × seed × encoder × preprocess × flow × scorer.

    Targets depend on the protocol: held-out classes (``loo``), out-of-distribution datasets
    (``ood``: the model trains on every class of ``dataset``), or the dataset's categories
    (``given``: each category's own train/test parts, e.g. MVTec AD; ``categories = "all"``
    takes every category found under the data root).
    """

    name: str
    dataset: str = "digits"
    protocol: str = "loo"
    classes: list[int] | None = None  # None: every class
    out_datasets: list[str] = field(default_factory=list)
    categories: list[str] | None = None  # given: None = the dataset as it is; ["all"] = every one
    encoders: list[str] = field(default_factory=lambda: ["dcgan_ae"])
    flows: list[str] = field(default_factory=lambda: ["realnvp"])
    scorers: list[str] = field(default_factory=lambda: ["nll"])
    preprocessors: list[str] = field(default_factory=lambda: ["standardize"])
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs_encoder: int = 15
    epochs_flow: int = 200
    patience: int = 20
    patience_encoder: int = 5
    batch_size: int = 64
    flow_batch_size: int | str = "auto"
    lr_encoder: float = 2e-4
    lr_flow: float = 1e-2
    flow_augment: int = 0
    val_fraction: float = 0.1
    image_size: int = 32
    confidence: float = 0.95
    precision: str = "fp32"
    description: str = ""

    def validate(self) -> Suite:
        check_field_types(self.name, asdict(self))
        if self.protocol not in PROTOCOLS:
            raise ConfigError(
                f"suite {self.name}: protocol must be {PROTOCOL_HELP}; got {self.protocol!r}"
            )
        if self.protocol == "ood" and not self.out_datasets:
            raise ConfigError(f"suite {self.name}: the ood protocol needs out_datasets")
        if self.categories is not None and self.protocol != "given":
            raise ConfigError(f"suite {self.name}: categories only apply to protocol 'given'")
        for label, items in (
            ("encoders", self.encoders),
            ("flows", self.flows),
            ("scorers", self.scorers),
            ("preprocessors", self.preprocessors),
            ("seeds", self.seeds),
        ):
            if not items:
                raise ConfigError(f"suite {self.name}: {label} is empty")
        for spec in self.encoders + self.flows + self.scorers + [self.dataset]:
            parse_spec(spec)
        return self

    def with_overrides(self, **overrides: Any) -> Suite:
        """A copy with the non-``None`` overrides applied (the CLI's flags)."""
        known = set(asdict(self))
        bad = set(overrides) - known
        if bad:
            raise ConfigError(f"unknown suite field(s): {', '.join(sorted(bad))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None}).validate()

    def targets(self, n_classes: int | None = None, categories: list[str] | None = None) -> list:
        """What each cell holds out or tests against, for the protocol (see the class doc).

        ``n_classes`` (loo) and ``categories`` (given, when ``categories = ["all"]``) come
        from the loaded data.
        """
        if self.protocol == "ood":
            return list(self.out_datasets)
        if self.protocol == "given":
            if self.categories is None:
                return ["all"]
            return list(categories) if self.categories == ["all"] else list(self.categories)
        assert n_classes is not None
        targets = list(self.classes) if self.classes is not None else list(range(n_classes))
        bad = [c for c in targets if not 0 <= int(c) < n_classes]
        if bad:
            raise ConfigError(f"classes {bad} do not exist in {self.dataset} (0..{n_classes - 1})")
        return targets

    def cells(self, targets: list[int | str]) -> list[Cell]:
        """Every cell of the grid, in run order (cells sharing an encoder are adjacent)."""
        shared = {f: getattr(self, f) for f in _SHARED_FIELDS}
        grid = itertools.product(
            targets, self.seeds, self.encoders, self.preprocessors, self.flows, self.scorers
        )
        return [
            Cell(
                dataset=self.dataset,
                protocol=self.protocol,
                target=target,
                seed=int(seed),
                encoder=canonical_spec(encoders, enc),
                preprocess=preprocess,
                flow=canonical_spec(flows, flow),
                scorer=canonical_spec(scorers, scorer),
                **shared,
            )
            for target, seed, enc, preprocess, flow, scorer in grid
        ]


# Which settings change which artifact: each belongs in that artifact's cache key (a test
# changes every Cell field and checks the keys that must change, and only those).
ENCODER_FIELDS = (
    "dataset",
    "protocol",
    "seed",
    "encoder",
    "epochs_encoder",
    "patience_encoder",
    "batch_size",
    "lr_encoder",
    "val_fraction",
    "image_size",
    "precision",  # both stages: a flow's key holds its encoder's key
)
FLOW_FIELDS = (
    "preprocess",
    "flow",
    "epochs_flow",
    "patience",
    "flow_batch_size",
    "lr_flow",
    "flow_augment",
)
SCORER_FIELDS = ("scorer", "confidence")
_SHARED_FIELDS = (
    "epochs_encoder",
    "epochs_flow",
    "patience",
    "patience_encoder",
    "batch_size",
    "flow_batch_size",
    "lr_encoder",
    "lr_flow",
    "flow_augment",
    "val_fraction",
    "image_size",
    "confidence",
    "precision",
)


@dataclass(frozen=True)
class Cell:
    """One result: a trained pair evaluated on one target (held-out class, OOD set or
    category) and seed."""

    dataset: str
    protocol: str
    target: int | str
    seed: int
    encoder: str
    preprocess: str
    flow: str
    scorer: str
    epochs_encoder: int
    epochs_flow: int
    patience: int
    patience_encoder: int
    batch_size: int
    flow_batch_size: int | str
    lr_encoder: float
    lr_flow: float
    val_fraction: float
    image_size: int
    confidence: float
    precision: str
    flow_augment: int = 0  # last, with a default: added after runs were recorded

    def config(self) -> dict[str, Any]:
        return asdict(self)

    def detector_params(self, device: str = "auto") -> dict[str, Any]:
        """The :class:`~flowkit.Detector` parameters of this cell (the one place they map)."""
        params = {f: getattr(self, f) for f in _SHARED_FIELDS if f != "image_size"}
        return {
            **params,
            "encoder": self.encoder,
            "flow": self.flow,
            "scorer": self.scorer,
            "preprocess": self.preprocess,
            "seed": self.seed,
            "device": device,
        }

    def dataset_spec(self) -> str:
        """The dataset to load for this cell (``given`` targets name a category)."""
        return target_dataset(self.dataset, self.protocol, self.target)

    @property
    def encoder_key(self) -> str:
        """Identifies the trained encoder and its latents (shared by flows and scorers)."""
        target = self.target if self.protocol != "ood" else "all"
        return _key(self, ENCODER_FIELDS, {"target": target})

    @property
    def flow_key(self) -> str:
        """Identifies the fitted flow (shared by scorers)."""
        return _key(self, FLOW_FIELDS, {"encoder_key": self.encoder_key})

    @property
    def cell_id(self) -> str:
        return _key(self, tuple(asdict(self)), {})

    @property
    def combination(self) -> str:
        """The label a report groups by: encoder + preprocess + flow + scorer."""
        pre = "" if self.preprocess == "standardize" else f" [{self.preprocess}]"
        return f"{self.encoder} + {self.flow}{pre} / {self.scorer}"


def target_dataset(dataset: str, protocol: str, target: int | str) -> str:
    """The dataset spec for one target: a ``given`` target names a category."""
    if protocol == "given" and target != "all":
        name, options = parse_spec(dataset)
        return format_spec(name, {**options, "category": target})
    return dataset


# Fields added after runs were recorded: left out of keys while at these values, so those
# runs' cells, encoders and flows keep their keys (and resume).
_KEY_DEFAULTS: dict[str, Any] = {"flow_augment": 0}


def _key(cell: Cell, fields: tuple[str, ...], extra: dict[str, Any]) -> str:
    values = {f: getattr(cell, f) for f in fields}
    values = {f: v for f, v in values.items() if _KEY_DEFAULTS.get(f, object()) != v}
    blob = json.dumps({**values, **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string"}


def _describe(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _describe(args[0]) + ' (or "all")'
    if typing.get_origin(hint) is list:
        item = _TYPE_NAMES[args[0]].split(" ", 1)[1]
        return f"a list of {item}s, e.g. {[1, 2] if args[0] is int else ['a', 'b']}"
    return _TYPE_NAMES[hint]


def _type_ok(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return value is None or any(
            _type_ok(value, a) for a in typing.get_args(hint) if a is not type(None)
        )
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_field_types(suite: str, values: dict[str, Any]) -> None:
    """Refuse a suite field of the wrong type, naming the field and the expected type."""
    hints = typing.get_type_hints(Suite)
    for key, value in values.items():
        if not _type_ok(value, hints[key]):
            raise ConfigError(
                f"suite {suite}: field {key} must be {_describe(hints[key])}; got {value!r}"
            )


_LIST_FIELDS = {
    "encoders",
    "flows",
    "scorers",
    "preprocessors",
    "seeds",
    "out_datasets",
    "categories",
}
# Names of earlier versions, still read from suite files (with a warning).
_RENAMED_FIELDS = {"latents": "preprocessors"}


def load_suite(name_or_path: str) -> Suite:
    """A suite by name (``quick``, ``paper-mnist``, ...) or path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or "/" in name_or_path or "\\" in name_or_path:
        if not path.is_file():
            raise ConfigError(f"suite file not found: {path}")
    else:
        for d in suite_dirs():
            if (d / f"{name_or_path}.toml").exists():
                path = d / f"{name_or_path}.toml"
                break
        else:
            import difflib

            names = list_suites()
            close = difflib.get_close_matches(name_or_path, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown suite {name_or_path!r}{hint} Available: "
                f"{', '.join(names) or 'none'} (or give a path to a .toml file)"
            )
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ConfigError(f"cannot read suite {path}: {exc}") from None
    data.setdefault("name", path.stem)
    for old, new in _RENAMED_FIELDS.items():
        if old in data and new not in data:
            warnings.warn(
                f"suite {path}: field {old} is now called {new}", FutureWarning, stacklevel=2
            )
            data[new] = data.pop(old)
    if data.get("classes") == "all":
        data["classes"] = None
    fields = set(Suite.__dataclass_fields__)
    unknown = set(data) - fields
    if unknown:
        raise ConfigError(
            f"suite {path}: unknown field(s) {', '.join(sorted(unknown))}; "
            f"accepted: {', '.join(sorted(fields))}"
        )
    for key in _LIST_FIELDS & set(data):
        # a single component may be written without brackets; a list of classes may not
        if isinstance(data[key], str) and key != "seeds":
            data[key] = [data[key]]
    check_field_types(str(data["name"]), data)
    return Suite(**data).validate()
