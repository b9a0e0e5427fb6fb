from __future__ import annotations

import pytest
import torch
from torch import nn

import flowkit
from flowkit.encoders.base import Encoder
from flowkit.errors import DataError, TrainingDivergedError
from flowkit.training import embed, fit_encoder, fit_flow


class ExplodingEncoder(Encoder):
    """A trainable encoder whose loss is NaN whatever the learning rate."""

    def __init__(self):
        super().__init__()
        self.embed_dim, self.input_shape = 2, (1, 8, 8)
        self.lin = nn.Linear(64, 2)

    def encode(self, x):
        return self.lin(x.flatten(1))

    def loss(self, x):
        return self.encode(x).sum() * float("nan")


class NaNEncoder(ExplodingEncoder):
    trainable = False

    def encode(self, x):
        z = self.lin(x.flatten(1))
        z[0, 0] = float("nan")
        return z


def test_diverging_encoder_stops_with_stage_and_epoch():
    images = torch.randint(0, 255, (20, 1, 8, 8), dtype=torch.uint8)
    with pytest.raises(TrainingDivergedError, match="encoder training diverged at epoch 1") as info:
        fit_encoder(ExplodingEncoder(), images, images[:4], epochs=3, device="cpu")
    assert info.value.stage == "encoder" and info.value.epoch == 1


def test_flow_recovers_from_a_too_large_learning_rate():
    torch.manual_seed(0)
    z = torch.randn(256, 4) * 3
    flow = flowkit.create_flow("realnvp", features=4, hidden=16, layers=2, blocks=1)
    hist = fit_flow(flow, z[:200], z[200:], epochs=5, lr=1e4, device="cpu")
    assert hist.restarts >= 1, "the learning rate never made the loss non-finite: no test"
    assert all(torch.isfinite(torch.tensor(hist.val_loss)))
    assert hist.epochs_run == 5


def test_nan_latents_are_refused():
    z = torch.randn(10, 3)
    z[4, 1] = float("nan")
    flow = flowkit.create_flow("gaussian", features=3)
    with pytest.raises(DataError, match="training latents contain NaN"):
        fit_flow(flow, z, torch.randn(5, 3), device="cpu")
    with pytest.raises(DataError, match=r"shape \(N, 3\)"):
        fit_flow(flow, torch.randn(5, 2), torch.randn(5, 3), device="cpu")


def test_embed_names_images_with_non_finite_latents():
    images = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(DataError, match=r"non-finite latents for 1 image\(s\) \(indices \[0\]\)"):
        embed(NaNEncoder(), images, device="cpu")


class ViewEncoder(Encoder):
    """A conv encoder that flattens with ``.view``, which NHWC activations refuse."""

    trainable = False

    def __init__(self):
        super().__init__()
        self.embed_dim, self.input_shape = 4, (1, 8, 8)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.lin = nn.Linear(128, 4)

    def encode(self, x):
        h = self.conv(x)
        return self.lin(h.view(h.shape[0], -1))


