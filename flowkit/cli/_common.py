"""Shared CLI plumbing: one-line errors, consoles, thread settings."""

from __future__ import annotations

import functools
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from flowkit.errors import ConfigError, FlowkitError

# Options that several commands share, declared once.
DataRootOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="Where dataset files are (default $FLOWKIT_DATA or ~/.cache/flowkit/data); the folder of images for --dataset folder, the folder of categories for mvtec."
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:1, ...")]
ThreadsOpt = Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads.")]
DownloadOpt = Annotated[bool, typer.Option(help="Try to download missing datasets.")]

# No markup and no highlighting: file names, class names, specs and error texts are the
# user's, and "a[/]b.png" or "[bold]" must print as they are. Styling goes through Text.
out = Console(soft_wrap=True, markup=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def shown(value: Any) -> str:
    """``value`` as text that prints on any terminal and reads back unambiguously: bytes a
    file name has that are not UTF-8 as backslash escapes, control characters (a newline in a file
    name) as escapes; everything else, markup characters included, as it is."""
    text = str(value)
    if text.isprintable():
        return text
    text = bytes_escaped(text)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def bytes_escaped(value: Any) -> str:
    """``value`` as text, the bytes of a file name that are not UTF-8 as backslash escapes
    (everything else as it is: a newline stays a newline)."""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def styled(label: str, style: str, rest: Any = "") -> Text:
    """``label`` in ``style``, then the user's text as it is (never parsed as markup)."""
    return Text.assemble((label, style), " " if rest != "" else "", shown(rest))


def warn(message: Any) -> None:
    err.print(styled("warning:", "yellow", message))


def _show_warning(
    message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    warn(message)


def handle_errors(func: F) -> F:
    """Turn flowkit errors into one line on stderr and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            return func(*args, **kwargs)
        except FlowkitError as exc:
            text = as_flags(str(exc)) if isinstance(exc, ConfigError) else str(exc)
            err.print(styled("error:", "red", text))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        finally:
            warnings.showwarning = previous

    return wrapper  # type: ignore[return-value]


def config_options(*names: str, overrides: bool = False, axes: bool = False) -> Callable[[F], F]:
    """Add one typer option per declared Detector option (:mod:`flowkit.config`) to a
    command that takes them as ``**options``: the flag, type, default and help come from the
    declaration. ``overrides``: every option defaults to ``None`` (keep the suite's value).
    ``axes``: the bench grid's axes too (:func:`flowkit.config.grid_axes`), each under its
    suite field's name (``encoders``): a spec axis repeats its flag (``--encoder A --encoder
    B``), an integer one takes a comma-separated list (``--seeds 0,1,2``)."""
    import inspect

    from flowkit.config import DetectorConfig, grid_axes

    def decorate(func: F) -> F:
        sig = inspect.signature(func, eval_str=True)  # the command's own, resolved
        params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        for name, axis in grid_axes().items() if axes else ():
            f = DetectorConfig.__dataclass_fields__[name]
            if f.type in (int, "int"):
                flags: tuple[str, ...] = ("--" + axis,)
                typ: Any = Optional[str]
                text = f"{f.metadata['help']} A grid axis: comma-separated, e.g. 0,1,2."
            else:
                flags = ("--" + name.replace("_", "-"), *f.metadata["aliases"])
                typ = Optional[list[str]]
                text = f"{f.metadata['help']} A grid axis: repeat for several."
            params.append(
                inspect.Parameter(
                    axis,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=None,
                    annotation=Annotated[
                        typ, typer.Option(*flags, help=text + " Default: the suite's.")
                    ],
                )
            )
        for name in names:
            f = DetectorConfig.__dataclass_fields__[name]
            meta = f.metadata
            typ = meta["cli_type"] or f.type
            flags = ("--" + name.replace("_", "-"), *meta["aliases"])
            help_text = meta["help"]
            default = f.default
            if overrides:
                typ, default = Optional[typ], None
                help_text += " Default: the suite's."
            params.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=default,
                    annotation=Annotated[typ, typer.Option(*flags, help=help_text)],
                )
            )
        func.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return func

    return decorate


#: How the library's errors name a parameter, and the flag the command line has for it.
_FLAGS = {
    "workers must": "--workers must",
    "workers and devices need": "--workers and --devices need",
    "workers need": "--workers need",
    "threads must": "--threads must",
    "devices: ": "--devices: ",
    "ray_address needs": "--ray-address needs",
    "the process or ray executor": "--executor process or ray",
    "the ray executor": "--executor ray",
    "out_dir ": "--out ",
    "root=DIR": "--data-root DIR",
}


def as_flags(message: str) -> str:
    """A library error's parameter names spelt as the command line's flags
    (``workers must be ...`` → ``--workers must be ...``)."""
    import re

    for name, flag in sorted(_FLAGS.items(), key=lambda kv: -len(kv[0])):
        message = re.sub(rf"(?<![\w-]){re.escape(name)}", flag, message)
    return message


def int_or_auto(value: Any, flag: str) -> Any:
    """A flag that takes an integer or ``auto`` (``--flow-batch-size``)."""
    from flowkit.errors import ConfigError

    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} must be 'auto' or an integer, got {value!r}") from None


def check_output_file(path: Path, option: str = "--out", example: str = "model.flowkit") -> None:
    """Refuse an output path that cannot be written, before any work is done (a missing
    folder on the way is created when the file is written)."""
    from flowkit.artifact import writable_target
    from flowkit.errors import ConfigError

    try:  # a device, FIFO or socket (or a link to one), or a name the file system refuses
        path = writable_target(path)
    except ConfigError as exc:
        raise ConfigError(f"{option} {exc}") from None
    if path.is_dir():
        raise ConfigError(
            f"{option} {shown(path)} is a directory; give a file name, e.g. {shown(path / example)}"
        )
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write in {parent} ({exc.strerror})") from None


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def is_tty() -> bool:
    return sys.stderr.isatty()
