"""Benchmark suites (TOML files) and their expansion into a grid of cells."""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import typing
import warnings
from dataclasses import asdict, field, make_dataclass, replace
from pathlib import Path
from typing import Any

from flowkit.config import (
    PAPER,
    STAGES,
    DetectorConfig,
    cell_fields,
    grid_axes,
    stage_fields,
    stage_of,
)
from flowkit.errors import ConfigError
from flowkit.registry import REGISTRIES, canonical_spec
from flowkit.spec import Spec, format_spec, parse_spec

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
    "shipped_suites",
    "ENCODER_FIELDS",
    "FLOW_FIELDS",
    "SCORER_FIELDS",
    "SHARED_FIELDS",
]

PROTOCOLS = ("loo", "one-class", "ood", "given")
#: The protocols whose targets are the data's classes.
CLASS_PROTOCOLS = ("loo", "one-class")


def check_suite_name(name: str) -> None:
    """A suite's name becomes a path component (``runs/<name>``), so it must be one: letters,
    digits, ``.``, ``_``, ``-`` and ``+``, not starting with a dot (no ``..``, no ``/``)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}", name):
        raise ConfigError(
            f"suite name {name!r} must be one path component: letters, digits, '.', '_', "
            "'-' or '+', not starting with a dot (it names the run folder runs/<name>)"
        )


def _paper(option: str) -> Any:
    """A default factory: the paper's value of ``option``, as a one-item list (a grid axis)."""
    return lambda: [PAPER.params()[option]]


PROTOCOL_HELP = (
    "loo (leave one class out), one-class (one class normal, the others anomalous), ood "
    "(train on dataset, test against out_datasets) or given "
    "(the dataset's own train/test parts with labelled anomalies, e.g. MVTec AD)"
)


def suite_dirs() -> list[Path]:
    """Where named suites are looked up: ``$FLOWKIT_SUITES`` (``os.pathsep``-separated),
    then the suites that ship inside the package (``flowkit/suites``, package data)."""
    import os
    from importlib.resources import files

    dirs = [Path(p) for p in os.environ.get("FLOWKIT_SUITES", "").split(os.pathsep) if p]
    dirs.append(Path(str(files("flowkit") / "suites")))
    return dirs


def list_suites() -> list[str]:
    """Every suite a name finds: ``$FLOWKIT_SUITES``' and the shipped ones."""
    return sorted({p.stem for d in suite_dirs() if d.is_dir() for p in d.glob("*.toml")})


def shipped_suites() -> list[str]:
    """The suites that ship inside the package (``flowkit/suites``), in a fixed order: the
    default first, then by name."""
    found = {p.stem for p in suite_dirs()[-1].glob("*.toml")}
    return sorted(found, key=lambda n: (n != "quick", n != "recommended", n))


# The grid's axes: option → the suite's list field (declared once, in flowkit.config).
_GRID_AXES = grid_axes()


class _SuiteMethods:
    """A benchmark grid: dataset × target × seed × encoder × preprocess × flow × scorer.

    Targets depend on the protocol: held-out classes (``loo``), normal classes
    (``one-class``), out-of-distribution datasets
    (``ood``: the model trains on every class of ``dataset``), or the dataset's categories
    (``given``: each category's own train/test parts, e.g. MVTec AD; ``categories = "all"``
    takes every category found under the data root).

    Besides the grid, a suite has one value of every other Detector option
    (:mod:`flowkit.config`); one it leaves out takes the seed paper's value
    (:data:`flowkit.config.PAPER`): a suite is the paper's experiment unless it says
    otherwise.
    """

    def validate(self) -> Suite:
        check_field_types(repr(self.name), asdict(self))
        check_suite_name(self.name)
        if self.protocol not in PROTOCOLS:
            raise ConfigError(
                f"suite {self.name}: protocol must be {PROTOCOL_HELP}; got {self.protocol!r}"
            )
        if self.protocol == "ood" and not self.out_datasets:
            raise ConfigError(f"suite {self.name}: the ood protocol needs out_datasets")
        if self.categories is not None and self.protocol != "given":
            raise ConfigError(f"suite {self.name}: categories only apply to protocol 'given'")
        values = asdict(self)
        for label in _GRID_AXES.values():
            if not values[label]:
                raise ConfigError(f"suite {self.name}: {label} is empty")
        for spec in self.encoders + self.flows + self.scorers + [self.dataset]:
            Spec.parse(spec)
        try:  # every shared option's own check, named as the suite field it is
            DetectorConfig(**{f: values[f] for f in SHARED_FIELDS}).validate()
        except ConfigError as exc:
            raise ConfigError(f"suite {self.name}: {exc}") from None
        return self  # type: ignore[return-value]

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
        values = asdict(self)
        shared = {f: values[f] for f in SHARED_FIELDS}
        # the axes in stage order (what the encoder needs first): cells sharing an encoder are
        # adjacent, and a component is named by its registry's canonical spec
        axes = sorted(_GRID_AXES, key=lambda name: STAGES.index(stage_of(name)))
        # each value once, however often the suite repeats it (by its canonical spec:
        # "realnvp:layers=4,hidden=8" and "realnvp:hidden=8,layers=4" are one flow)
        lists = [
            list(dict.fromkeys(
                canonical_spec(REGISTRIES[_GRID_AXES[a]], v) if _GRID_AXES[a] in REGISTRIES else v
                for v in values[_GRID_AXES[a]]
            ))
            for a in axes
        ]  # fmt: skip
        return [
            Cell(
                dataset=self.dataset,
                protocol=self.protocol,
                target=target,
                image_size=self.image_size,
                **dict(zip(axes, combo, strict=True)),
                **shared,
            )
            for target in dict.fromkeys(targets)
            for combo in itertools.product(*lists)
        ]


