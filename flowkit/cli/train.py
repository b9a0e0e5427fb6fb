"""``flowkit train`` and ``flowkit score``."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from flowkit.cli._common import (
    DataRootOpt,
    DeviceOpt,
    DownloadOpt,
    PrecisionHelp,
    ThreadsOpt,
    check_output_file,
    err,
    handle_errors,
    out,
    set_threads,
)
from flowkit.errors import ConfigError

EncoderOpt = Annotated[
    str, typer.Option(help="Encoder as NAME:key=value,... (see `flowkit list encoders`).")
]
FlowOpt = Annotated[
    str, typer.Option(help="Flow as NAME:key=value,... (see `flowkit list flows`).")
]


@handle_errors
def train(
    dataset: Annotated[
        str,
        typer.Option(
            help="Dataset as NAME:key=value,... (digits is embedded; folder reads --data-root)."
        ),
    ] = "digits",
    data_root: DataRootOpt = None,
    anomaly_class: Annotated[
        Optional[int],
        typer.Option(
            help="Hold this class out as the anomaly (leave-one-class-out protocol) and report test metrics."
        ),
    ] = None,
    encoder: EncoderOpt = "dcgan_ae",
    flow: FlowOpt = "realnvp",
    scorer: Annotated[
        str, typer.Option(help="Scorer as NAME:key=value,... (higher = more anomalous).")
    ] = "nll",
    preprocess: Annotated[
        str,
        typer.Option(
            "--preprocess",
            "--latent",
            help="Latent preprocessing: standardize, pca:K, l2, none, joined by '+' (--latent is its old name).",
        ),
    ] = "standardize",
    epochs_encoder: Annotated[
        int, typer.Option(help="Maximum encoder epochs (early stopping on validation).")
    ] = 15,
    epochs_flow: Annotated[
        int, typer.Option(help="Maximum flow epochs (early stopping on validation).")
    ] = 200,
    batch_size: Annotated[int, typer.Option(help="Encoder minibatch size (at least 2).")] = 64,
    flow_batch_size: Annotated[int, typer.Option(help="Flow minibatch size (at least 2).")] = 128,
    confidence: Annotated[
        float, typer.Option(help="Threshold = this quantile of normal validation scores.")
    ] = 0.95,
    contamination: Annotated[
        Optional[float], typer.Option(help="Expected anomaly fraction; overrides --confidence.")
    ] = None,
    image_size: Annotated[
        int, typer.Option(min=1, help="Images are resized to this square size.")
    ] = 32,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same model on CPU).")] = 0,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option(help=PrecisionHelp)] = "fp32",
    threads: ThreadsOpt = None,
    download: DownloadOpt = True,
    out_path: Annotated[Path, typer.Option("--out", help="Model file to write.")] = Path(
        "model.flowkit"
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train an encoder + flow detector on normal images and save it as one file.

    Folders in the MVTec AD or normal/ + anomalous/ layout train on their normal training
    part and report test metrics on their labelled test part.
    """
    from flowkit import Detector, load_dataset
    from flowkit.data import labelled_split, leave_one_class_out
    from flowkit.metrics import detection_metrics

    set_threads(threads)
    det = Detector(
        encoder=encoder,
        flow=flow,
        scorer=scorer,
        preprocess=preprocess,
        confidence=confidence,
        contamination=contamination,
        epochs_encoder=epochs_encoder,
        epochs_flow=epochs_flow,
        batch_size=batch_size,
        flow_batch_size=flow_batch_size,
        device=device,
        precision=precision,
        seed=seed,
        verbose=not quiet,
    ).check_config()
    check_output_file(out_path)
    data = load_dataset(
        dataset, root=data_root, split="all", image_size=image_size, download=download
    )
    if data.layout:
        err.print(f"{data.name}: {data.layout}")
    split = None
    if anomaly_class is not None:
        split = leave_one_class_out(data, anomaly_class, seed=seed)
        err.print(
            f"{data.name}: class {data.classes[anomaly_class]!r} held out; {split.describe()}"
        )
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
        scores = det.anomaly_score(split.test)
        m = detection_metrics(split.is_anomaly.numpy(), scores, det.threshold_)
        out.print(f"test ROC AUC {m['auc']:.4f}  AP {m['ap']:.4f}  F1 {m['f1']:.4f}")
    out.print(f"saved {path}")


@handle_errors
def score(
    model: Annotated[
        Path, typer.Argument(help="A model file from `flowkit train` or Detector.save.")
    ],
    paths: Annotated[
        list[Path], typer.Argument(help="Image files or folders (searched recursively).")
    ],
    csv_out: Annotated[
        bool, typer.Option("--csv", help="Write CSV to stdout instead of a table.")
    ] = False,
    skip_unreadable: Annotated[
        bool, typer.Option(help="Warn about unreadable files instead of failing.")
    ] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Score image files: anomaly score, threshold and label (normal / anomaly) per image.

    Images are converted to the model's channels and resized to its size; higher scores are more anomalous.
    """
    from flowkit import Detector
    from flowkit.data import find_images, load_images

    det = Detector.load(model, device=device)
    files = find_images(paths)
    if not files:
        raise ConfigError(f"no image files in {', '.join(map(str, paths))}")
    c, h, _ = det.input_shape_
    images, kept = load_images(files, image_size=h, channels=c, skip_unreadable=skip_unreadable)
    result = det.score(images)
    loglik, scores = result["log_prob"], result["anomaly_score"]
    labels = ["anomaly" if s > det.threshold_ else "normal" for s in scores]
    if csv_out:
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "anomaly_score", "log_likelihood", "threshold", "label"])
        for f, s, ll, lab in zip(kept, scores, loglik, labels, strict=True):
            writer.writerow([str(f), f"{s:.6g}", f"{ll:.6g}", f"{det.threshold_:.6g}", lab])
        return
    table = Table(title=f"{model.name}: scorer {det.scorer_spec_[0]}, higher = more anomalous")
    for col in ("path", "anomaly score", "log-likelihood", "threshold", "label"):
        table.add_column(
            col,
            justify="left" if col == "path" else "right",
            overflow="fold" if col == "path" else "ellipsis",
        )
    for f, s, ll, lab in zip(kept, scores, loglik, labels, strict=True):
        table.add_row(
            str(f),
            f"{s:.4g}",
            f"{ll:.4g}",
            f"{det.threshold_:.4g}",
            f"[red]{lab}[/]" if lab == "anomaly" else lab,
        )
    out.print(table)
    n_anom = labels.count("anomaly")
    err.print(f"{n_anom} of {len(labels)} image(s) flagged as anomalies")
