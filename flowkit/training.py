"""The generic two-stage runner: plain torch loops shared by every encoder and flow.

Stage 1 (:func:`fit_encoder`) trains a trainable encoder on its own ``loss``; :func:`embed`
computes latents once, in eval mode with gradients off; stage 2 (:func:`fit_flow`) fits a flow
to (preprocessed) latents by maximum likelihood. Both stages select their best epoch on a
validation split of the *normal training data* and stop early when it stops improving.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from flowkit.data.base import to_float
from flowkit.encoders.base import is_trainable
from flowkit.errors import ConfigError, DataError, TrainingDivergedError
from flowkit.flows.base import check_log_prob, flow_capabilities, initialize_flow
from flowkit.progress import progress_bar

__all__ = [
    "History",
    "resolve_device",
    "seed_everything",
    "fit_encoder",
    "embed",
    "fit_flow",
    "progress_bar",
]

MAX_RESTARTS = 3  # learning-rate cuts tried after a non-finite loss before giving up


@dataclass
class History:
    """What a training stage did, kept with the model and in bench results."""

    stage: str
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    max_epochs: int = 0
    stopped_early: bool = False
    restarts: int = 0
    seconds: float = 0.0
    samples_per_second: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else as given (validated)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _batches(
    n: int, batch_size: int, generator: torch.Generator | None, drop_last: bool = False
) -> list[torch.Tensor]:
    """Index batches over ``n`` items, shuffled by ``generator`` (if given). ``drop_last``
    leaves out the remainder (a different one each shuffled epoch) where there is at least
    one full batch: a small last batch costs a whole step's overhead for little data."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    if drop_last and n >= batch_size:
        order = order[: n - n % batch_size]
    return list(order.split(batch_size))


@dataclass
class _Optimisation:
    """The optimiser state a training loop carries between epochs."""

    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    sched: Any
    clip_norm: float


def _train_epoch(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    train: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    generator: torch.Generator,
    optim: _Optimisation,
    drop_last: bool = False,
) -> tuple[float, int, bool]:
    """One pass over ``train``: ``(mean loss, samples seen, diverged)``."""
    model.train()
    total, count = 0.0, 0
    for idx in _batches(len(train), batch_size, generator, drop_last):
        if len(idx) < 2:
            continue  # BatchNorm cannot use a batch of one (the last batch's remainder)
        loss = loss_fn(prepare(train[idx]))
        if not torch.isfinite(loss):
            return math.nan, count, True
        optim.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(optim.params, optim.clip_norm, foreach=True)
        optim.opt.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1), count, False


def _restart(
    stage: str, epoch: int, hist: History, model: nn.Module, best_state: Any, optim: _Optimisation
) -> None:
    """After a non-finite loss: restore the best weights and cut the learning rate tenfold,
    or give up after :data:`MAX_RESTARTS` tries."""
    hist.restarts += 1
    if hist.restarts > MAX_RESTARTS:
        raise TrainingDivergedError(
            stage,
            epoch + 1,
            f"the loss became non-finite {hist.restarts} times despite gradient clipping "
            f"and learning-rate cuts down to {optim.opt.param_groups[0]['lr']:.2g}; check the "
            "input for outliers or lower the learning rate",
        )
    model.load_state_dict(best_state)
    for group in optim.opt.param_groups:
        group["lr"] *= 0.1
    optim.opt.state.clear()


