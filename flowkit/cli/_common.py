"""Shared CLI plumbing: one-line errors, consoles, thread settings."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from flowkit.errors import FlowkitError

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


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def is_tty() -> bool:
    return sys.stderr.isatty()
