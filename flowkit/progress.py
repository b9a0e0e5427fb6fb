"""Progress display on stderr (rich), torch-free: the training loops, the bench and
``flowkit score`` (with either backend) share it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["progress_bar"]


class _NullProgress:
    def add_task(self, *_: Any, **__: Any) -> int:
        return 0

    def update(self, *_: Any, **__: Any) -> None:
        pass

    def advance(self, *_: Any, **__: Any) -> None:
        pass

    def remove_task(self, *_: Any) -> None:
        pass


@contextmanager
def progress_bar(
    enabled: bool = True, progress: Any = None, header: Callable[[], Any] | None = None
) -> Iterator[Any]:
    """A rich progress display on stderr (or a silent stand-in, or the one given).

    ``header`` returns a renderable drawn above the bars (the bench's live table). Where
    stderr is no terminal, bars without a header are left out (a transient bar would leave
    blank lines in a log).
    """
    if progress is not None:
        yield progress
        return
    if not enabled:
        yield _NullProgress()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True, markup=False, highlight=False)
    if header is None and not console.is_terminal:
        # a log file or a pipe: a transient bar would leave only blank lines there
        yield _NullProgress()
        return

    class _Progress(Progress):
        def get_renderables(self) -> Iterator[Any]:
            if header is not None:
                yield header()
            yield self.make_tasks_table(self.tasks)

    with _Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=header is None,
    ) as prog:
        yield prog