#: The options a suite holds one value of (the rest of a cell's options are grid axes).
SHARED_FIELDS = tuple(f.name for f in cell_fields() if f.name not in _GRID_AXES)

Suite = make_dataclass(
    "Suite",
    [
        ("name", str),
        ("dataset", str, field(default="digits")),
        ("protocol", str, field(default="loo")),
        ("classes", list[int] | None, field(default=None)),  # None: every class
        ("out_datasets", list[str], field(default_factory=list)),
        # given: None = the dataset as it is; ["all"] = every category found
        ("categories", list[str] | None, field(default=None)),
        *(
            (axis, list[str] if key != "seed" else list[int], field(default_factory=_paper(key)))
            for key, axis in _GRID_AXES.items()
        ),
        ("image_size", int, field(default=32)),
        *(
            (f.name, f.type, field(default=f.metadata["paper"]))
            for f in cell_fields()
            if f.name in SHARED_FIELDS
        ),
        ("description", str, field(default="")),
    ],
    bases=(_SuiteMethods,),
)
Suite.__module__, Suite.__doc__ = __name__, _SuiteMethods.__doc__  # picklable by name

# Which settings change which artifact: each belongs in that artifact's cache key, by the
# stage its declaration names (a test changes every Cell field and checks the keys that must
# change, and only those). What the data is changes the encoder.
ENCODER_FIELDS = ("dataset", "protocol", "image_size", *stage_fields("encoder"))
FLOW_FIELDS = stage_fields("density")
SCORER_FIELDS = stage_fields("calibration")


class _CellMethods:
    """One result: a trained pair evaluated on one target (held-out class, OOD set or
    category) and seed; its fields are the data's and every cell option of
    :mod:`flowkit.config`."""

    def config(self) -> dict[str, Any]:
        return asdict(self)

    def detector_params(self, device: str = "auto") -> dict[str, Any]:
        """The :class:`~flowkit.Detector` parameters of this cell (the one place they map)."""
        values = self.config()
        return {**{f.name: values[f.name] for f in cell_fields()}, "device": device}

    def detector_config(self, device: str = "auto") -> DetectorConfig:
        return DetectorConfig(**self.detector_params(device))

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
        """Identifies the fitted density (shared by scorers)."""
        return _key(self, FLOW_FIELDS, {"encoder_key": self.encoder_key})

    @property
    def cell_id(self) -> str:
        return _key(self, tuple(asdict(self)), {})

    @property
    def combination(self) -> str:
        """The label a report groups by: encoder + preprocess + flow + scorer."""
        pre = "" if self.preprocess == "standardize" else f" [{self.preprocess}]"
        return f"{self.encoder} + {self.flow}{pre} / {self.scorer}"


Cell = make_dataclass(
    "Cell",
    [
        ("dataset", str),
        ("protocol", str),
        ("target", int | str),
        ("image_size", int, field(default=32)),
        # an option missing from an old record takes the value it had before it existed
        *((f.name, f.type, field(default=f.metadata["paper"])) for f in cell_fields()),
    ],
    bases=(_CellMethods,),
    frozen=True,
    kw_only=True,
)
Cell.__module__, Cell.__doc__ = __name__, _CellMethods.__doc__  # picklable by name


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
    config = cell.config()
    values = {f: config[f] for f in fields}
    values = {f: v for f, v in values.items() if _KEY_DEFAULTS.get(f, object()) != v}
    blob = json.dumps({**values, **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_field_types(suite: str, values: dict[str, Any]) -> None:
    """Refuse a suite field of the wrong type, naming the field and the expected type."""
    from flowkit.typecheck import check_type, describe

    hints = typing.get_type_hints(Suite)
    for key, value in values.items():
        if not check_type(value, hints[key])[0]:
            hint = hints[key]
            # the optional fields (classes, categories) take "all" in a suite file
            what = (
                describe(typing.get_args(hint)[0]) + ' (or "all")'
                if value is not None and type(None) in typing.get_args(hint)
                else describe(hint)
            )
            raise ConfigError(f"suite {suite}: field {key} must be {what}; got {value!r}")


_LIST_FIELDS = {*_GRID_AXES.values(), "out_datasets", "categories"}
# Names of earlier versions, still read from suite files (with a warning).
_RENAMED_FIELDS = {"latents": "preprocess", "preprocessors": "preprocess"}


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
