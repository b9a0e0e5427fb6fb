"""Component specs, parsed once: ``NAME:key=value,...`` and combinations ``a+b:key=value``.

A spec string is how the command line, suites and the Detector's parameters name a
component (``realnvp:layers=8``, ``timm/resnet18:pretrained=false``). A scorer may also be a
*combination*, ``nll+knn:k=2``: the sum of its parts, each standardised on normal validation
images; each part is a spec of its own (the options after the last ``:`` belong to the last
part). :class:`Spec` is the typed value every consumer reads; nothing else splits on ``+``.

Example:
    >>> Spec.parse("nll+knn:k=2").parts
    (Spec(name='nll', options={}, parts=()), Spec(name='knn', options={'k': 2}, parts=()))
    >>> Spec.parse("nll+knn:k=2").factory_args()
    ('combo', {'parts': 'nll+knn:k=2'})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flowkit.errors import ConfigError

__all__ = ["Spec", "parse_spec", "format_spec", "COMBINATION"]

#: The registered scorer that sums standardised scorers (``a+b`` is shorthand for it).
COMBINATION = "combo"


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"NAME:key=value,..."`` into the name and typed options.

    Values are parsed as booleans (true/false), integers, floats, ``none`` or strings.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"a component spec must be text NAME:key=value,..., got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    if not name:
        raise ConfigError(f"empty component name in {spec!r}")
    options: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"bad option {item!r} in {spec!r}: expected key=value")
        options[key.strip()] = _parse_value(value)
    return name, options


def format_spec(name: str, options: dict[str, Any] | None = None) -> str:
    """Inverse of :func:`parse_spec`, with sorted keys (a stable label for results)."""
    if not options:
        return name
    items = ",".join(
        f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(options.items())
    )
    return f"{name}:{items}"


@dataclass(frozen=True)
class Spec:
    """A parsed component spec: its name and options, or the parts of a combination."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    parts: tuple[Spec, ...] = ()

    @classmethod
    def parse(cls, text: str | Spec, options: dict[str, Any] | None = None) -> Spec:
        """``text`` parsed, with ``options`` merged over its own (a single component only:
        the parts of a combination carry their own options)."""
        if isinstance(text, Spec):
            return text if not options else cls(text.name, {**text.options, **options})
        if isinstance(text, str) and "+" in text.partition(":")[0]:
            parts = tuple(cls.parse(p.replace(";", ",")) for p in _split_parts(text))
            if len(parts) < 2:
                raise ConfigError(f"a combination needs two or more parts joined by '+': {text!r}")
            if any(p.name == COMBINATION for p in parts):
                raise ConfigError(f"a combination cannot contain {COMBINATION!r}: {text!r}")
            return cls("+".join(str(p) for p in parts), {}, parts)
        name, opts = parse_spec(text)
        return cls(name, {**opts, **(options or {})})

    @property
    def is_combination(self) -> bool:
        return bool(self.parts)

    def factory_args(self) -> tuple[str, dict[str, Any]]:
        """The registered name and keyword options to create it with (a combination is the
        ``combo`` scorer over its parts)."""
        if self.parts:
            # ';' between a part's options: the combination stays one spec string
            # (``combo:parts=nll+knn:k=2;metric=cosine``), as saved models have it
            return COMBINATION, {"parts": "+".join(str(p).replace(",", ";") for p in self.parts)}
        return self.name, dict(self.options)

    def leaves(self) -> tuple[Spec, ...]:
        """The single components it names (itself, or a combination's parts)."""
        return self.parts or (self,)

    def __str__(self) -> str:
        return self.name if self.parts else format_spec(self.name, self.options)


def _split_parts(text: str) -> list[str]:
    """``"nll+knn:k=2,metric=cosine"`` → ``["nll", "knn:k=2,metric=cosine"]``; a part's
    options may be written with ``;`` (``combo:parts=nll+knn:k=2;metric=cosine``)."""
    return [p.strip() for p in text.strip().split("+") if p.strip()]
