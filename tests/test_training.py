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


def test_early_stopping_restores_best_epoch():
    torch.manual_seed(0)
    # Training data unlike validation data: validation NLL worsens while training improves.
    z_train = torch.randn(64, 2) * 0.1
    z_val = torch.randn(64, 2) * 5
    flow = flowkit.create_flow("realnvp", features=2, hidden=16, layers=2, blocks=1)
    hist = fit_flow(flow, z_train, z_val, epochs=200, lr=1e-2, patience=4, device="cpu")
    assert hist.stopped_early and hist.epochs_run < 200
    best = min(hist.val_loss)
    assert hist.val_loss[hist.best_epoch - 1] == best
    with torch.no_grad():
        now = float(-flow.log_prob(z_val).mean() / 2)
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
