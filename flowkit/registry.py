"""Registries of named components: encoders, flows, datasets and scorers.

A registry maps a name to a factory taking keyword arguments. Plugins (built-ins too) fill the
registries through the pluggy hooks in :mod:`flowkit.hookspecs`; the registries load the plugins
lazily, the first time anyone looks something up.

Example:
    >>> import flowkit
    >>> "dcgan_ae" in flowkit.list_encoders()
    True
    >>> flowkit.parse_spec("realnvp:layers=8,batch_norm=true")
    ('realnvp', {'layers': 8, 'batch_norm': True})
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flowkit.errors import ConfigError, FlowkitError, UnknownComponentError
from flowkit.spec import format_spec, parse_spec

__all__ = [
    "Entry",
    "Registry",
    "encoders",
    "flows",
    "datasets",
    "scorers",
    "parse_spec",
    "format_spec",
    "coerce_options",
    "set_plugin_loader",
    "canonical_spec",
    "check_positive",
    "optional_members",
    "check_memory",
    "REGISTRIES",
]

Factory = Callable[..., Any]


def optional_members(obj: Any, names: Any) -> dict[str, Any]:
    """The members of ``obj`` named in ``names`` that it has (and that are not ``None``), by
    name. The one place flowkit looks a component's optional member up by name: a plugin's
    component need not subclass flowkit's base classes, so each kind's capabilities (declared
    on its base class with ``None`` defaults) are read through here, once, where the component
    enters (its registry's contract) and by each kind's ``*_capabilities`` function."""
    found = {}
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            found[name] = value
    return found


@dataclass(frozen=True)
class Entry:
    """One registered component, with where it came from."""

    name: str
    factory: Factory
    plugin: str = "user"
    distribution: str | None = None
    namespace: bool = False
    lister: Callable[[], list[str]] | None = field(default=None, compare=False)
    #: what the component declares beside its factory (a dataset's ``categories`` lister):
    #: the registry's :attr:`Registry.capabilities`, given to ``register`` or found once on
    #: the factory when it is registered
    capabilities: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def summary(self) -> str:
        """The first sentence of the factory's docstring (its first paragraph's lines joined,
        up to a full stop before a capital letter or the end), without reST markup."""
        doc = (inspect.getdoc(self.factory) or "").strip()
        paragraph = " ".join(doc.split("\n\n")[0].split())
        sentence = re.split(r"(?<=\.)\s+(?=[A-Z])", paragraph)[0]
        return sentence.replace("``", "")


class Registry:
    """A name → factory table for one kind of component.

    Args:
        kind: what the registry holds, used in messages ("encoder", "flow", ...).
    """

    def __init__(
        self,
        kind: str,
        contract: str | None = None,
        capabilities: dict[str, str] | None = None,
        *,
        sized: bool = False,
    ) -> None:
        self.kind = kind
        # torch modules: their parameters' memory is estimated before they are built
        self.sized = sized
        #: the capabilities an entry of this kind may declare, with what each means
        self.capabilities = dict(capabilities or {})
        # "module:function" checking what a factory returns (imported on first use: the
        # contracts live beside each kind's base class, which imports this module).
        self.contract = contract
        self._entries: dict[str, Entry] = {}
        self._namespaces: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}  # a renamed component's old name → its new name
        # Set by flowkit.plugins while hooks run: tells which plugin is registering.
        self._origin: Callable[[], tuple[str, str | None]] | None = None

    @contextmanager
    def provenance(self, origin: Callable[[], tuple[str, str | None]]) -> Iterator[None]:
        """While active, entries registered are attributed to ``origin()``'s
        ``(plugin, distribution)`` (flowkit's plugin loader uses it around each hook call)."""
        previous, self._origin = self._origin, origin
        try:
            yield
        finally:
            self._origin = previous

    def _who(self) -> tuple[str, str | None]:
        return self._origin() if self._origin is not None else ("user", None)

    # -- registration ---------------------------------------------------------------------

    def register(
        self, name: str | Factory | None = None, *, override: bool = False, **capabilities: Any
    ) -> Callable[[Factory], Factory] | Factory:
        """Register a factory under ``name`` (default: the function's name), with the
        capabilities it declares (:attr:`capabilities`: ``categories=`` for a dataset).

        Usable as ``@registry.register``, ``@registry.register("name")`` or
        ``registry.register("name")(factory)``. Raises :class:`ConfigError` on a duplicate
        name unless ``override=True``, and on a capability this kind does not have.
        """
        unknown = sorted(set(capabilities) - set(self.capabilities))
        if unknown:
            raise ConfigError(
                f"a {self.kind} has no capability {', '.join(map(repr, unknown))}; "
                f"declared ones: {', '.join(self.capabilities) or 'none'}"
            )
        if callable(name):
            return self._add(name.__name__, name, override=override, capabilities=capabilities)

        def decorator(factory: Factory) -> Factory:
            return self._add(
                name or factory.__name__, factory, override=override, capabilities=capabilities
            )

        return decorator

    def register_namespace(
        self,
        prefix: str,
        factory: Callable[..., Any],
        *,
        lister: Callable[[], list[str]] | None = None,
        override: bool = False,
    ) -> None:
        """Resolve every ``"prefix/<name>"`` with ``factory(name, **kwargs)``.

        ``lister`` returns the names available in the namespace, for :meth:`list`.
        """
        if "/" in prefix or not prefix:
            raise ConfigError(f"invalid {self.kind} namespace {prefix!r}")
        if prefix in self._namespaces and not override:
            raise ConfigError(
                f"{self.kind} namespace {prefix!r} is already registered by "
                f"{self._namespaces[prefix].plugin!r}; pass override=True to replace it"
            )
        plugin, dist = self._who()
        self._namespaces[prefix] = Entry(prefix, factory, plugin, dist, True, lister)

    def _add(
        self,
        name: str,
        factory: Factory,
        *,
        override: bool,
        capabilities: dict[str, Any] | None = None,
    ) -> Factory:
        if not name or ":" in name or "+" in name:
            # ":" separates options and "+" joins scorers on the command line
            raise ConfigError(f"invalid {self.kind} name {name!r}")
        if "/" in name and name.split("/", 1)[0] in self._namespaces:
            raise ConfigError(
                f"{self.kind} {name!r} falls inside the namespace "
                f"{name.split('/', 1)[0]!r}; register it there instead"
            )
        if name in self._entries and not override:
            raise ConfigError(
                f"{self.kind} {name!r} is already registered by {self._entries[name].plugin!r}; "
                "pass override=True to replace it"
            )
        plugin, dist = self._who()
        # an attribute on the factory (``mvtec.categories = ...``) declares it too: read once
        declared = {**optional_members(factory, self.capabilities), **(capabilities or {})}
        self._entries[name] = Entry(name, factory, plugin, dist, capabilities=declared)
        return factory

    def alias(self, old: str, new: str) -> None:
        """Keep a renamed component loadable under its old name (as timm's deprecations do):
        looking ``old`` up gives ``new`` with a :class:`FutureWarning`, so model files and
        bench cache entries written with the old name keep working."""
        if old == new or old in self._entries:
            raise ConfigError(f"cannot alias {self.kind} {old!r}: it is a registered name")
        self._aliases[old] = new

    def canonical(self, name: str) -> str:
        """The current name of ``name`` (itself, or what an alias points to), silently."""
        seen: set[str] = set()
        while name in self._aliases and name not in seen:
            seen.add(name)
            name = self._aliases[name]
        return name

    def unregister(self, name: str) -> None:
        """Remove a name, namespace or ``"prefix/*"`` (no error if absent)."""
        self._entries.pop(name, None)
        self._namespaces.pop(name.removesuffix("/*"), None)

    def names(self) -> list[str]:
        """Registered names and namespaces (as ``"prefix/*"``), without loading plugins."""
        return sorted(self._entries) + sorted(f"{p}/*" for p in self._namespaces)

    def clear(self) -> None:
        self._entries.clear()
        self._namespaces.clear()
        self._aliases.clear()

    # -- lookup ---------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if _plugin_loader is not None:
            _plugin_loader()

    def get(self, name: str) -> Entry:
        """The entry for ``name``; namespaced names return their namespace's entry."""
        self._ensure_loaded()
        if name in self._entries:
            return self._entries[name]
        if name in self._aliases:
            new = self.canonical(name)
            warnings.warn(
                f"{self.kind} {name!r} was renamed {new!r}; the old name still works but will "
                "be removed: use the new one",
                FutureWarning,
                stacklevel=3,
            )
            return self.get(new)
        if "/" in name:
            prefix = name.split("/", 1)[0]
            if prefix in self._namespaces:
                return self._namespaces[prefix]
        raise UnknownComponentError(self._unknown_message(name))

    def _unknown_message(self, name: str) -> str:
        known = list(self._entries) + [f"{p}/..." for p in self._namespaces]
        close = difflib.get_close_matches(name, list(self._entries) + list(self._namespaces), n=3)
        msg = f"unknown {self.kind} {name!r}"
        if close:
            msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
        msg += f" Available: {', '.join(sorted(known)) or 'none'}."
        return msg

    def create(self, name: str, /, **kwargs: Any) -> Any:
        """Build ``name`` with ``kwargs``; ``None`` values are dropped (as in timm).

        Options the factory does not accept raise :class:`ConfigError` listing those it does.
        """
        entry = self.get(name)
        name = self.canonical(name)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        args: tuple[Any, ...] = (name.split("/", 1)[1],) if entry.namespace else ()
        kwargs = self.check_options(name, kwargs)
        origin = f" (plugin {entry.plugin!r})" if entry.plugin not in ("builtin", "user") else ""
        if self.sized:
            check_memory(f"{self.kind} {format_spec(name, kwargs)}", entry.factory, args, kwargs)
        try:
            obj = entry.factory(*args, **kwargs)
        except FlowkitError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            # A plugin's factory that does not validate its own options still gets one line.
            raise ConfigError(
                f"cannot create {self.kind} {name!r}{origin} with options {kwargs}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if self.contract is not None:
            module, _, func = self.contract.partition(":")
            check = getattr(importlib.import_module(module), func)
            obj = check(obj, f"{self.kind} {name!r}{origin}")
        return obj

    def check_options(
        self, name: str, options: dict[str, Any], given: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """``options`` checked against ``name``'s factory without building it: an option it
        does not accept raises :class:`ConfigError` listing those it does, a value of the
        wrong type names the type expected. ``given`` are keywords flowkit itself passes
        (``in_channels``, ``features``): the user may not set them, and they are not
        reported as unknown. Returns the options with lossless conversions applied."""
        entry = self.get(name)
        name = self.canonical(name)
        accepted = accepted_options(entry.factory, skip=1 if entry.namespace else 0)
        if accepted is not None:
            unknown = sorted(set(options) - set(accepted) - set(given))
            if unknown:
                raise ConfigError(
                    f"{self.kind} {name!r} has no option {', '.join(map(repr, unknown))}; "
                    f"accepted: {', '.join(a for a in accepted if a not in given) or 'none'}"
                )
        return coerce_options(f"{self.kind} {name!r}", entry.factory, options)

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a glob ``pattern`` (namespaces expanded)."""
        self._ensure_loaded()
        names = set(self._entries)
        head = pattern.split("/", 1)[0]
        for prefix, entry in self._namespaces.items():
            # A namespace can hold a thousand names (timm): expand it only when asked by prefix.
            if "/" in pattern and entry.lister is not None and fnmatch.fnmatchcase(prefix, head):
                names.update(f"{prefix}/{n}" for n in entry.lister())
            else:
                names.add(f"{prefix}/*")
        return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern) or n == pattern)

    def entries(self) -> list[Entry]:
        """All entries and namespaces, for ``flowkit plugins``."""
        self._ensure_loaded()
        return list(self._entries.values()) + list(self._namespaces.values())

    def __contains__(self, name: object) -> bool:
        try:
            self.get(str(name))
        except UnknownComponentError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


_plugin_loader: Callable[[], None] | None = None


def set_plugin_loader(loader: Callable[[], None] | None) -> None:
    """What fills the registries before their first lookup (:mod:`flowkit.plugins` installs
    its loader when imported, so the registry does not depend on the plugin system)."""
    global _plugin_loader
    _plugin_loader = loader


def accepted_options(factory: Callable[..., Any], skip: int = 0) -> list[str] | None:
    """Keyword options a factory accepts, or ``None`` when it takes ``**kwargs``."""
    try:
        params = list(inspect.signature(factory).parameters.values())[skip:]
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def coerce_options(
    what: str, factory: Callable[..., Any], options: dict[str, Any]
) -> dict[str, Any]:
    """Check option values against the factory's type annotations, before anything is built.

    ``realnvp:layers=abc`` fails here, in one line naming the option and the expected type,
    instead of deep inside training. Factories without annotations are not checked.
    """
    import typing

    from flowkit.typecheck import check_type, describe

    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # unresolvable annotations (a plugin's forward refs): skip the check
        return options
    out = dict(options)
    for key, value in options.items():
        if key not in hints:
            continue
        ok, out[key] = check_type(value, hints[key], text_from_numbers=True)
        if not ok:
            raise ConfigError(f"{what}: option {key} must be {describe(hints[key])}, got {value!r}")
    return out


def _physical_memory() -> int | None:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def check_memory(what: str, factory: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """Refuse, before anything is allocated, a module whose parameters and buffers alone
    would not fit in this machine's memory (``simclr:latent_dim=100000000``: 1.6 TB). The
    factory runs once on PyTorch's ``meta`` device, which records shapes and allocates
    nothing; a factory that cannot run there is not estimated. The random state is kept, so
    the real build that follows gives the same weights."""
    import torch

    have = _physical_memory()
    if have is None:
        return
    state = torch.get_rng_state()
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            probe = factory(*args, **kwargs)
        if not isinstance(probe, torch.nn.Module):
            return
        need = sum(t.numel() * t.element_size() for t in (*probe.parameters(), *probe.buffers()))
    except Exception:  # a factory that needs real tensors: built for real, unestimated
        return
    finally:
        torch.set_rng_state(state)
    if need > have:
        raise ConfigError(
            f"{what} would need {_size(need)} for its parameters alone, more than this "
            f"machine's {_size(have)} of memory: choose smaller options"
        )


def check_positive(what: str, **values: float) -> None:
    """Refuse non-positive sizes in one line: ``realnvp: layers must be >= 1, got -2``."""
    for key, value in values.items():
        if value is None or value < 1:
            raise ConfigError(f"{what}: {key} must be >= 1, got {value}")


encoders = Registry("encoder", contract="flowkit.encoders.base:check_encoder_object", sized=True)
flows = Registry("flow", contract="flowkit.flows.base:check_flow_object", sized=True)
datasets = Registry(
    "dataset",
    contract="flowkit.data.base:check_dataset_object",
    capabilities={
        "categories": "categories(root) -> names: the categories found under a data root "
        '(a suite\'s categories = "all", protocol given)',
    },
)
scorers = Registry("scorer", contract="flowkit.scorers:check_scorer_object")
REGISTRIES: dict[str, Registry] = {
    "encoders": encoders,
    "flows": flows,
    "datasets": datasets,
    "scorers": scorers,
}


def canonical_spec(registry: Registry, spec: str) -> str:
    """``spec`` with a renamed component's current name and sorted options (a stable key)."""
    name, options = parse_spec(spec)
    return format_spec(registry.canonical(name), options)
