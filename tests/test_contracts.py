"""Minimal contracts checked at the door, and the checkers run over every built-in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flowkit
from flowkit import Detector
from flowkit.errors import ConfigError, DataError
from flowkit.testing import check_dataset, check_scorer, registered

from .conftest import TINY
from .test_data import write_cifar10, write_mnist, write_svhn
from .test_defect_data import write_mtd
from .test_plugins import _module

PROBE = """
import torch
from torch import nn
from flowkit import hookimpl

class ProbeFlow(nn.Module):
    '''Written from the design's contract alone: log_prob(z) -> (B,) and sample(n).'''

    def __init__(self, features):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(features))

    def log_prob(self, z):
        return -0.5 * ((z - self.loc) ** 2).sum(1)

    def sample(self, n):
        return self.loc + torch.randn(n, len(self.loc))

class NoLogProb(nn.Module):
    def __init__(self, features):
        super().__init__()

class BadShape(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def log_prob(self, z):
        return z.sum() + self.w

class NoEncode(nn.Module):
    embed_dim = 4

    def __init__(self, in_channels=1, image_size=32):
        super().__init__()

class MinimalScorer:
    def score(self, ctx):
        return -ctx.log_prob

@hookimpl
def flowkit_register_flows(registry):
    registry.register("probe")(ProbeFlow)
    registry.register("no_log_prob")(NoLogProb)
    registry.register("bad_shape")(BadShape)

@hookimpl
def flowkit_register_encoders(registry):
    registry.register("no_encode")(NoEncode)

@hookimpl
def flowkit_register_scorers(registry):
    registry.register("minimal")(MinimalScorer)
    registry.register("not_a_scorer")(lambda: object())
"""


@pytest.fixture
def probe_plugin(monkeypatch, fresh_plugins):
    from importlib import metadata

    from flowkit import plugins

    eps = [
        metadata.EntryPoint("builtin", "flowkit.builtin", "flowkit"),
        metadata.EntryPoint("probe_plugin", _module("fk_probe", PROBE), "flowkit"),
    ]
    monkeypatch.setattr(plugins, "_iter_entry_points", lambda: list(eps))


def test_a_flow_with_only_log_prob_trains_end_to_end(probe_plugin, fake_split, tmp_path):
    det = Detector(**{**TINY, "flow": "probe", "scorer": "minimal"}).fit(fake_split.train)
    scores = det.anomaly_score(fake_split.test.images)
    assert np.isfinite(scores).all()
    again = Detector.load(det.save(tmp_path / "p.flowkit"), device="cpu")
    np.testing.assert_array_equal(again.anomaly_score(fake_split.test.images), scores)
    flowkit.testing.check_flow("probe", features=5)


@pytest.mark.parametrize(
    "kind, spec, match",
    [
        ("flow", "no_log_prob", r"flow 'no_log_prob' \(plugin 'probe_plugin'\) has no log_prob"),
        ("flow", "bad_shape", r"log_prob\(z\) must return shape \(2,\)"),
        ("encoder", "no_encode", r"encoder 'no_encode' \(plugin 'probe_plugin'\) has no encode"),
        ("scorer", "not_a_scorer", r"scorer 'not_a_scorer' \(plugin 'probe_plugin'\) has no score"),
    ],
)
def test_a_component_missing_its_minimum_is_refused_at_creation(
    probe_plugin, monkeypatch, kind, spec, match
):
    import flowkit.stages as stages_module

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(stages_module, "fit_encoder", no_training)
    with pytest.raises(ConfigError, match=match) as info:
        Detector(**{**TINY, kind: spec}).fit(torch.zeros(20, 1, 32, 32, dtype=torch.uint8))
    assert "\n" not in str(info.value)


def test_abc_base_classes_refuse_a_missing_method_at_instantiation():
    class NoScore(flowkit.Scorer):
        pass

    class NoLogProb(flowkit.Flow):
        pass

    class NoEncode(flowkit.Encoder):
        embed_dim = 3

    for cls in (NoScore, NoLogProb, NoEncode):
        with pytest.raises(TypeError, match="abstract"):
            cls()


@pytest.mark.parametrize(
    "name",
    [s for s in registered("scorers", plugin="builtin") if s not in ("recon", "rotation")],
)
def test_builtin_scorers_pass_check_scorer(name):
    check_scorer(name)


def test_check_scorer_catches_a_batch_dependent_scorer():
    class BatchNorm(flowkit.Scorer):
        def score(self, ctx):
            return (ctx.latents[:, 0] - ctx.latents[:, 0].mean()).double()

    with pytest.raises(AssertionError, match="depends on the other images"):
        check_scorer(BatchNorm())


@pytest.mark.parametrize(
    "name", [d for d in registered("datasets", plugin="builtin") if d not in ("folder", "mvtec")]
)
def test_builtin_datasets_pass_check_dataset(name, tmp_path, monkeypatch):
    writers = {
        "mnist": lambda: write_mnist(tmp_path),
        "cifar10": lambda: write_cifar10(tmp_path, monkeypatch),
        "svhn": lambda: write_svhn(tmp_path, monkeypatch),
        "mtd": lambda: write_mtd(tmp_path),
    }
    if name in writers:
        writers[name]()
    check_dataset(name, root=tmp_path)


def test_folder_datasets_pass_check_dataset(tmp_path):
    from .test_files import make_mvtec

    make_mvtec(tmp_path / "bottle", n_train=5)
    check_dataset("folder", root=tmp_path / "bottle")
    check_dataset("mvtec", root=tmp_path, category="bottle")


def test_dataset_returning_the_wrong_type_is_refused(fresh_plugins):
    from flowkit.registry import datasets

    datasets.get("digits")  # load plugins first
    datasets.register("broken")(lambda root=None, split="all", image_size=32, download=False: 1)
    with pytest.raises(DataError, match="dataset 'broken' returned int, not a flowkit.data"):
        flowkit.load_dataset("broken")
