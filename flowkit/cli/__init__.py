"""The ``flowkit`` command line (typer): one module per command group."""

from __future__ import annotations

import typer

from flowkit.cli import bench as _bench
from flowkit.cli import components as _components
from flowkit.cli import train as _train

app = typer.Typer(
    name="flowkit",
    help="Image anomaly detection by normalizing-flow likelihood on learned representations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # help texts are plain text: "flowkit[ray]" and "[0, 1]" must print as they are written
    rich_markup_mode=None,
)
app.command("list")(_components.list_components)
app.command("plugins")(_components.plugins)
app.command("train")(_train.train)
app.command("score")(_train.score)
app.command("export")(_train.export)
app.command("bench")(_bench.bench)
app.command("report")(_bench.report)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True
    ),
) -> None:
    _readable_streams()
    if version:
        from flowkit import __version__

        typer.echo(f"flowkit {__version__}")
        raise typer.Exit()


def main() -> None:
    app()


__all__ = ["app", "main"]


def _readable_streams() -> None:
    """stdout and stderr write what their encoding cannot (a file name in Greek on an ASCII
    terminal, ``PYTHONIOENCODING=ascii``) as backslash escapes instead of failing."""
    import io
    import sys

    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")
