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

The four registration hooks receive a :class:`flowkit.registry.Registry` and add entries to
it; they return nothing and are called once per process, the first time a registry is used.
flowkit's own components are registered by :mod:`flowkit.builtin` through these same hooks.
Two event hooks hand bench results to plugins (experiment trackers are plugins, not core
code): :func:`flowkit_bench_record` per finished cell, :func:`flowkit_bench_report` per
written report. All hooks are called through pluggy (``tryfirst``, ``trylast`` and wrappers
apply); a plugin that raises in an event hook is reported with a warning, and the run goes on.

The minimal contract of each kind (checked when a component is created):

- encoder: a ``torch.nn.Module`` with ``encode(x) -> (B, embed_dim)`` and ``embed_dim``;
- flow: a ``torch.nn.Module`` with ``log_prob(z) -> (B,)``;
- scorer: an object with ``score(ctx) -> (B,)``, higher = more anomalous;
- dataset: a factory accepting ``root``, ``split``, ``image_size``, ``download`` and
  returning a :class:`flowkit.data.ImageSet`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from flowkit.registry import Registry

__all__ = ["hookspec", "hookimpl", "PROJECT_NAME", "HOOK_NAMES", "EVENT_HOOKS"]

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


@hookspec
def flowkit_bench_record(record: dict[str, Any], run_dir: Path) -> None:
    """A bench cell finished (``record["status"]`` is ``"ok"`` or ``"failed"``).

    Called once per cell, right after its record was appended to ``run_dir/results.jsonl``:
    the record holds ``config``, ``metrics``, ``timings``, ``provenance`` and ``cell_id``;
    its per-image scores are in ``run_dir/scores/<cell_id>.npz``. A resumed run does not
    call it again for cells finished earlier.
    """


@hookspec
def flowkit_bench_report(
    run_dir: Path, paths: dict[str, Path], records: list[dict[str, Any]]
) -> None:
    """A bench report was written (by ``flowkit bench`` or ``flowkit report``).

    ``paths`` maps ``"markdown"``, ``"csv"`` and each plot's key to its file in ``run_dir``;
    ``records`` are the run's records, one per cell.
    """


EVENT_HOOKS = ("flowkit_bench_record", "flowkit_bench_report")

HOOK_NAMES = {
    "encoders": "flowkit_register_encoders",
    "flows": "flowkit_register_flows",
    "datasets": "flowkit_register_datasets",
    "scorers": "flowkit_register_scorers",
}
