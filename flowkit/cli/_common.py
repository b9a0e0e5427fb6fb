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

from flowkit.errors import FlowkitError

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
PrecisionHelp = "Training precision: fp32, bf16 (autocast; fast on CPUs with AMX/AVX-512 BF16 and recent GPUs) or auto (bf16 where it is fast). Scoring is always fp32."

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def _show_warning(
    message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    err.print(f"[yellow]warning:[/] {message}", markup=True, highlight=False)


def handle_errors(func: F) -> F:
    """Turn flowkit errors into one line on stderr and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            return func(*args, **kwargs)
        except FlowkitError as exc:
            err.print(f"[red]error:[/] {exc}", markup=True, highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted", highlight=False)
            raise typer.Exit(130) from None
        finally:
            warnings.showwarning = previous

    return wrapper  # type: ignore[return-value]


def check_output_file(path: Path, option: str = "--out") -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    from flowkit.errors import ConfigError

    if path.is_dir():
        raise ConfigError(
            f"{option} {path} is a directory; give a file name, e.g. {path}/model.flowkit"
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