def _train_loop(
    stage: str,
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    train: torch.Tensor,
    val: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    patience: int,
    clip_norm: float,
    generator: torch.Generator,
    progress: Any,
    drop_last: bool = False,
    min_delta: float = 0.0,
    evaluate_start: bool = False,
) -> History:
    """Minibatch Adam with early stopping on validation loss, LR cut on plateau, and
    recovery from non-finite losses (restore best weights, cut the LR, retry).

    Training stops after ``patience`` epochs without a gain of more than ``min_delta``
    (absolute) over the loss that last reset the count; the weights kept are those of the
    lowest validation loss, however small its gain. With ``evaluate_start`` the weights as
    they come in (a data-dependent initialisation, such as the Gaussian's closed-form fit)
    count as epoch 0 and are kept if no epoch beats them.
    """
    if epochs < 1:
        raise ConfigError(f"{stage}: epochs must be >= 1, got {epochs}")
    if len(train) < 2:
        raise DataError(f"{stage}: need at least 2 training samples, got {len(train)}")
    if batch_size < 2:
        raise ConfigError(f"{stage}: batch_size must be >= 2, got {batch_size}")
    hist = History(stage, max_epochs=epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused Adam: one kernel for every parameter instead of a dozen small ops per tensor
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    opt = torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.5, patience=max(1, patience // 3)
    )
    optim = _Optimisation(params, opt, sched, clip_norm)
    best = anchor = math.inf
    best_state = copy.deepcopy(model.state_dict())
    if evaluate_start:  # the initialisation competes: training must beat it to replace it
        start_loss = _evaluate(model, loss_fn, val, prepare, batch_size)
        if math.isfinite(start_loss):
            best = anchor = start_loss
    stale = seen = epoch = 0
    start = time.perf_counter()
    task = progress.add_task(f"{stage}", total=epochs)
    while epoch < epochs:
        train_loss, count, diverged = _train_epoch(
            model, loss_fn, train, prepare, batch_size, generator, optim, drop_last
        )
        seen += count
        val_loss = math.nan if diverged else _evaluate(model, loss_fn, val, prepare, batch_size)
        if not math.isfinite(val_loss):
            _restart(stage, epoch, hist, model, best_state, optim)
            continue  # retry this epoch
        hist.train_loss.append(train_loss)
        hist.val_loss.append(val_loss)
        epoch += 1
        progress.update(
            task, advance=1, description=f"{stage} epoch {epoch}/{epochs} val {val_loss:.4g}"
        )
        sched.step(val_loss)
        tol = 1e-4 * abs(best if math.isfinite(best) else 1.0)
        if val_loss < best - tol:  # the best weights so far, however small the gain
            best, hist.best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        if val_loss < anchor - max(tol, min_delta):  # progress that resets the patience
            anchor, stale = val_loss, 0
        else:
            stale += 1
            if stale >= patience:
                hist.stopped_early = True
                break
    progress.remove_task(task)
    model.load_state_dict(best_state)
    model.eval()
    hist.epochs_run = epoch
    hist.seconds = time.perf_counter() - start
    hist.samples_per_second = seen / hist.seconds if hist.seconds > 0 else 0.0
    return hist


@torch.inference_mode()
def _evaluate(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    data: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
) -> float:
    model.eval()
    total = 0.0
    for idx in _batches(len(data), batch_size * 4, None):
        total += float(loss_fn(prepare(data[idx]))) * len(idx)
    return total / max(len(data), 1)


PRECISIONS = ("fp32", "bf16", "auto")


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bf16 arithmetic faster than fp32: CUDA GPUs that support it,
    CPUs with AMX or AVX-512 BF16 (read from ``/proc/cpuinfo``; elsewhere assumed not) on
    which torch dispatches to AVX-512 kernels (``ATEN_CPU_CAPABILITY=avx2`` makes such a CPU
    behave as an AVX2-only one, bf16 off)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            return frozenset(next((line for line in fh if line.startswith("flags")), "").split())
    except OSError:
        return frozenset()


def resolve_precision(device: torch.device, precision: str) -> str:
    """``"auto"`` → ``"bf16"`` where :func:`fast_bf16`, else ``"fp32"``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> Callable[[], Any]:
    """A context factory for ``precision``: bf16 autocast on CPU or CUDA, or nothing."""
    if resolve_precision(device, precision) == "fp32":
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def fit_encoder(
    encoder: nn.Module,
    images: torch.Tensor,
    val_images: torch.Tensor,
    *,
    epochs: int = 15,
    batch_size: int = 64,
    lr: float = 2e-4,
    patience: int = 5,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: Any = None,
    verbose: bool = False,
    precision: str = "fp32",
    channels_last: bool = False,
) -> History:
    """Stage 1: train ``encoder`` on its own ``loss`` (DCGAN Adam settings by default).

    ``images`` and ``val_images`` are uint8 ``(N, C, H, W)``; batches are moved to the device
    as uint8 and scaled to ``[-1, 1]`` there, one at a time. Non-trainable encoders return an
    empty history. ``precision="bf16"`` runs the forward pass under bf16 autocast (weights
    and optimiser stay fp32); ``channels_last`` uses the NHWC memory layout.
    """
    if not is_trainable(encoder):
        return History("encoder")
    dev = resolve_device(device)
    encoder.to(dev)
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
    gen = seed_everything(seed)
    cast = autocast(dev, precision)

    def loss(x: torch.Tensor) -> torch.Tensor:
        with cast():
            return encoder.loss(x).float()

    def prepare(b: torch.Tensor) -> torch.Tensor:
        x = to_float(b.to(dev, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    with progress_bar(verbose, progress) as prog:
        hist = _train_loop(
            "encoder",
            encoder,
            loss,
            images,
            val_images,
            prepare,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=0.0,
            betas=(0.5, 0.999),
            patience=patience,
            clip_norm=10.0,
            generator=gen,
            progress=prog,
        )
    if channels_last:  # hand back the usual layout: saved and reloaded models score the same
        encoder.to(memory_format=torch.contiguous_format)
    return hist


def embed(
    encoder: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    channels_last: bool | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Latents ``(N, embed_dim)`` (float32, CPU) of uint8 images, in eval mode.

    ``transform`` maps each batch of float images in ``[-1, 1]`` before the encoder (an
    augmentation: :meth:`flowkit.Detector.embed_augmented`).

    ``channels_last`` runs the encoder in the NHWC memory layout (the same arithmetic in
    another summation order); ``None`` means: on a CPU, for encoders with 2-D convolutions
    (oneDNN's native layout, faster than NCHW there: ``benchmarks/perf.py`` measures both).
    An encoder that cannot run in it (a ``.view`` on its
    activations, say) is run in the usual layout instead. The encoder is handed back in the
    usual layout either way.

    Raises :class:`DataError` naming the images whose latents are not finite.
    """
    dev = resolve_device(device)
    encoder.to(dev).eval()
    if channels_last is None:
        channels_last = dev.type == "cpu" and any(
            isinstance(m, nn.Conv2d) for m in encoder.modules()
        )
    cast = autocast(dev, precision)

    def run(batch: torch.Tensor, nhwc: bool) -> torch.Tensor:
        with torch.inference_mode():
            x = to_float(batch.to(dev))
            if transform is not None:
                x = transform(x)
            if nhwc:
                x = x.contiguous(memory_format=torch.channels_last)
            with cast():
                return encoder.encode(x).float().cpu()

    def layout(fmt: torch.memory_format) -> None:
        # weights converted outside inference mode stay usable for training afterwards
        with torch.inference_mode(False):
            encoder.to(memory_format=fmt)

    parts = []
    if channels_last:
        layout(torch.channels_last)
    try:
        for i in range(0, len(images), batch_size):
            batch = images[i : i + batch_size]
            try:
                parts.append(run(batch, channels_last))
            except RuntimeError:
                if not (channels_last and i == 0):
                    raise
                # the encoder needs NCHW activations: run it as it is
                layout(torch.contiguous_format)
                channels_last = False
                parts.append(run(batch, False))
    finally:
        if channels_last:
            layout(torch.contiguous_format)
    z = torch.cat(parts) if parts else torch.empty(0, encoder.embed_dim)
    bad = (~torch.isfinite(z).all(1)).nonzero().flatten()
    if len(bad):
        raise DataError(
            f"the encoder produced non-finite latents for {len(bad)} image(s) "
            f"(indices {bad[:10].tolist()})"
        )
    return z


FLOW_BATCH_RANGE = (128, 1024)
# Flow training stops once validation NLL has gained no more than this (nats per dimension)
# in ``patience`` epochs: smaller gains change no score ranking we measured, and without it a
# regularised flow creeps on to the epoch budget.
FLOW_MIN_DELTA = 1e-3


def auto_flow_batch_size(n: int) -> int:
    """The flow's minibatch size for ``n`` training latents: the largest power of two at most
    ``n / 4`` (so an epoch has at least four steps), within :data:`FLOW_BATCH_RANGE`.

    A flow step over a few hundred latents costs about what one over a thousand does on a CPU
    (the time goes to per-operation overhead, not arithmetic), so large batches train many
    times faster (``benchmarks/perf.py`` measures flow throughput by batch size).
    """
    low, high = FLOW_BATCH_RANGE
    size = 1 << max(int(n // 4), 1).bit_length() - 1
    return max(low, min(high, size))


def resolve_flow_batch_size(batch_size: int | str, n: int) -> int:
    """``"auto"`` → :func:`auto_flow_batch_size`; an integer ≥ 2 as it is."""
    if batch_size == "auto":
        return auto_flow_batch_size(n)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise ConfigError(f"flow batch_size must be 'auto' or an integer, got {batch_size!r}")
    return batch_size


def fit_flow(
    flow: nn.Module,
    latents: torch.Tensor,
    val_latents: torch.Tensor,
    *,
    epochs: int = 200,
    batch_size: int | str = "auto",
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
    patience: int = 20,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: Any = None,
    verbose: bool = False,
    precision: str = "fp32",
) -> History:
    """Stage 2: maximum likelihood of ``flow`` on (standardized) latents.

    The loss is the mean negative log-likelihood per dimension, so learning rates carry over
    between latent sizes. Non-finite latents are refused before training starts. The latents
    are moved to the device once and batched there, dropping each shuffled epoch's remainder.
    ``batch_size="auto"`` picks it from the number of latents (:func:`auto_flow_batch_size`);
    the L2 weight decay regularises the flow (it overfits a few thousand latents within
    a dozen epochs without it). ``precision="bf16"`` runs the flow's
    networks under bf16 autocast while training (the density itself is evaluated in fp32
    for validation and scoring).
    """
    # a flow may say its size (``features``); otherwise the training latents set it
    declared = flow_capabilities(flow).get("features")
    dim = declared or (latents.shape[1] if latents.ndim == 2 else -1)
    for name, z in (("training", latents), ("validation", val_latents)):
        if z.ndim != 2 or z.shape[1] != dim:
            raise DataError(f"{name} latents must have shape (N, {dim}), got {tuple(z.shape)}")
        if not bool(torch.isfinite(z).all()):
            raise DataError(f"{name} latents contain NaN or inf values")
    dev = resolve_device(device)
    flow.to(dev)
    gen = seed_everything(seed)
    latents, val_latents = latents.to(dev), val_latents.to(dev)
    initialize_flow(flow, latents)
    check_log_prob(flow, latents[:2])
    if not any(p.requires_grad for p in flow.parameters()):
        # nothing to train (patchknn: its initialize keeps the training patches)
        flow.eval()
        return History("flow")
    cast = autocast(dev, precision)

    def nll(z: torch.Tensor) -> torch.Tensor:
        if not flow.training:  # validation: the exact fp32 density
            return -flow.log_prob(z).mean() / dim
        with cast():
            return -flow.log_prob(z).float().mean() / dim

    with progress_bar(verbose, progress) as prog:
        return _train_loop(
            "flow",
            flow,
            nll,
            latents,
            val_latents,
            lambda b: b,
            epochs=epochs,
            batch_size=resolve_flow_batch_size(batch_size, len(latents)),
            lr=lr,
            weight_decay=weight_decay,
            betas=(0.9, 0.999),
            patience=patience,
            clip_norm=5.0,
            generator=gen,
            progress=prog,
            drop_last=True,
            min_delta=FLOW_MIN_DELTA,
            evaluate_start=True,
        )
