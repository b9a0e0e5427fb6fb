"""Hook specifications of the ``flowkit`` plugin system (pluggy project ``flowkit``).

A plugin is a module named by an entry point in the ``flowkit`` group::

    [project.entry-points.flowkit]
    my_plugin = "my_package.flowkit_plugin"

that implements any of the hooks below with the :data:`hookimpl` marker::

    from flowkit import hookimpl

    @hookimpl
    def flowkit_register_encoders(registry):
        @registry.register("my_encoder")
        def my_encoder(**kwargs):
            return MyEncoder(**kwargs)

Each hook receives a :class:`flowkit.registry.Registry` and adds entries to it; it returns
nothing. Hooks are called once per process, the first time a registry is used. flowkit's own
components are registered by :mod:`flowkit.builtin` through these same hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from flowkit.registry import Registry

__all__ = ["hookspec", "hookimpl", "PROJECT_NAME", "HOOK_NAMES"]

PROJECT_NAME = "flowkit"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def flowkit_register_encoders(registry: Registry) -> None:
    """Register encoders (image → latent vector).

    Called once, when the encoder registry is first used. A factory receives
    ``in_channels`` and ``image_size`` (from the data) plus the user's options, and returns a
    :class:`flowkit.encoders.Encoder`.
    """


@hookspec
def flowkit_register_flows(registry: Registry) -> None:
    """Register normalizing flows (density models over latent vectors).

    Called once, when the flow registry is first used. A factory receives ``features``
    (the encoder's ``embed_dim``) plus the user's options, and returns a
    :class:`flowkit.flows.Flow`.
    """


@hookspec
def flowkit_register_datasets(registry: Registry) -> None:
    """Register datasets.

    Called once, when the dataset registry is first used. A factory receives ``root``,
    ``split`` ("train", "test" or "all"), ``image_size`` and ``download`` plus the user's
    options, and returns a :class:`flowkit.data.ImageSet`.
    """


@hookspec
def flowkit_register_scorers(registry: Registry) -> None:
    """Register anomaly scorers (detector outputs → score, higher = more anomalous).

    Called once, when the scorer registry is first used. A factory receives the user's
    options and returns a :class:`flowkit.scorers.Scorer`.
    """


HOOK_NAMES = {
    "encoders": "flowkit_register_encoders",
    "flows": "flowkit_register_flows",
    "datasets": "flowkit_register_datasets",
    "scorers": "flowkit_register_scorers",
}
