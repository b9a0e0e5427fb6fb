"""Plugin discovery and loading (pluggy, entry-point group ``flowkit``).

Plugins are loaded lazily, once per process, the first time a registry is used. A plugin that
fails to import, or raises while registering, is reported with one
:class:`~flowkit.errors.FlowkitPluginWarning` naming it and skipped; everything else keeps
working. ``FLOWKIT_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point name.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from flowkit import hookspecs
from flowkit.errors import FlowkitPluginWarning
from flowkit.registry import REGISTRIES

__all__ = ["PluginInfo", "get_plugin_manager", "load_plugins", "reset_plugins", "plugin_infos"]

ENTRY_POINT_GROUP = "flowkit"
BUILTIN = "builtin"


@dataclass
class PluginInfo:
    """What ``flowkit plugins`` shows about one plugin."""

    name: str
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


_lock = threading.RLock()
_state: dict[str, Any] = {"pm": None, "loading": False, "infos": {}}


def _iter_entry_points() -> list[metadata.EntryPoint]:
    """Entry points of the ``flowkit`` group (tests replace this to fake plugins)."""
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _disabled() -> set[str]:
    return {
        n.strip() for n in os.environ.get("FLOWKIT_DISABLE_PLUGINS", "").split(",") if n.strip()
    }


def _warn(name: str, dist: str | None, what: str, exc: BaseException) -> str:
    origin = f" (from {dist})" if dist else ""
    msg = f"flowkit plugin {name!r}{origin} {what}: {type(exc).__name__}: {exc}; skipped"
    warnings.warn(msg, FlowkitPluginWarning, stacklevel=4)
    return msg


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every plugin loaded and registered."""
    load_plugins()
    return _state["pm"]


def load_plugins() -> None:
    """Discover plugins and let each fill the registries (idempotent, thread-safe)."""
    if _state["pm"] is not None or _state["loading"]:
        return
    with _lock:
        if _state["pm"] is not None or _state["loading"]:
            return
        _state["loading"] = True
        try:
            _load()
        finally:
            _state["loading"] = False


def _load() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    disabled = _disabled()
    eps = _iter_entry_points()
    if not any(ep.name == BUILTIN for ep in eps):
        # Running from a source tree that was never pip-installed: keep built-ins available.
        eps.insert(0, metadata.EntryPoint(BUILTIN, "flowkit.builtin", ENTRY_POINT_GROUP))
    for ep in eps:
        if ep.name in disabled or ep.name in infos:
            continue
        dist = ep.dist.metadata["Name"] if getattr(ep, "dist", None) is not None else None
        version = ep.dist.version if getattr(ep, "dist", None) is not None else None
        if ep.name == BUILTIN:
            from flowkit import __version__

            dist, version = "flowkit", __version__
        info = PluginInfo(ep.name, dist, version)
        infos[ep.name] = info
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            info.error = _warn(ep.name, dist, "failed to import", exc)
            continue
        info.hooks = sorted(h.name for h in pm.get_hookcallers(module) or [])

    for kind, hook_name in hookspecs.HOOK_NAMES.items():
        registry = REGISTRIES[kind]
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            info = infos[impl.plugin_name]
            if info.error:
                continue
            before = _names(registry)
            registry._current_plugin = (info.name, info.distribution)
            try:
                impl.function(registry=registry)
            except Exception as exc:
                info.error = _warn(info.name, info.distribution, f"failed in {hook_name}", exc)
                # Leave nothing of a failed plugin behind, in this registry or earlier ones.
                for name in _names(registry) - before:
                    registry.unregister(name.removesuffix("/*"))
                for done_kind, names in info.components.items():
                    for name in names:
                        REGISTRIES[done_kind].unregister(name.removesuffix("/*"))
                info.components.clear()
                continue
            finally:
                registry._current_plugin = ("user", None)
            info.components.setdefault(kind, []).extend(sorted(_names(registry) - before))
    _state["infos"] = infos
    _state["pm"] = pm


def _names(registry: Any) -> set[str]:
    return set(registry._entries) | {f"{p}/*" for p in registry._namespaces}


def plugin_infos() -> list[PluginInfo]:
    """Loaded (and failed) plugins, built-ins first."""
    load_plugins()
    infos = list(_state["infos"].values())
    return sorted(infos, key=lambda i: (i.name != BUILTIN, i.name))


def reset_plugins() -> None:
    """Forget loaded plugins and empty the registries (the next lookup reloads them)."""
    with _lock:
        for registry in REGISTRIES.values():
            registry.clear()
        _state.update(pm=None, loading=False, infos={})
