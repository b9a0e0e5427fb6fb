"""Reports of a bench run: Markdown + CSV tables beside the published figures, and plots."""

from __future__ import annotations

import csv
import io
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from flowkit.artifact import atomic_write_bytes
from flowkit.bench.aggregate import (
    METRICS,
    PROTOCOL_TITLES,
    Aggregate,
    aggregate,
    combination_label,
    published_table,
    target_order,
)
from flowkit.bench.plots import data_name
from flowkit.bench.store import RunStore
from flowkit.errors import ConfigError
from flowkit.metrics import PRO_MAX_FPR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Aggregate", "aggregate", "combination_label", "write_report", "load_reference"]


def reference_path() -> Path:
    """The published figures, shipped inside the package (``flowkit/reference``), so that a
    wheel install's reports show them too."""
    from importlib.resources import files

    return Path(str(files("flowkit") / "reference" / "ganomaly.toml"))


def load_reference() -> dict[str, Any]:
    """Published figures (``flowkit/reference/ganomaly.toml``); empty if not available."""
    path = reference_path()
    if not path.exists():
        return {}
    return tomllib.loads(path.read_text())


def _published_one_class(
    dataset: str, ref: dict[str, Any], targets: list[tuple[str, str]]
) -> list[str]:
    """The published one-class means for this dataset's classes (CIFAR-10), as a line."""
    table, _ = published_table(dataset, ref, targets)
    figures = (table or {}).get("one_class")
    if not figures:
        return []
    shown = ", ".join(f"{name} {auc:.3f}" for name, auc in figures.items())
    return [f"Published one-class mean ROC AUC (full training sets): {shown}.", "",
            f"_{table.get('one_class_note', '')}_", ""]  # fmt: skip


