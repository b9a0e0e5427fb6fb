"""Speed of every stage against the machine's own measured peak.

Prints, in one run:

- the measured matmul throughput of this machine (fp32, and bf16 where the CPU has it);
- for each stage (encoder training, SSL encoder training, flow training, embedding,
  end-to-end scoring of image files): items per second, the achieved GFLOP/s (FLOPs counted
  with ``torch.utils.flop_counter``) and its share of the measured fp32 peak;
- the same stages with the speed-ups flowkit can use (bf16 autocast, channels-last,
  ``torch.compile``, whose compile time is counted), so that each is kept only where it wins;
- peak memory.

    python benchmarks/perf.py                     # embedded digits, ~2 minutes on 2 cores
    python benchmarks/perf.py --data-root ../shared/data/mnist-dev   # real MNIST
    python benchmarks/perf.py --readme            # also rewrite this machine kind's table in
                                                  # benchmarks/PERF.md (one table per kind)
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/perf.py --readme        # an AVX-512 machine as an AVX2-only one
    python benchmarks/perf.py --device cuda
    python benchmarks/perf.py --defects ../shared/data/mtd-dev   # the defects preset instead:
        # training seconds for the category, scoring images/s of image files with their maps,
        # and peak memory of `flowkit score --maps` at two --batch-size values

The numbers are measurements, not assertions: nothing here fails.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import flowkit
from flowkit.data import leave_one_class_out, load_images, to_float
from flowkit.stages import split_validation
from flowkit.training import (
    cpu_flags,
    embed,
    fit_encoder,
    fit_flow,
    resolve_device,
    resolve_flow_batch_size,
)

TABLES = Path(__file__).resolve().parent / "PERF.md"
# one table per machine kind: <!-- perf:begin KIND --> ... <!-- perf:end KIND -->
BEGIN, END = "<!-- perf:begin {} -->", "<!-- perf:end {} -->"
EMULATION = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _rate(fn: Callable[[], object], flops: float, dev: torch.device, seconds: float) -> float:
    for _ in range(3):
        fn()
    _sync(dev)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        reps += 1
    _sync(dev)
    return flops * reps / (time.perf_counter() - start) / 1e9


def _gemm_rates(
    dev: torch.device, dtype: torch.dtype, n: int, seconds: float
) -> tuple[float, float]:
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    blas = _rate(lambda: a @ b, 2 * n**3, dev, seconds)
    if dev.type != "cpu":
        return blas, float("nan")
    side = 32  # n rows of pixels: (n / side²) images of side × side
    x = torch.randn(max(n // side**2, 1), n, side, side).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1).to(dtype).contiguous(memory_format=torch.channels_last)
    rows = x.shape[0] * side * side
    onednn = _rate(lambda: torch.nn.functional.conv2d(x, w), 2 * rows * n * n, dev, seconds)
    return blas, onednn


def matmul_peak(
    dev: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048), seconds=1.5
) -> tuple[float, float]:
    """Sustained GFLOP/s of n×n matmuls in ``dtype`` through each GEMM library torch uses,
    the best over ``sizes``: ``(BLAS, oneDNN)``. ``torch.mm`` runs on the BLAS (MKL);
    convolutions run on oneDNN, measured as a 1×1 convolution of the same size (a GEMM in
    NHWC; NaN off CPU). They differ: MKL does not use AVX-512 on AMD CPUs, oneDNN does. The
    machine's practical peak is the better of the two."""
    rates = [_gemm_rates(dev, dtype, n, seconds) for n in sizes]
    return max(r[0] for r in rates), max((r[1] for r in rates), key=_or_zero)


def _or_zero(x: float) -> float:
    return 0.0 if x != x else x


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> str:
    """What torch runs on here: its CPU capability (the widest vector kernels it dispatches
    to), AMX / AVX-512 BF16 (what ``precision="auto"`` turns bf16 on for), and the BLAS and
    oneDNN libraries of the build."""
    import re

    from flowkit.training import fast_bf16

    flags = cpu_flags()
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    onednn = re.search(r"MKL-DNN v([\d.]+)", config)
    return (
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}; "
        f"AMX {'yes' if 'amx_bf16' in flags else 'no'}, AVX-512 BF16 "
        f"{'yes' if 'avx512_bf16' in flags else 'no'} (so precision auto trains the encoder in "
        f"{'bf16' if fast_bf16(torch.device('cpu')) else 'fp32'}); BLAS "
        f"{blas.group(1) if blas else '?'}, oneDNN {onednn.group(1) if onednn else '?'}"
        f"{'' if torch.backends.mkldnn.is_available() else ' (unavailable)'}"
    )


