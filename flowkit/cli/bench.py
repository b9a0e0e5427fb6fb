"""``flowkit bench`` and ``flowkit report``."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from flowkit.bench.suite import PROTOCOL_HELP, SHARED_FIELDS, shipped_suites
from flowkit.cli._common import (
    DataRootOpt,
    DeviceOpt,
    DownloadOpt,
    ThreadsOpt,
    config_options,
    err,
    handle_errors,
    int_or_auto,
    out,
    set_threads,
    shown,
    styled,
)
from flowkit.config import grid_axes
from flowkit.errors import ConfigError

Repeat = Optional[list[str]]


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None


class _LiveTable:
    """Mean AUC so far per combination, redrawn as cells finish."""

    def __init__(self) -> None:
        self.auc: dict[str, list[float]] = defaultdict(list)
        self.failed: dict[str, int] = defaultdict(int)
        self.last = ""

    def __call__(self, rec: dict[str, Any]) -> None:
        from flowkit.bench.aggregate import combination_label

        label = combination_label(rec)
        target = rec.get("target_name", rec["config"]["target"])
        if rec["status"] == "ok":
            self.auc[label].append(rec["metrics"]["auc"])
            self.last = f"{shown(label)} on {shown(target)}: AUC {rec['metrics']['auc']:.3f}"
        else:
            self.failed[label] += 1
            self.last = styled(
                f"{shown(label)} on {shown(target)} failed:", "red", rec.get("error", "")[:120]
            )

    def render(self) -> Table:
        table = Table(title="bench (this run)", caption=self.last or None)
        for col in ("combination", "cells", "mean AUC", "failed"):
            table.add_column(col, justify="left" if col == "combination" else "right")
        for label in sorted(set(self.auc) | set(self.failed)):
            v = self.auc.get(label, [])
            table.add_row(
                label,
                str(len(v)),
                f"{sum(v) / len(v):.3f}" if v else "-",
                str(self.failed.get(label, 0)),
            )
        return table


@config_options(*SHARED_FIELDS, overrides=True, axes=True)
@handle_errors
def bench(
    suite: Annotated[
        str,
        typer.Option(help=f"Suite name ({', '.join(shipped_suites())}) or path to a TOML file."),
    ] = "quick",
    dataset: Annotated[
        Optional[str], typer.Option(help="Override the suite's dataset (NAME:key=value,...).")
    ] = None,
    protocol: Annotated[
        Optional[str],
        typer.Option(help=f"Override the suite's protocol: {PROTOCOL_HELP}."),
    ] = None,
    classes: Annotated[
        Optional[str],
        typer.Option(help="Held-out classes, e.g. 0,1,7, or all (default: the suite's)."),
    ] = None,
    data_root: DataRootOpt = None,
    out_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--out", help="Run directory (default runs/<suite>); rerunning on it resumes."
        ),
    ] = None,
    cache: Annotated[
        Optional[Path],
        typer.Option(
            help="Encoder/flow cache directory (default <out>/cache); share it between runs to reuse trained encoders."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    download: DownloadOpt = True,
    retry_failed: Annotated[
        bool, typer.Option(help="Rerun cells that failed in an earlier run.")
    ] = True,
    plots: Annotated[bool, typer.Option(help="Write PNG plots with the report.")] = True,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No live table or progress bars.")
    ] = False,
    executor: Annotated[
        str,
        typer.Option(
            help="Where units (one encoder fit with its flows and scorers) run: auto (on a CPU with 2+ cores, one spawned worker per core, at most one per unit and 16 in all, each on one torch thread or --threads; on CUDA with several GPUs, one worker per GPU; otherwise here), local (here, one at a time), process (--workers spawned processes, cores/N torch threads each) or ray (a Ray cluster at --ray-address, or a local Ray instance with --workers CPUs; pip install 'flowkit[ray]'). Only this process writes --out and the cache."
        ),
    ] = "auto",
    workers: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="Workers for --executor process or ray (default 2, or one per --devices entry); with auto, it means process.",
        ),
    ] = None,
    devices: Annotated[
        Optional[str],
        typer.Option(
            help="One device per worker, e.g. cuda:0,cuda:1 (process; with ray each task gets one GPU)."
        ),
    ] = None,
    ray_address: Annotated[
        Optional[str],
        typer.Option(
            help="Ray cluster to join: auto or HOST:PORT (default: start a local instance)."
        ),
    ] = None,
    **options: Any,
) -> None:
    """Run a benchmark suite (GANomaly protocol), resumably, then write its report.

    Each encoder is trained once per (dataset, held-out class, seed) and cached with its latents; finished cells are appended to <out>/results.jsonl and skipped on rerun.
    """
    from flowkit.bench.report import write_report
    from flowkit.bench.runner import run_suite
    from flowkit.bench.suite import load_suite
    from flowkit.executors import make_executor
    from flowkit.progress import progress_bar

    set_threads(threads)
    device_list = [d.strip() for d in devices.split(",") if d.strip()] if devices else None
    runner = make_executor(executor, workers, device_list, ray_address, threads)
    options["flow_batch_size"] = int_or_auto(options["flow_batch_size"], "--flow-batch-size")
    for axis in grid_axes().values():  # an integer axis comes as "0,1,2"
        if isinstance(options[axis], str):
            options[axis] = _int_list(options[axis], f"--{axis}")
    every_class = classes is not None and classes.strip() == "all"
    s = load_suite(suite).with_overrides(
        dataset=dataset,
        protocol=protocol,
        classes=None if every_class else _int_list(classes, "--classes"),
        **options,
    )
    if every_class:  # as a suite file's classes = "all"
        s = replace(s, classes=None).validate()
    run_dir = out_dir or Path("runs") / s.name
    err.print(
        f"suite {s.name}: {s.dataset} ({s.protocol}), encoders {s.encoders}, flows "
        f"{s.flows}, scorers {s.scorers}, seeds {s.seeds} → {run_dir}"
    )
    live_table = _LiveTable()
    with progress_bar(not quiet, header=live_table.render) as prog:
        store = run_suite(
            s,
            run_dir,
            data_root=data_root,
            download=download,
            device=device,
            cache=cache,
            retry_failed=retry_failed,
            on_cell=live_table,
            progress=None if quiet else prog,
            executor=runner,
        )
    _summary(store.records())
    paths = write_report(run_dir, plots=plots)
    out.print(
        f"report: {paths['markdown']}  ({paths['csv'].name} and "
        f"{sum(1 for k in paths if k not in ('markdown', 'csv'))} plot(s) beside it)"
    )
    failed = [r for r in store.records() if r["status"] != "ok"]
    if failed:
        err.print(
            f"{len(failed)} cell(s) failed; see the report. Rerun the same command to retry them.",
            style="yellow",
        )
        raise typer.Exit(1)


def _summary(records: list[dict[str, Any]]) -> None:
    from flowkit.bench.aggregate import aggregate
    from flowkit.bench.plots import data_name

    aggs = aggregate(records)
    by: dict[tuple[str, str], list[float]] = defaultdict(list)
    for a in aggs:
        by[(a.dataset, a.combination)].append(a.mean())
    table = Table(title="mean ROC AUC over held-out classes / OOD sets")
    for col in ("dataset", "combination", "targets", "mean AUC"):
        table.add_column(col, justify="right" if col in ("targets", "mean AUC") else "left")
    for (ds, combo), vals in sorted(
        by.items(), key=lambda kv: (kv[0][0], -sum(kv[1]) / len(kv[1]))
    ):
        shown = data_name(ds, [r for r in records if r["config"]["dataset"] == ds], False)
        table.add_row(shown, combo, str(len(vals)), f"{sum(vals) / len(vals):.3f}")
    out.print(table)


@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A bench run directory (holding results.jsonl).")],
    plots: Annotated[bool, typer.Option(help="Write PNG plots.")] = True,
) -> None:
    """Write report.md, report.csv and PNG plots for a bench run directory."""
    from flowkit.bench.report import write_report
    from flowkit.bench.store import RunStore

    paths = write_report(run_dir, plots=plots)
    _summary(RunStore(run_dir).records())
    out.print(f"report: {paths['markdown']}")