def test_embed_runs_conv_encoders_channels_last_with_the_same_latents():
    torch.manual_seed(0)
    enc = flowkit.create_encoder("dcgan_ae:width=8,latent_dim=6", in_channels=1, image_size=32)
    images = torch.randint(0, 255, (70, 1, 32, 32), dtype=torch.uint8)
    nchw = embed(enc, images, batch_size=32, device="cpu", channels_last=False)
    nhwc = embed(enc, images, batch_size=32, device="cpu")  # the CPU default for conv encoders
    torch.testing.assert_close(nhwc, nchw, rtol=1e-4, atol=1e-5)
    # handed back in the usual layout, with weights that can still be trained
    conv = next(m for m in enc.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous() and not conv.weight.is_inference()
    hist = fit_encoder(enc, images[:40], images[40:], epochs=1, device="cpu")
    assert hist.epochs_run == 1


def test_embed_falls_back_to_nchw_for_encoders_that_need_it():
    enc = ViewEncoder()
    images = torch.randint(0, 255, (5, 1, 8, 8), dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="view"):  # the encoder really refuses NHWC
        with torch.no_grad():
            enc.to(memory_format=torch.channels_last)
            enc.encode(torch.zeros(2, 1, 8, 8).contiguous(memory_format=torch.channels_last))
    enc.to(memory_format=torch.contiguous_format)
    z = embed(enc, images, batch_size=2, device="cpu")
    torch.testing.assert_close(z, embed(enc, images, device="cpu", channels_last=False))
    assert enc.conv.weight.is_contiguous()


def test_early_stopping_restores_best_epoch():
    torch.manual_seed(0)
    # Training data unlike validation data: validation NLL worsens while training improves.
    z_train = torch.randn(64, 2) * 0.1
    z_val = torch.randn(64, 2) * 5
    flow = flowkit.create_flow("realnvp", features=2, hidden=16, layers=2, blocks=1)
    with torch.no_grad():
        start = float(-flow.log_prob(z_val).mean() / 2)
    hist = fit_flow(flow, z_train, z_val, epochs=200, lr=1e-2, patience=4, device="cpu")
    assert hist.stopped_early and hist.epochs_run < 200
    # the initialisation competes as epoch 0: every epoch was worse, so it is what is kept
    best = min([start, *hist.val_loss])
    assert best == start and hist.best_epoch == 0
    with torch.no_grad():
        now = float(-flow.log_prob(z_val).mean() / 2)
    assert now == pytest.approx(best, rel=1e-4)


def test_early_stopping_keeps_the_best_epoch_after_training_helped():
    torch.manual_seed(0)
    z = torch.randn(400, 2) @ torch.tensor([[2.0, 0.0], [1.5, 0.3]])
    flow = flowkit.create_flow("realnvp", features=2, hidden=16, layers=2, blocks=1)
    hist = fit_flow(flow, z[:300], z[300:], epochs=40, lr=1e-2, patience=5, device="cpu")
    assert hist.best_epoch >= 1
    best = min(hist.val_loss)
    assert hist.val_loss[hist.best_epoch - 1] == best
    with torch.no_grad():
        now = float(-flow.log_prob(z[300:]).mean() / 2)
    assert now == pytest.approx(best, rel=1e-4)


def test_bf16_training_scores_in_fp32_and_reloads_identically(fake_split, tmp_path):
    import numpy as np

    from flowkit import Detector

    from .conftest import TINY

    det = Detector(**{**TINY, "precision": "bf16"}).fit(fake_split.train)
    x = fake_split.test.images
    scores = det.anomaly_score(x)
    assert np.isfinite(scores).all() and scores.dtype == np.float64
    # the encoder is handed back in the usual memory layout; a reloaded model scores the same
    conv = next(m for m in det.encoder_.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()
    again = Detector.load(det.save(tmp_path / "b.flowkit"), device="cpu")
    np.testing.assert_array_equal(again.anomaly_score(x), scores)
    with pytest.raises(flowkit.ConfigError, match="precision must be one of"):
        Detector(**{**TINY, "precision": "fp8"}).fit(fake_split.train)


def test_auto_precision_picks_bf16_only_where_it_is_fast(monkeypatch):
    from flowkit import training

    cpu = torch.device("cpu")
    monkeypatch.setattr(training, "fast_bf16", lambda device: False)
    assert training.resolve_precision(cpu, "auto") == "fp32"
    monkeypatch.setattr(training, "fast_bf16", lambda device: True)
    assert training.resolve_precision(cpu, "auto") == "bf16"
    assert training.resolve_precision(cpu, "fp32") == "fp32"
    with pytest.raises(flowkit.ConfigError, match="precision must be one of"):
        training.resolve_precision(cpu, "half")


@pytest.mark.parametrize(
    ("flags", "capability", "fast"),
    [
        ("fpu avx2 avx512f avx512_bf16", "AVX512", True),
        ("fpu avx2 amx_bf16 amx_tile", "AVX512", True),
        ("fpu avx2 avx512f", "AVX512", False),  # AVX-512 without bf16
        ("fpu avx2 avx512_bf16", "AVX2", False),  # ATEN_CPU_CAPABILITY=avx2: as an AVX2 CPU
        ("fpu avx2", "AVX2", False),
    ],
)
def test_fast_bf16_reads_the_cpus_flags_and_torchs_dispatch(
    monkeypatch, tmp_path, flags, capability, fast
):
    import builtins

    from flowkit import training

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        return real_open(info if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert training.fast_bf16(torch.device("cpu")) is fast
    assert training.resolve_precision(torch.device("cpu"), "auto") == ("bf16" if fast else "fp32")


@pytest.mark.parametrize(
    ("n", "size"),
    [(10, 128), (600, 128), (1_100, 256), (3_240, 512), (6_500, 1024), (50_000, 1024)],
)
def test_auto_flow_batch_size_keeps_four_steps_per_epoch_within_range(n, size):
    from flowkit.training import auto_flow_batch_size

    assert auto_flow_batch_size(n) == size


def test_flow_batch_size_is_auto_or_an_integer():
    from flowkit.errors import ConfigError
    from flowkit.training import resolve_flow_batch_size

    assert resolve_flow_batch_size("auto", 3_240) == 512
    assert resolve_flow_batch_size(64, 3_240) == 64
    with pytest.raises(ConfigError, match="'auto' or an integer"):
        resolve_flow_batch_size("big", 100)
    with pytest.raises(ConfigError, match="flow_batch_size"):
        flowkit.Detector(flow_batch_size="big").check_config()


def test_flow_epochs_drop_the_remainder_batch():
    """Flow epochs are full batches only (the shuffled remainder is left to other epochs):
    a step over a few latents costs a full step's overhead."""
    from flowkit.training import _batches

    gen = torch.Generator().manual_seed(0)
    sizes = [len(b) for b in _batches(1_000, 256, gen, drop_last=True)]
    assert sizes == [256, 256, 256]
    assert [len(b) for b in _batches(1_000, 256, gen)] == [256, 256, 256, 232]
    assert [len(b) for b in _batches(100, 256, gen, drop_last=True)] == [100]  # no full batch
    torch.manual_seed(0)
    z = torch.randn(300, 2)
    hist = fit_flow(
        flowkit.create_flow("gaussian", features=2),
        z,
        z[:50],
        epochs=3,
        batch_size=128,
        patience=10,
        device="cpu",
    )
    assert hist.epochs_run == 3
    assert round(hist.samples_per_second * hist.seconds) == 3 * 256  # 2 full batches per epoch


def test_patience_counts_only_gains_above_min_delta():
    """A loss that creeps down forever: without min_delta training runs to the budget, with it
    training stops after ``patience`` epochs; either way the lowest-loss weights are kept."""
    from flowkit.progress import progress_bar
    from flowkit.training import _train_loop

    def run(min_delta):
        torch.manual_seed(0)
        model = nn.Linear(1, 1, bias=False)
        nn.init.constant_(model.weight, 0.0)

        def loss_fn(x):  # minimum at weight 1; each epoch gains about 1e-5
            return ((model.weight - 1.0) ** 2).sum() * 1e-3 + x.mean() * 0

        data = torch.zeros(8, 1)
        with progress_bar(False, None) as prog:
            return _train_loop(
                "flow",
                model,
                loss_fn,
                data,
                data,
                lambda b: b,
                epochs=60,
                batch_size=4,
                lr=1e-3,
                weight_decay=0.0,
                betas=(0.9, 0.999),
                patience=5,
                clip_norm=5.0,
                generator=torch.Generator().manual_seed(0),
                progress=prog,
                min_delta=min_delta,
            )

    creeping = run(0.0)
    assert creeping.epochs_run == 60 and not creeping.stopped_early
    stopped = run(1e-3)
    assert stopped.stopped_early and stopped.epochs_run == 1 + 5  # the first epoch, then patience
    assert stopped.best_epoch == 6  # the tiny gains still pick the weights kept