def machine_kind(dev: torch.device) -> str:
    """The kind of machine a table comes from, as its README block is keyed: the device type
    and torch's CPU capability, with AMX / AVX-512 BF16, and "emulated" where environment
    variables narrow the instruction sets torch, oneDNN or MKL use (an AVX-512 machine run
    as an AVX2-only one: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
    MKL_ENABLE_INSTRUCTIONS=AVX2``)."""
    if dev.type == "cuda":
        return "cuda " + torch.cuda.get_device_name(dev).replace(" ", "-")
    flags = cpu_flags()
    cap = torch.backends.cpu.get_cpu_capability()
    if cap.startswith("AVX512"):
        cap += "+AMX" if "amx_bf16" in flags else "+BF16" if "avx512_bf16" in flags else ""
    if any(os.environ.get(v) for v in EMULATION):
        cap += "-emulated"
    return f"cpu {cap}"


def write_readme(kind: str, text: str) -> None:
    """Replace this machine kind's table in PERF.md, or add it after the last one."""
    doc = TABLES.read_text()
    begin, end = BEGIN.format(kind), END.format(kind)
    note = "<!-- written by `python benchmarks/perf.py --readme`; do not edit -->"
    block = f"{begin}\n{note}\n{text}\n{end}"
    if begin in doc:
        doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        last = max(m.end() for m in re.finditer(r"<!-- perf:end [^>]*-->", doc))
        doc = doc[:last] + "\n\n" + block + doc[last:]
    TABLES.write_text(doc)


