"""Benchmark suites (TOML files) and their expansion into a grid of cells."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from flowkit.errors import ConfigError
from flowkit.registry import format_spec, parse_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Suite", "Cell", "load_suite", "suite_dirs", "list_suites"]

PROTOCOLS = ("loo", "ood")


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
    """A benchmark grid: dataset × held-out class × seed × encoder × latent × flow × scorer.

    For ``protocol = "ood"`` the held-out classes are replaced by ``out_datasets``: the model
    trains on every class of ``dataset`` and is tested on its test split against each.
    """

    name: str
    dataset: str = "digits"
    protocol: str = "loo"
    classes: list[int] | None = None  # None: every class
    out_datasets: list[str] = field(default_factory=list)
    encoders: list[str] = field(default_factory=lambda: ["dcgan_ae"])
    flows: list[str] = field(default_factory=lambda: ["realnvp"])
    scorers: list[str] = field(default_factory=lambda: ["nll"])
    latents: list[str] = field(default_factory=lambda: ["standardize"])
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs_encoder: int = 15
    epochs_flow: int = 200
    patience: int = 20
    batch_size: int = 64
    image_size: int = 32
    confidence: float = 0.95
    description: str = ""

    def validate(self) -> Suite:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"suite {self.name}: protocol must be one of {PROTOCOLS}")
        if self.protocol == "ood" and not self.out_datasets:
            raise ConfigError(f"suite {self.name}: the ood protocol needs out_datasets")
        for label, items in (
            ("encoders", self.encoders),
            ("flows", self.flows),
            ("scorers", self.scorers),
            ("latents", self.latents),
            ("seeds", self.seeds),
        ):
            if not items:
                raise ConfigError(f"suite {self.name}: {label} is empty")
        for spec in self.encoders + self.flows + self.scorers:
            parse_spec(spec)
        return self

    def with_overrides(self, **overrides: Any) -> Suite:
        """A copy with the non-``None`` overrides applied (the CLI's flags)."""
        known = set(asdict(self))
        bad = set(overrides) - known
        if bad:
            raise ConfigError(f"unknown suite field(s): {', '.join(sorted(bad))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None}).validate()

    def cells(self, n_classes: int) -> list[Cell]:
        """Every cell of the grid, in run order (cells sharing an encoder are adjacent)."""
        targets: list[int | str]
        if self.protocol == "ood":
            targets = list(self.out_datasets)
        else:
            targets = list(self.classes) if self.classes is not None else list(range(n_classes))
            bad = [c for c in targets if not 0 <= int(c) < n_classes]
            if bad:
                raise ConfigError(
                    f"classes {bad} do not exist in {self.dataset} (0..{n_classes - 1})"
                )
        out = []
        for target in targets:
            for seed in self.seeds:
                for enc in self.encoders:
                    for latent in self.latents:
                        for flow in self.flows:
                            for scorer in self.scorers:
                                out.append(
                                    Cell(
                                        dataset=self.dataset,
                                        protocol=self.protocol,
                                        target=target,
                                        seed=int(seed),
                                        encoder=_norm(enc),
                                        latent=latent,
                                        flow=_norm(flow),
                                        scorer=_norm(scorer),
                                        epochs_encoder=self.epochs_encoder,
                                        epochs_flow=self.epochs_flow,
                                        patience=self.patience,
                                        batch_size=self.batch_size,
                                        image_size=self.image_size,
                                        confidence=self.confidence,
                                    )
                                )
        return out


def _norm(spec: str) -> str:
    return format_spec(*parse_spec(spec))


@dataclass(frozen=True)
class Cell:
    """One result: a trained pair evaluated on one held-out class (or OOD set) and seed."""

    dataset: str
    protocol: str
    target: int | str  # held-out class, or the OOD dataset
    seed: int
    encoder: str
    latent: str
    flow: str
    scorer: str
    epochs_encoder: int
    epochs_flow: int
    patience: int
    batch_size: int
    image_size: int
    confidence: float

    def config(self) -> dict[str, Any]:
        return asdict(self)

    def _key(self, fields: tuple[str, ...]) -> str:
        blob = json.dumps({f: getattr(self, f) for f in fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def encoder_key(self) -> str:
        """Identifies the trained encoder and its latents (shared by flows and scorers)."""
        target = self.target if self.protocol == "loo" else "all"
        return _key_of(
            self,
            (
                "dataset",
                "protocol",
                "seed",
                "encoder",
                "epochs_encoder",
                "batch_size",
                "image_size",
            ),
            {"target": target},
        )

    @property
    def flow_key(self) -> str:
        """Identifies the fitted flow (shared by scorers)."""
        return _key_of(
            self, ("latent", "flow", "epochs_flow", "patience"), {"encoder_key": self.encoder_key}
        )

    @property
    def cell_id(self) -> str:
        return self._key(tuple(asdict(self)))

    @property
    def combination(self) -> str:
        """The label a report groups by: encoder + latent + flow + scorer."""
        latent = "" if self.latent == "standardize" else f" [{self.latent}]"
        return f"{self.encoder} + {self.flow}{latent} / {self.scorer}"


def _key_of(cell: Cell, fields: tuple[str, ...], extra: dict[str, Any]) -> str:
    blob = json.dumps({**{f: getattr(cell, f) for f in fields}, **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_LIST_FIELDS = {"encoders", "flows", "scorers", "latents", "seeds", "out_datasets"}


def load_suite(name_or_path: str) -> Suite:
    """A suite by name (``quick``, ``paper-mnist``, ...) or path to a TOML file."""
    path = Path(name_or_path)
    if not path.suffix == ".toml" or not path.exists():
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
        if not isinstance(data[key], list):
            data[key] = [data[key]]
    return Suite(**data).validate()
