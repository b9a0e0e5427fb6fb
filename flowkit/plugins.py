"""Plugin discovery and loading (pluggy, entry-point group ``flowkit``).

Plugins are loaded lazily, once per process, the first time a registry is used. A plugin that
fails to import, or raises while registering, is reported with one
:class:`~flowkit.errors.FlowkitPluginWarning` naming it and skipped; everything else keeps
working. ``FLOWKIT_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point name.
"""

from __future__ import annotations

import inspect
import os
import threading
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from flowkit import hookspecs
from flowkit.errors import FlowkitPluginWarning
from flowkit.registry import REGISTRIES, Registry, set_plugin_loader

__all__ = [
    "PluginInfo",
    "disabled_plugins",
    "get_plugin_manager",
    "load_plugins",
    "reset_plugins",
    "plugin_infos",
    "notify",
]

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


def disabled_plugins() -> set[str]:
    """The entry-point names ``FLOWKIT_DISABLE_PLUGINS`` blocks."""
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
    disabled = disabled_plugins()
    eps = _iter_entry_points()
    if not any(ep.name == BUILTIN for ep in eps):
        # Running from a source tree that was never pip-installed: keep built-ins available.
        eps.insert(0, metadata.EntryPoint(BUILTIN, "flowkit.builtin", ENTRY_POINT_GROUP))
    for ep in eps:
        if ep.name in disabled or ep.name in infos:
            continue
        found = ep.dist  # None for an entry point made by hand (the built-ins from a tree)
        dist = found.metadata["Name"] if found is not None else None
        version = found.version if found is not None else None
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

    _check_pending(pm, infos)
    for kind, hook_name in hookspecs.HOOK_NAMES.items():
        _call_hook(pm, hook_name, REGISTRIES[kind], infos)
    for kind, registry in REGISTRIES.items():
        for entry in registry.entries():
            label = f"{entry.name}/*" if entry.namespace else entry.name
            if entry.plugin in infos:
                infos[entry.plugin].components.setdefault(kind, []).append(label)
    for info in infos.values():
        info.components = {k: sorted(v) for k, v in info.components.items()}
    _state["infos"] = infos
    _state["pm"] = pm


def _check_pending(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
    """pluggy's ``check_pending()``, one warning per misspelt hook: a hook implementation
    that matches no flowkit hook names its plugin, the hook and the closest real hook name,
    and is ignored; the plugin's other hooks, and every other plugin, keep working."""
    import difflib

    known = sorted(hookspecs.HOOK_NAMES.values()) + sorted(hookspecs.EVENT_HOOKS)
    for name, caller in vars(pm.hook).items():
        if name.startswith("_") or not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            info = infos.get(impl.plugin_name)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            origin = f" (from {info.distribution})" if info and info.distribution else ""
            msg = (
                f"flowkit plugin {impl.plugin_name!r}{origin} implements {name!r}, which is no "
                f"flowkit hook{hint}; that implementation is ignored"
            )
            warnings.warn(msg, FlowkitPluginWarning, stacklevel=5)
            impl.optionalhook = True  # reported: pluggy's check below passes over it
    pm.check_pending()


def _call_hook(
    pm: pluggy.PluginManager, hook_name: str, registry: Registry, infos: dict[str, PluginInfo]
) -> None:
    """Call one registration hook through pluggy (its order, ``tryfirst``/``trylast`` and
    wrappers apply). Each entry is attributed to the plugin whose hook implementation added
    it. A plugin that raises is reported, everything it registered (in any registry) is
    removed, it is unregistered from pluggy, and the hook is called again without it."""
    hook = getattr(pm.hook, hook_name)
    while True:
        owners = {impl.function.__code__: impl.plugin_name for impl in hook.get_hookimpls()}
        before = set(registry.names())

        def origin(owners: dict[Any, str] = owners) -> tuple[str, str | None]:
            name = _innermost_owner(_frames(inspect.currentframe().f_back), owners)  # type: ignore[union-attr]
            return (name, infos[name].distribution) if name else ("user", None)

        try:
            with registry.provenance(origin):
                hook(registry=registry)
            return
        except Exception as exc:
            for name in set(registry.names()) - before:
                registry.unregister(name)
            culprit = _innermost_owner(_traceback_frames(exc), owners)
            if culprit is None:
                raise  # not a plugin's fault: flowkit itself is broken
            info = infos[culprit]
            info.error = _warn(info.name, info.distribution, f"failed in {hook_name}", exc)
            for other in REGISTRIES.values():
                for entry in other.entries():
                    if entry.plugin == culprit:
                        other.unregister(entry.name)
            pm.unregister(name=culprit)


def _frames(frame: Any) -> list[Any]:
    """Frames from ``frame`` outwards (innermost first)."""
    out = []
    while frame is not None:
        out.append(frame)
        frame = frame.f_back
    return out


def _traceback_frames(exc: BaseException) -> list[Any]:
    """The frames of an exception's traceback, innermost first."""
    out = []
    tb = exc.__traceback__
    while tb is not None:
        out.append(tb.tb_frame)
        tb = tb.tb_next
    return out[::-1]


def _innermost_owner(frames: list[Any], owners: dict[Any, str]) -> str | None:
    for frame in frames:
        if frame.f_code in owners:
            return owners[frame.f_code]
    return None


def notify(hook_name: str, **kwargs: Any) -> None:
    """Call an event hook (``flowkit_bench_record``, ...) through pluggy. A plugin that
    raises is named in a warning; the caller's work goes on (its results are already safe)."""
    from flowkit.hookspecs import EVENT_HOOKS

    assert hook_name in EVENT_HOOKS, hook_name
    pm = get_plugin_manager()
    hook = getattr(pm.hook, hook_name)
    owners = {impl.function.__code__: impl.plugin_name for impl in hook.get_hookimpls()}
    try:
        hook(**kwargs)
    except Exception as exc:  # a tracker's failure must not lose or stop the bench
        name = _innermost_owner(_traceback_frames(exc), owners) or "?"
        info = _state["infos"].get(name)
        _warn(name, info.distribution if info else None, f"failed in {hook_name}", exc)


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


set_plugin_loader(load_plugins)