def flops_of(fn: Callable[[], object]) -> float:
    """FLOPs of one call (forward and, if ``fn`` calls it, backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@dataclass
class Row:
    stage: str
    variant: str
    per_s: float
    unit: str
    flops_per_item: float
    note: str = ""

    def cells(self, peak: float) -> list[str]:
        gflops = self.per_s * self.flops_per_item / 1e9
        return [
            self.stage,
            self.variant,
            f"{self.per_s:,.0f} {self.unit}/s",
            f"{self.flops_per_item / 1e6:,.2f}",
            f"{gflops:,.1f}",
            f"{100 * gflops / peak:.0f}%",
            self.note,
        ]


def _autocast(dev: torch.device, bf16: bool):
    return torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else nullcontext()


VARIANTS = {
    "fp32": {},
    "channels-last": {"channels_last": True},
    "bf16 + channels-last": {"precision": "bf16", "channels_last": True},
}


def encoder_rows(
    name: str, spec: str, train, val, dev, epochs: int, variants: list[str]
) -> list[Row]:
    rows = []
    for variant in variants:
        torch.manual_seed(0)
        enc = flowkit.create_encoder(spec, in_channels=train.shape[1], image_size=train.shape[2])
        start = time.perf_counter()
        hist = fit_encoder(
            enc, train, val, epochs=epochs, patience=10**6, device=dev, **VARIANTS[variant]
        )
        took = time.perf_counter() - start
        batch = to_float(train[:64].to(dev))
        enc.train()
        per = flops_of(lambda enc=enc, batch=batch: enc.loss(batch).backward()) / len(batch)
        rows.append(
            Row(
                name,
                variant,
                hist.samples_per_second,
                "images",
                per,
                f"{epochs} epochs, {took:.1f} s, val loss {hist.val_loss[-1]:.4f}",
            )
        )
    return rows


def compiled_encoder_row(train, dev, steps: int = 60) -> Row:
    """``torch.compile`` of the training step, its compile time counted."""
    torch.manual_seed(0)
    enc = flowkit.create_encoder("dcgan_ae", in_channels=train.shape[1], image_size=32).to(dev)
    opt = torch.optim.Adam(enc.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    torch._dynamo.reset()
    loss_fn = torch.compile(enc.loss)
    n_full = min(20, len(train) // 64)  # full batches only: no shape change mid-run
    batches = [to_float(train[i * 64 : (i + 1) * 64].to(dev)) for i in range(n_full)]
    start = time.perf_counter()
    # a cold compile, as a fresh run pays it: inductor's on-disk caches would hide it
    with torch._inductor.config.patch(force_disable_caches=True):
        for i in range(steps):
            loss = loss_fn(batches[i % len(batches)])
            opt.zero_grad()
            loss.backward()
            opt.step()
    took = time.perf_counter() - start
    per = flops_of(lambda: enc.loss(batches[0]).backward()) / 64
    return Row(
        "encoder training (dcgan_ae)",
        "torch.compile",
        steps * 64 / took,
        "images",
        per,
        f"{steps} steps incl. a cold compile, {took:.1f} s",
    )


# Flow training settings compared: flowkit's defaults before issue #10 (a 256-wide Real-NVP,
# batch 128, lr 1e-3, weight decay 1e-5), and today's (64 wide, batch "auto", lr 1e-2, weight
# decay 1e-3). Both with the default patience of 20 epochs and budget of 200.
OLD_FLOW = ("realnvp:hidden=256,blocks=2", 128, 1e-3, 1e-5)
NEW_FLOW = ("realnvp", "auto", 1e-2, 1e-3)


def flow_row(
    settings: tuple, z_train, z_val, dev, precision: str, label: str, reference: float | None
) -> tuple[Row, float]:
    """One flow-training row and its best validation NLL/dim. ``reference``: a best NLL to
    reach; the note says when (epoch count × the run's mean epoch time) this run got there."""
    spec, batch_size, lr, weight_decay = settings
    torch.manual_seed(1)
    flow = flowkit.create_flow(spec, features=z_train.shape[1])
    start = time.perf_counter()
    hist = fit_flow(
        flow,
        z_train,
        z_val,
        epochs=200,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        device=dev,
        precision=precision,
    )
    took = time.perf_counter() - start
    size = resolve_flow_batch_size(batch_size, len(z_train))
    z = z_train[:size].to(dev)
    flow.train()
    per = flops_of(lambda: (-flow.log_prob(z).mean()).backward()) / len(z)
    best = min(hist.val_loss)
    note = f"batch {size}; val NLL/dim {best:.4f}, best epoch {hist.best_epoch}/{hist.epochs_run}"
    note += f", {took:.1f} s"
    if reference is not None:
        reached = next((i + 1 for i, v in enumerate(hist.val_loss) if v <= reference), None)
        note += (
            f"; reaches the old default's best NLL at epoch {reached} "
            f"(≈{took * reached / hist.epochs_run:.1f} s)"
            if reached
            else "; never reaches the old default's best NLL"
        )
    return Row("flow training", label, hist.samples_per_second, "latents", per, note), best


def timed(fn: Callable[[], object], dev: torch.device, reps: int = 3) -> float:
    fn()
    _sync(dev)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(dev)
    return (time.perf_counter() - start) / reps


def onnx_scoring_row(det: flowkit.Detector, files: list[Path], per: float, path: str) -> Row:
    """The same files scored by the exported graph with onnxruntime (flowkit score
    --backend onnx): same decoding, same FLOPs, no torch on the scoring path."""
    stage = "scoring image files, end to end"
    try:
        from flowkit.export import export_onnx
        from flowkit.images import read_images
        from flowkit.runtime import OnnxDetector

        export_onnx(det, path)
        onnx_det = OnnxDetector(path, device="cpu", threads=torch.get_num_threads())
    except Exception as exc:  # onnx extra not installed: say so, go on
        return Row(stage, "onnxruntime", float("nan"), "images", per, f"failed: {exc}"[:100])

    def score_files() -> None:
        images, _ = read_images(files, 32, channels=1)
        onnx_det.score(images)

    seconds = timed(score_files, torch.device("cpu"), reps=2)
    note = "exported graph (flowkit export), onnxruntime CPU"
    return Row(stage, "onnxruntime, fp32", len(files) / seconds, "images", per, note)


def _score_rss_mib(model: Path, folder: Path, batch_size: int) -> float:
    """Peak memory (MiB) of a fresh process scoring ``folder`` with its maps (``flowkit
    score --maps``) at ``batch_size``."""
    import subprocess

    code = (
        "import sys, tempfile\n"
        "from typer.testing import CliRunner\n"
        "from flowkit.cli import app\n"
        "with tempfile.TemporaryDirectory() as out:\n"
        "    r = CliRunner().invoke(app, ['score', sys.argv[1], sys.argv[2], '--maps', out,\n"
        "        '--batch-size', sys.argv[3], '-q', '--csv'])\n"
        "    assert r.exit_code == 0, r.output\n"
        # VmHWM, not ru_maxrss: Linux keeps the parent's ru_maxrss across fork and exec
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(int(hwm.split()[1]) / 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(model), str(folder), str(batch_size)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def defects_table(root: Path, dev: torch.device) -> str:
    """The defects preset on a Magnetic Tile Defects tree: fit seconds (the whole category),
    scoring images/s (JPEG files read, decoded, scored, each map resized to its image's size)
    and peak memory of ``flowkit score --maps`` at two batch sizes."""
    from flowkit.config import PRESET_IMAGE_SIZE
    from flowkit.scoring import score_chunk

    size = PRESET_IMAGE_SIZE["defects"]
    data = flowkit.load_dataset("mtd", root=root, image_size=size)
    train = data.images[~data.is_test]
    det = flowkit.Detector.preset("defects", device=str(dev))
    start = time.perf_counter()
    det.fit(train)
    fit_s = time.perf_counter() - start
    files = [Path(p) for p, t in zip(data.paths or [], data.is_test.tolist(), strict=True) if t]
    start = time.perf_counter()
    for i in range(0, len(files), 32):
        score_chunk(det, files[i : i + 32], maps=True)
    score_rate = len(files) / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        model = det.save(Path(tmp) / "defects.flowkit")
        free = root / "MT_Free"
        rss = {b: _score_rss_mib(model, free, b) for b in (16, 64)}
    flow_s = det.history_["flow"]["seconds"]
    return "\n".join(
        [
            f"**Defects preset** (`{det.encoder}` + `{det.flow}` / `{det.scorer}`, {size} px). "
            f"Machine: {cpu_name()} ({cpu_features()}), device {dev}, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; data: "
            f"Magnetic Tile Defects ({root}), {len(train)} training images, {len(files)} test "
            "image files.",
            "",
            "| what | figure |",
            "|---|---|",
            f"| training, the whole category (embed + density + calibration) | {fit_s:.1f} s "
            f"(density {flow_s:.1f} s) |",
            f"| scoring image files with their maps (decode, score, resize each map) | "
            f"{score_rate:.1f} images/s |",
            f"| peak memory of `flowkit score --maps`, --batch-size 16 / 64 (MT_Free, "
            f"{len(list(free.rglob('*.jpg')))} files) | {rss[16]:,.0f} / {rss[64]:,.0f} MiB |",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-root", default=None, help="MNIST root (default: embedded digits)")
    ap.add_argument("--epochs-encoder", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--readme", action="store_true", help="rewrite this machine kind's table in PERF.md"
    )
    ap.add_argument(
        "--defects",
        default=None,
        metavar="MTD_ROOT",
        help="measure the defects preset on Magnetic Tile Defects (native layout) instead",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    dev = resolve_device(args.device)
    if args.defects:
        text = defects_table(Path(args.defects), dev)
        print(text)
        if args.readme:
            write_readme(f"{machine_kind(dev)}, defects preset", text)
        return
    if args.data_root:
        data = flowkit.load_dataset("mnist", root=args.data_root, download=False)
        what = f"real MNIST ({args.data_root})"
    else:
        data = flowkit.load_dataset("digits")
        what = "embedded scikit-learn digits"
    split = leave_one_class_out(data, 1, seed=0)
    det = flowkit.Detector(device=str(dev))
    train, val = split_validation(split.train.images, det.val_fraction, det.seed)
    cpu_bf16 = dev.type == "cpu" and torch.backends.mkldnn.is_available()
    fp32_libs = matmul_peak(dev, torch.float32)
    nan = (float("nan"), float("nan"))
    bf16_libs = matmul_peak(dev, torch.bfloat16) if (dev.type == "cuda" or cpu_bf16) else nan
    fp32, bf16 = max(fp32_libs, key=_or_zero), max(bf16_libs, key=_or_zero)
    kind = machine_kind(dev)
    emulated = ", ".join(f"{v}={os.environ[v]}" for v in EMULATION if os.environ.get(v))
    lines = [
        f"**Machine kind `{kind}`**"
        + (f" (emulated with {emulated}; the clock and caches stay the host's)" if emulated else "")
        + f". Machine: {cpu_name()} ({cpu_features()}), device {dev}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; data: {what}, "
        f"32×32, {len(train)} training images. Measured matmul peak (the better of BLAS "
        f"`torch.mm` and oneDNN, n×n for n = 1024 and 2048): fp32 {fp32:,.0f} GFLOP/s "
        f"(BLAS {fp32_libs[0]:,.0f}, "
        f"oneDNN {fp32_libs[1]:,.0f}), bf16 {bf16:,.0f} GFLOP/s (BLAS {bf16_libs[0]:,.0f}, "
        f"oneDNN {bf16_libs[1]:,.0f}). Shares below are of the fp32 peak.",
        "",
    ]
    rows = encoder_rows(
        "encoder training (dcgan_ae)",
        "dcgan_ae",
        train,
        val,
        dev,
        args.epochs_encoder,
        list(VARIANTS),
    )
    compiled_at = len(rows)  # its row goes here; it runs last (below)
    rows += encoder_rows(
        "SSL encoder training (simclr)",
        "simclr",
        train,
        val,
        dev,
        args.epochs_encoder,
        ["fp32", "bf16 + channels-last"],
    )

    torch.manual_seed(0)
    enc = flowkit.create_encoder("dcgan_ae", in_channels=1, image_size=32)
    fit_encoder(enc, train, val, epochs=args.epochs_encoder, patience=10**6, device=dev)
    batch = to_float(train[:256].to(dev))
    per = flops_of(lambda: enc.eval().encode(batch)) / len(batch)
    for label, prec, nhwc in (
        ("fp32, NCHW", "fp32", False),
        ("fp32, channels-last (default on CPU)", "fp32", None),
        ("bf16, channels-last", "bf16", None),
    ):
        seconds = timed(
            lambda p=prec, c=nhwc: embed(enc, train, device=dev, precision=p, channels_last=c),
            dev,
        )
        rows.append(Row("embedding (dcgan_ae)", label, len(train) / seconds, "images", per))

    z_train, z_val = embed(enc, train, device=dev), embed(enc, val, device=dev)
    pipe = flowkit.preprocess.LatentPipeline("standardize", in_dim=z_train.shape[1]).fit(z_train)
    zt, zv = pipe(z_train), pipe(z_val)
    row, old_best = flow_row(OLD_FLOW, zt, zv, dev, "fp32", "before #10: 256 wide, fp32", None)
    rows.append(row)
    rows.append(flow_row(NEW_FLOW, zt, zv, dev, "fp32", "default: 64 wide, fp32", old_best)[0])
    wide = (NEW_FLOW[0], 1024, *NEW_FLOW[2:])
    label = "default at ≥ 4,096 latents (auto = 1024), fp32"  # a full MNIST class's size
    rows.append(flow_row(wide, zt, zv, dev, "fp32", label, old_best)[0])
    rows.append(flow_row(NEW_FLOW, zt, zv, dev, "bf16", "default, bf16", old_best)[0])

    det = flowkit.Detector(epochs_encoder=args.epochs_encoder, epochs_flow=5, device=str(dev))
    det.fit(train[:1000])
    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        n = min(2000, len(split.test))
        for i in range(n):
            Image.fromarray(split.test.images[i, 0].numpy()).save(f"{tmp}/{i:05d}.png")
        files = sorted(Path(tmp).glob("*.png"))

        def score_files() -> None:
            images, _ = load_images(files, 32, channels=1)
            det.score(images)

        seconds = timed(score_files, dev, reps=2)
        images, _ = load_images(files[:256], 32, channels=1)
        per = flops_of(lambda: det.score(images)) / len(images)
        rows.append(
            Row(
                "scoring image files, end to end",
                "PyTorch, fp32",
                n / seconds,
                "images",
                per,
                "PNG decode + encoder + flow + scorer",
            )
        )
        rows.append(onnx_scoring_row(det, files, per, f"{tmp}/model.onnx"))
    # torch.compile last: its compile workers and dynamo state must not slow the rows above
    try:
        compiled = compiled_encoder_row(train, dev)
    except Exception as exc:  # no C++ compiler, an unsupported backend: say so, go on
        note = f"failed: {type(exc).__name__}: {str(exc)[:80]}"
        compiled = Row("encoder training (dcgan_ae)", "torch.compile", math.nan, "images", 0, note)
    rows.insert(compiled_at, compiled)
    header = ["stage", "variant", "throughput", "MFLOP/item", "GFLOP/s", "of fp32 peak", "notes"]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(r.cells(fp32)) + " |" for r in rows]
    lines += table + ["", f"Peak process memory (RSS): {peak_rss_mib():,.0f} MiB."]
    text = "\n".join(lines)
    print(text)
    if args.readme:
        write_readme(kind, text)


if __name__ == "__main__":
    main()
