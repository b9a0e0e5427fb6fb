"""PNG figures of a bench run (matplotlib, headless)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flowkit.artifact import atomic_write_bytes
from flowkit.bench.aggregate import (
    PROTOCOL_TITLES,
    Aggregate,
    combination_label,
    published_table,
    target_order,
)

if TYPE_CHECKING:
    from flowkit.bench.store import RunStore

__all__ = ["plot_dataset"]

MAX_PANELS = 10
#: The figures drawn per combination from its cells' score files (the key part naming each).
FIGURES = ("hist", "extremes", "maps")


def _figure_bytes(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _slug(text: str, limit: int = 60) -> str:
    """A file-name part for ``text``; a long one keeps its head and tail (the encoder and
    the scorer) and ends in a hash of the whole, so combinations that differ only in the
    middle or past a cut keep figures of their own."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in text).strip("-")
    if len(slug) <= limit:
        return slug
    room = limit - 11  # "--" between head and tail, "-" and 8 hex digits at the end
    head, tail = slug[: room // 2].rstrip("-"), slug[-(room - room // 2) :].lstrip("-")
    return f"{head}--{tail}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


DATA_NAMES = {"digits": "embedded scikit-learn digits (8×8, upscaled)"}


def data_name(dataset: str, records: list[dict[str, Any]], describe: bool = True) -> str:
    """The dataset as a reader should see it: with the loaded data's own name where that
    says more (``folder (cifar10-dev)``: which folder a ``folder`` run read), and with
    ``describe`` what an embedded dataset is."""
    name = DATA_NAMES.get(dataset, dataset) if describe else dataset
    own = next((r["data_name"] for r in records if r.get("data_name")), None)
    return f"{name} ({own})" if own and own != dataset.split(":")[0] else name


def data_label(dataset: str, records: list[dict[str, Any]]) -> str:
    """Which data a figure shows: the dataset and how many images each target trained and
    tested on (a development sample and the full set share a dataset name)."""
    name = data_name(dataset, records)
    sizes = next((r["sizes"] for r in records if r.get("sizes")), None)
    if not sizes:
        return f"Data: {name}"
    return f"Data: {name}, {sizes['train']:,} train / {sizes['test']:,} test images"


def plot_dataset(
    store: RunStore,
    dataset: str,
    protocol: str,
    group: list[Aggregate],
    records: list[dict[str, Any]],
    reference: dict[str, Any] | None,
) -> dict[str, Path]:
    """Per-class AUC bars (with published GANomaly figures, from ``reference``: every
    published table, matched to the held-out classes) and likelihood histograms."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    combos = sorted({a.combination for a in group})
    ok = [
        r
        for r in records
        if r.get("status") == "ok"
        and r["config"]["dataset"] == dataset
        and r["config"]["protocol"] == protocol
    ]
    label = data_label(dataset, ok)
    paths = {
        f"{dataset}-{protocol}-auc": _auc_bars(store, dataset, protocol, group, reference, label)
    }
    for combo in combos:
        recs = sorted(
            (r for r in ok if combination_label(r) == combo),
            key=lambda r: (r["config"]["seed"], str(r["config"]["target"])),
        )
        if recs:
            keys = {k: f"{dataset}-{protocol}-{k}-{_slug(combo)}" for k in FIGURES}
            # a figure whose cells' scores are gone (a results folder kept without its
            # scores/) keeps the file an earlier run drew instead of being drawn empty
            scored = [r for r in recs if store.scores_path(r["cell_id"]).exists()]
            drawn = {}
            if scored:
                drawn = {
                    "hist": _histograms(
                        store, dataset, protocol, combo, scored, keys["hist"], label
                    ),
                    "extremes": _extremes(store, combo, scored, keys["extremes"], label),
                    "maps": _map_grid(store, combo, scored[0], keys["maps"], label),
                }
            for kind, key in keys.items():
                kept = store.root / f"{key}.png"
                if drawn.get(kind) is not None or kept.exists():
                    paths[key] = drawn.get(kind) or kept
    return paths


def _extremes(
    store: RunStore, combo: str, recs: list[dict[str, Any]], key: str, data: str
) -> Path | None:
    """The most and the least anomalous test images of each target (first seed), one row
    per target, framed red where the image really is anomalous and green where it is normal:
    what the model flags, for 1- or 3-channel images alike. ``None`` for runs whose score
    files hold no images (written before flowkit kept them)."""
    import matplotlib.pyplot as plt

    first_seed = recs[0]["config"]["seed"]
    rows = []
    for rec in [r for r in recs if r["config"]["seed"] == first_seed][:MAX_PANELS]:
        path = store.scores_path(rec["cell_id"])
        if not path.exists():
            continue
        with np.load(path) as npz:
            if "top_images" not in npz.files:
                continue
            y = npz["is_anomaly"].astype(bool)
            top, bottom = npz["top_images"], npz["bottom_images"]
            flags = list(y[npz["top_index"]]) + list(y[npz["bottom_index"]])
        rows.append((rec, list(top) + list(bottom), flags, len(top)))
    if not rows:
        return None
    k = max(r[3] for r in rows)
    height = 0.78 * len(rows) + 0.7  # room above the grid for the two title lines
    fig, axes = plt.subplots(len(rows), 2 * k, figsize=(0.62 * 2 * k, height), squeeze=False)
    fig.subplots_adjust(top=1 - 0.7 / height, wspace=0.08, hspace=0.15)
    for (rec, images, flags, n), ax_row in zip(rows, axes, strict=True):
        for j, ax in enumerate(ax_row):
            ax.set_xticks([])
            ax.set_yticks([])
            i = j if j < k else n + (j - k)
            if (j < k and j >= n) or (j >= k and j - k >= n) or i >= len(images):
                ax.axis("off")
                continue
            img = np.transpose(images[i], (1, 2, 0))
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            for spine in ax.spines.values():
                spine.set_edgecolor("red" if flags[i] else "green")
                spine.set_linewidth(2)
        target = rec.get("target_name", rec["config"]["target"])
        ax_row[0].set_ylabel(str(target), fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(
        f"{data}. {combo} (seed {first_seed})\nleft: the {k} most anomalous test images, "
        f"right: the {k} least anomalous; red frame = really anomalous, green = normal",
        fontsize=8,
    )
    return atomic_write_bytes(store.root / f"{key}.png", _figure_bytes(fig))


MAP_COLUMNS = 6  # the most and the least anomalous test images shown with their maps, each


def _map_grid(store: RunStore, combo: str, rec: dict[str, Any], key: str, data: str) -> Path | None:
    """Image | mask | anomaly map of the most and least anomalous test images of one cell
    (rows: image, true mask, map on the model's colour scale); ``None`` for cells without
    maps."""
    import matplotlib.pyplot as plt

    from flowkit.heatmaps import heatmap_rgb

    path = store.scores_path(rec["cell_id"])
    if not path.exists():
        return None
    with np.load(path) as npz:
        if "top_maps" not in npz.files:
            return None
        n = min(MAP_COLUMNS // 2, len(npz["top_index"]))
        y = npz["is_anomaly"].astype(bool)
        picks = [(end, i) for end in ("top", "bottom") for i in range(n)]
        images = [npz[f"{end}_images"][i] for end, i in picks]
        maps = [npz[f"{end}_maps"][i].astype(np.float32) for end, i in picks]
        masks = [
            npz[f"{end}_masks"][i][0] if f"{end}_masks" in npz.files else None for end, i in picks
        ]
        flags = [bool(y[npz[f"{end}_index"][i]]) for end, i in picks]
    low = float(np.median(np.concatenate([m.ravel() for m in maps[n:]] or [maps[0].ravel()])))
    high = float(rec.get("pixel_threshold", max(float(m.max()) for m in maps)))
    fig, axes = plt.subplots(3, len(picks), figsize=(1.3 * len(picks), 4.3), squeeze=False)
    for j in range(len(picks)):
        img = np.transpose(images[j], (1, 2, 0))
        panels = (
            (img[..., 0] if img.shape[-1] == 1 else img, "gray"),
            (masks[j] if masks[j] is not None else np.zeros(maps[j].shape), "gray"),
            (heatmap_rgb(maps[j], low, high), None),
        )
        for row, (picture, cmap) in enumerate(panels):
            ax = axes[row][j]
            ax.imshow(picture, cmap=cmap, vmin=0, vmax=255 if row == 0 else 1)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red" if flags[j] else "green")
        axes[0][j].set_title("most" if j < n else "least", fontsize=7)
    for row, name in enumerate(("image", "mask", "map")):
        axes[row][0].set_ylabel(name, fontsize=8)
    import textwrap

    title = (
        f"{data}. {combo} (seed {rec['config']['seed']}): the {n} most and {n} least anomalous "
        "test images, framed red where really anomalous; map: black = the normal median, "
        "mid-scale = the pixel threshold"
    )
    fig.suptitle("\n".join(textwrap.wrap(title, 20 * len(picks))), fontsize=7)
    return atomic_write_bytes(store.root / f"{key}.png", _figure_bytes(fig))


def _auc_bars(
    store: RunStore,
    dataset: str,
    protocol: str,
    group: list[Aggregate],
    reference: dict[str, Any] | None,
    data: str,
) -> Path:
    """Figure 2 style: AUC per held-out class for every combination (and GANomaly)."""
    import matplotlib.pyplot as plt

    targets = target_order(group)
    combos = sorted({a.combination for a in group})
    lookup = {(a.target, a.combination): a for a in group}
    series = [
        (
            c,
            [lookup[(t, c)].mean() if (t, c) in lookup else np.nan for t, _ in targets],
            # no error bar where one seed gives no spread estimate
            [np.nan_to_num(lookup[(t, c)].std()) if (t, c) in lookup else 0.0 for t, _ in targets],
        )
        for c in combos
    ]
    table, index = published_table(dataset, reference or {}, targets)
    if table and not table.get("chart_only") and "GANomaly" in table:
        published = [np.nan if i is None else table["GANomaly"][i] for i in index]
        series.append(("GANomaly (published)", published, [0.0] * len(targets)))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(targets) * max(1, len(series)) / 2), 4))
    width = 0.8 / len(series)
    x = np.arange(len(targets))
    for i, (label, means, stds) in enumerate(series):
        ax.bar(x + i * width - 0.4 + width / 2, means, width, yerr=stds, label=label, capsize=2)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, [name for _, name in targets])
    ax.set_ylim(0, 1)
    ax.set_ylabel("ROC AUC")
    what = PROTOCOL_TITLES.get(protocol, (protocol, "target"))[1]
    ax.set_xlabel(what)
    ax.set_title(f"{data}: AUC per {what}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    return atomic_write_bytes(store.root / f"{dataset}-{protocol}-auc.png", _figure_bytes(fig))


def _histograms(
    store: RunStore,
    dataset: str,
    protocol: str,
    combo: str,
    recs: list[dict[str, Any]],
    key: str,
    data: str,
) -> Path:
    """Figure 1 style: log-likelihood of normal vs anomalous test images, one panel per
    target of the first seed."""
    import matplotlib.pyplot as plt

    first_seed = recs[0]["config"]["seed"]
    recs = [r for r in recs if r["config"]["seed"] == first_seed][:MAX_PANELS]
    cols = min(5, len(recs))
    rows = (len(recs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    raw = recs[0]["config"]["scorer"] in ("nll", "bpd")
    for ax, rec in zip(axes.flat, recs, strict=False):
        with np.load(store.scores_path(rec["cell_id"])) as npz:
            y = npz["is_anomaly"].astype(bool)
            # Figure 1 shows likelihoods; other scorers show their own score.
            lp = npz["log_prob"] if raw else npz["anomaly_score"]
        lo, hi = np.percentile(lp, [1, 99.5])
        bins = np.linspace(lo, hi, 40)
        ax.hist(np.clip(lp[~y], lo, hi), bins, alpha=0.6, density=True, label="normal")
        other = {"loo": "held out", "ood": "OOD", "one-class": "other classes"}.get(
            protocol, "anomalous"
        )
        ax.hist(np.clip(lp[y], lo, hi), bins, alpha=0.6, density=True, label=other)
        target = rec.get("target_name", rec["config"]["target"])
        ax.set_title(f"{target} AUC {rec['metrics']['auc']:.2f}", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(recs) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    # room for the suptitle above the panels' titles: about half an inch, whatever the rows
    fig.subplots_adjust(hspace=0.45, top=1 - 0.5 / (2.4 * rows))
    what = "log-likelihood" if raw else "score"
    fig.suptitle(f"{data}. {what}, {combo} (seed {first_seed})", fontsize=9)
    return atomic_write_bytes(store.root / f"{key}.png", _figure_bytes(fig))
