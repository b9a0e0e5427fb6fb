"""``flowkit list`` and ``flowkit plugins``."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from flowkit.cli._common import handle_errors, out
from flowkit.registry import REGISTRIES


class Kind(str, Enum):
    encoders = "encoders"
    flows = "flows"
    datasets = "datasets"
    scorers = "scorers"


@handle_errors
def list_components(
    kind: Annotated[Kind, typer.Argument(help="What to list.")],
    pattern: Annotated[str, typer.Argument(help="Glob filter, e.g. 'timm/resnet*'.")] = "*",
) -> None:
    """List registered encoders, flows, datasets or scorers, with the plugin of each."""
    import difflib

    from flowkit.cli._common import err

    registry = REGISTRIES[kind.value]
    names = registry.list(pattern)
    if not names:
        known = registry.list()
        close = difflib.get_close_matches(pattern.strip("*"), known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        err.print(
            f"no {kind.value} match {pattern!r}{hint} (`flowkit list {kind.value}` lists all "
            f"{len(known)})"
        )
        raise typer.Exit(1)
    table = Table(title=f"{kind.value} matching {pattern!r}" if pattern != "*" else kind.value)
    for col in ("name", "plugin", "description"):
        table.add_column(col)
    for name in names:
        entry = registry.get(name.removesuffix("/*") + "/x" if name.endswith("/*") else name)
        table.add_row(name, entry.plugin, entry.summary)
    out.print(table)


@handle_errors
def plugins() -> None:
    """Show loaded plugins: name, distribution, version, hooks and components."""
    from flowkit.plugins import plugin_infos

    table = Table(title="flowkit plugins")
    for col in ("plugin", "distribution", "version", "hooks", "components", "status"):
        table.add_column(col, no_wrap=col in ("plugin", "distribution", "version", "status"))
    for info in plugin_infos():
        comps = "; ".join(
            f"{kind}: {', '.join(names)}" for kind, names in info.components.items() if names
        )
        hooks = ", ".join(h.replace("flowkit_register_", "") for h in info.hooks)
        table.add_row(
            info.name,
            info.distribution or "-",
            info.version or "-",
            hooks,
            comps,
            Text("failed", style="red") if info.error else Text("ok", style="green"),
        )
    out.print(table)