def _reference_columns(
    dataset: str, ref: dict[str, Any], targets: list[tuple[str, str]]
) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """Columns of published figures for this dataset, with markers and notes. A dataset the
    figures are not keyed to (``folder``) gets them when every held-out class's name is one
    of a published table's classes (``airplane`` … ``truck`` for CIFAR-10)."""
    table, index = published_table(dataset, ref, targets)
    if not table:
        return [], {}, []
    if table.get("chart_only"):
        return (
            ["GANomaly (published)"],
            {"GANomaly (published)": ["chart only"] * len(targets)},
            [table.get("note", "")],
        )
    verified = {tuple(v) for v in table.get("verified", [])}
    classes = table["classes"]
    cols: dict[str, list[str]] = {}
    for method in ("GANomaly", "Skip-GANomaly"):
        if method not in table:
            continue
        col = []
        for idx in index:
            if idx is None:
                col.append("-")
                continue
            mark = "" if (method, classes[idx]) in verified else "†"
            col.append(f"{table[method][idx]:.3f}{mark}")
        cols[f"{method} (published)"] = col
    notes = [
        "† unverified: recalled from the Skip-GANomaly paper's CIFAR-10 table "
        "(arXiv:1901.08954) and not yet checked against it; do not cite without checking. "
        "Unmarked cells were checked against a quoted source."
    ]
    return list(cols), cols, notes


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(run_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv`` and PNG plots into ``run_dir``; return their paths.

    Raises :class:`ConfigError` (and creates nothing) for a folder that is not a bench run
    directory or cannot be written.
    """
    store = RunStore(run_dir)
    if not store.results_path.is_file():
        raise ConfigError(f"{run_dir} holds no results.jsonl (not a bench run directory)")
    if not store.records() and (store.root / "report.md").exists():
        raise ConfigError(
            f"{store.results_path} has no readable record (see the warnings above); the "
            "existing report is kept"
        )
    try:
        paths = _write_report(store, plots)
    except OSError as exc:
        raise ConfigError(f"cannot write the report in {run_dir}: {exc}") from None
    from flowkit.plugins import notify

    notify("flowkit_bench_report", run_dir=store.root, paths=paths, records=store.records())
    return paths


def _write_report(store: RunStore, plots: bool) -> dict[str, Path]:
    records = store.records()
    aggs = aggregate(records)
    ref = load_reference()
    failed = [r for r in records if r.get("status") != "ok"]
    ok = [r for r in records if r.get("status") == "ok"]
    suites = sorted({r.get("suite", "?") for r in records})
    md: list[str] = [f"# flowkit bench report: {', '.join(suites) or 'no results'}", ""]
    if ok:
        prov = ok[-1]["provenance"]
        vers = prov.get("versions", {})
        md += [
            f"{len(ok)} cells finished, {len(failed)} failed. flowkit {vers.get('flowkit')}, "
            f"torch {vers.get('torch')}, nflows {vers.get('nflows')}, device "
            f"{prov.get('device')}, git {(prov.get('git_sha') or 'n/a')[:12]}.",
            "",
        ]
    paths: dict[str, Path] = {}
    by_dataset: dict[tuple[str, str], list[Aggregate]] = defaultdict(list)
    for a in aggs:
        by_dataset[(a.dataset, a.protocol)].append(a)
    for (dataset, protocol), group in sorted(by_dataset.items()):
        lines, figures = _dataset_section(store, dataset, protocol, group, records, ref, plots)
        md += lines
        paths.update(figures)
    caveats = ref.get("caveats", {})
    if caveats:
        md += ["## Caveats when comparing", "", caveats.get("text", "").strip(), ""]
        if any(p == "ood" for _, p in by_dataset):
            md += [caveats.get("ood", "").strip(), ""]
    if failed:
        md += ["## Failed cells", ""]
        md += [
            f"- `{r['combination']}` on {r['config']['dataset']} / {r['config']['target']} "
            f"seed {r['config']['seed']}: {r.get('error', '?')}"
            for r in failed
        ]
        md += [""]
    paths["markdown"] = atomic_write_bytes(store.root / "report.md", "\n".join(md).encode())
    paths["csv"] = atomic_write_bytes(store.root / "report.csv", _csv(aggs).encode())
    return paths


def _dataset_section(
    store: RunStore,
    dataset: str,
    protocol: str,
    group: list[Aggregate],
    records: list[dict[str, Any]],
    ref: dict[str, Any],
    plots: bool,
) -> tuple[list[str], dict[str, Path]]:
    """The report's section for one (dataset, protocol): tables, verdicts and figures."""
    md: list[str] = []
    paths: dict[str, Path] = {}
    combos = sorted({a.combination for a in group})
    targets = target_order(group)
    lookup = {(a.target, a.combination): a for a in group}
    title, what = PROTOCOL_TITLES.get(protocol, (protocol, "target"))
    metric_names = ["auc", "aupr_in", "aupr_out", "fpr95"] if protocol == "ood" else ["auc"]
    if any(a.values.get("pixel_auc") for a in group):
        metric_names += ["pixel_auc", "pro"]
    shown = data_name(dataset, [r for r in records if r["config"]["dataset"] == dataset])
    md += [
        f"## {shown}: {title} (ROC AUC, mean ± std over seeds)",
        "",
    ]
    ref_names, ref_cols, ref_notes = (
        _reference_columns(dataset, ref, targets) if protocol == "loo" else ([], {}, [])
    )
    header = [what] + combos + ref_names
    rows = []
    for i, (t, name) in enumerate(targets):
        rows.append(
            [name]
            + [lookup[(t, c)].cell() if (t, c) in lookup else "-" for c in combos]
            + [ref_cols[r][i] for r in ref_names]
        )
    means = {
        c: np.mean([lookup[(t, c)].mean() for t, _ in targets if (t, c) in lookup]) for c in combos
    }
    rows.append(["**mean**"] + [f"**{means[c]:.3f}**" for c in combos] + ["" for _ in ref_names])
    md += [_markdown_table(header, rows), ""]
    md += _published_one_class(dataset, ref, targets) if protocol == "one-class" else []
    titles = {
        "aupr_in": "AUPR-in (in-distribution positive)",
        "aupr_out": "AUPR-out (OOD positive)",
        "fpr95": "FPR on OOD at 95% TPR on in-distribution (lower is better)",
        "pixel_auc": "Pixel ROC AUC (every test pixel pooled)",
        "pro": f"PRO (per-region overlap, area up to {PRO_MAX_FPR:.0%} FPR, normalised)",
    }
    for m in metric_names[1:]:
        rows = [
            [name] + [lookup[(t, c)].cell(m) if (t, c) in lookup else "-" for c in combos]
            for t, name in targets
        ]
        md += [f"{titles[m]}:", "", _markdown_table([what] + combos, rows), ""]
    fair, note = _common_means(targets, dict(zip(combos, combos, strict=True)), lookup)
    best = max(combos, key=lambda c: fair[c])
    md += [f"Best mean AUC on {shown}{note}: **{best}** ({fair[best]:.3f})."]
    if len(combos) > 1:
        order = sorted(combos, key=lambda c: -fair[c])
        ranking = ", ".join(f"{c} {fair[c]:.3f}" for c in order)
        md += [f"Ranking: {ranking}.", "", _seed_noise_verdict(order[:2], fair, records)]
    md += _per_type_table(combos, [r for r in records if r["config"]["dataset"] == dataset])
    md += ["", *_timing_table(combos, records)]
    md += _scorer_verdicts(group, targets, lookup)
    md += [""] + [f"_{n}_" for n in ref_notes if n] + [""]
    if plots:
        from flowkit.bench import plots as plotting

        try:
            paths.update(
                plotting.plot_dataset(
                    store,
                    dataset,
                    protocol,
                    group,
                    records,
                    ref if protocol == "loo" else None,
                )
            )
        except Exception as exc:  # a plot must never lose the tables
            md += [f"(plots failed: {type(exc).__name__}: {exc})", ""]
        for key, p in paths.items():
            if key.startswith(f"{dataset}-{protocol}"):
                md += [f"![{key}]({p.name})", ""]
    return md, paths


def _per_type_table(combos: list[str], records: list[dict[str, Any]]) -> list[str]:
    """Image AUC / pixel AUC / PRO per defect type (first seed, each target), for records
    that carry them (data with masks, models with maps)."""
    typed = [r for r in records if r.get("status") == "ok" and r.get("per_type")]
    if not typed:
        return []
    first = min(r["config"]["seed"] for r in typed)
    cells: dict[tuple[str, str], str] = {}
    kinds: dict[str, None] = {}
    for r in typed:
        if r["config"]["seed"] != first:
            continue
        target = str(r.get("target_name", r["config"]["target"]))
        for kind, m in r["per_type"].items():
            row = kind if target == "all" else f"{target} / {kind}"
            kinds[row] = None
            own = m.get("own_pixel_auc")  # records before 2026-12-07 lack it
            cells[(row, combination_label(r))] = (
                f"{m['auc']:.3f} / {m['pixel_auc']:.3f} / {m['pro']:.3f}"
                + (f" / {own:.3f}" if own is not None else "")
            )
    rows = [[k] + [cells.get((k, c), "-") for c in combos] for k in kinds]
    return [
        "",
        f"Per defect type, image AUC / pixel AUC / PRO (seed {first}; each type's images "
        "against every normal test image) / the median of each image's own pixel AUC (its "
        "defect pixels against its other pixels: where inside an image the map is high):",
        "",
        _markdown_table(["defect type"] + combos, rows),
    ]


SEED_NOISE = 0.01  # one seed's AUC moves by about this much between seeds (measured)


def _seed_noise_verdict(
    top: list[str], fair: dict[str, float], records: list[dict[str, Any]]
) -> str:
    """Whether the winner's lead over the runner-up is beyond seed noise: with one seed, a
    lead under :data:`SEED_NOISE` is not; with several, the lead must exceed the spread of
    either combination's per-seed mean AUC."""
    best, second = top
    gap = fair[best] - fair[second]
    per_seed: dict[str, dict[int, list[float]]] = {best: {}, second: {}}
    for r in records:
        if r.get("status") == "ok" and r["combination"] in per_seed:
            seeds = per_seed[r["combination"]]
            seeds.setdefault(r["config"]["seed"], []).append(r["metrics"]["auc"])
    n_seeds = min(len(v) for v in per_seed.values())
    head = f"**{best}** leads **{second}** by {gap:.3f}"
    if n_seeds < 2:
        if gap < SEED_NOISE:
            return (
                f"{head}, one seed: within seed noise (under {SEED_NOISE}); run "
                "`--seeds 0,1,2` to separate them."
            )
        return f"{head}, one seed: more than the ±{SEED_NOISE} one seed moves."
    spread = max(float(np.std([np.mean(v) for v in per_seed[c].values()], ddof=1)) for c in top)
    beyond = "beyond" if gap > spread else "within"
    return f"{head} over {n_seeds} seeds: {beyond} seed noise (per-seed spread {spread:.3f})."


def _mean(values: list[float], fmt: str) -> str:
    return fmt.format(float(np.mean(values))) if values else "cached"


def _timing_table(combos: list[str], records: list[dict[str, Any]]) -> list[str]:
    """Time per target beside the AUC tables: mean encoder and flow training seconds (cells
    that trained them; cached stages are not counted) and scoring throughput."""
    rows = []
    for c in combos:
        recs = [r for r in records if r.get("status") == "ok" and r["combination"] == c]
        t = [r.get("timings", {}) for r in recs]
        enc = [
            x["encoder_fit_s"] for x in t if "encoder_fit_s" in x and not x.get("encoder_cached")
        ]
        flo = [x["flow_fit_s"] for x in t if "flow_fit_s" in x and not x.get("flow_cached")]
        ips = [x["score_images_per_s"] for x in t if x.get("score_images_per_s")]
        if not (enc or flo or ips):
            continue
        total = (np.mean(enc) if enc else 0.0) + (np.mean(flo) if flo else 0.0)
        rows.append(
            [c, _mean(enc, "{:.0f}"), _mean(flo, "{:.1f}"), f"{total:.0f}", _mean(ips, "{:,.0f}")]
        )
    if not rows:
        return []
    header = ["combination", "encoder s", "flow s", "s per target", "scoring images/s"]
    note = (
        "Time per target (mean over the cells that trained each stage; a stage shared by "
        "several scorers is trained once):"
    )
    return [note, "", _markdown_table(header, rows), ""]


def _common_means(
    targets: list[tuple[str, str]], combos: dict[str, str], lookup: dict[tuple[str, str], Aggregate]
) -> tuple[dict[str, float], str]:
    """Mean AUC per key over the targets every combination has (a fair comparison when a run
    directory holds cells of different grids)."""
    common = [t for t, _ in targets if all((t, c) in lookup for c in combos.values())]
    note = "" if len(common) == len(targets) else f" (over the {len(common)} targets all share)"
    use = common or [t for t, _ in targets]
    means = {
        key: float(np.mean([lookup[(t, c)].mean() for t in use if (t, c) in lookup] or [np.nan]))
        for key, c in combos.items()
    }
    return means, note


def _scorer_verdicts(
    group: list[Aggregate], targets: list[tuple[str, str]], lookup: dict[tuple[str, str], Aggregate]
) -> list[str]:
    """Which scorer wins, per target, when several scorers share an encoder and flow."""
    by_pair: dict[str, dict[str, str]] = defaultdict(dict)
    for a in group:
        pair = f"{a.config['encoder']} + {a.config['flow']} [{a.config['preprocess']}]"
        by_pair[pair][a.config["scorer"]] = a.combination
    lines: list[str] = []
    for pair, combos in sorted(by_pair.items()):
        if len(combos) < 2:
            continue
        lines += ["", f"Scorers compared on {pair} (AUROC; nll is the paper's raw likelihood):", ""]
        wins: dict[str, int] = defaultdict(int)
        for t, name in targets:
            scores = {sc: lookup[(t, c)].mean() for sc, c in combos.items() if (t, c) in lookup}
            if not scores:
                continue
            best = max(scores, key=lambda sc: scores[sc])
            wins[best] += 1
            line = f"- {name}: best **{best}** {scores[best]:.3f}"
            if "nll" in scores and best != "nll":
                nll = scores["nll"]
                state = "below chance" if nll < 0.5 else "weak" if nll < 0.8 else "good"
                line += f" vs nll {nll:.3f} ({state}; {scores[best] - nll:+.3f})"
            lines.append(line)
        means, note = _common_means(targets, combos, lookup)
        top = max(means, key=lambda sc: means[sc])
        ranked = ", ".join(f"{sc} {n}" for sc, n in sorted(wins.items(), key=lambda kv: -kv[1]))
        lines += [
            "",
            f"Winner on average{note}: **{top}** ({means[top]:.3f}); wins per target: {ranked}.",
        ]
    return lines


def _csv(aggs: list[Aggregate]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "dataset",
            "protocol",
            "target",
            "target_name",
            "combination",
            "encoder",
            "preprocess",
            "flow",
            "scorer",
            "encoder_plugin",
            "flow_plugin",
            "n_seeds",
        ]
        + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    )
    for a in sorted(aggs, key=lambda a: (a.dataset, a.protocol, a.combination, a.target)):
        cfg = a.config
        w.writerow(
            [
                a.dataset,
                a.protocol,
                a.target,
                a.target_name,
                a.combination,
                cfg["encoder"],
                cfg["preprocess"],
                cfg["flow"],
                cfg["scorer"],
                a.plugins.get("encoder", ""),
                a.plugins.get("flow", ""),
                len(a.seeds),
            ]
            + [
                f"{v:.5f}" if not math.isnan(v) else ""
                for m in METRICS
                for v in (a.mean(m), a.std(m) if a.values.get(m) else math.nan)
            ]
        )
    return buf.getvalue()
