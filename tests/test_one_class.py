"""The one-class protocol: one class normal, every other class anomalous (issue 39, item 3)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import flowkit
from flowkit.cli import app
from flowkit.data import leave_one_class_out
from flowkit.data.protocols import one_class
from flowkit.errors import ConfigError


def test_one_class_trains_on_one_class_and_tests_against_all_others():
    data = flowkit.load_dataset("fake", per_class=20, classes=4)
    split = one_class(data, 2, seed=0)
    assert (split.train.labels == 2).all() and len(split.train) == 16
    normal_test = split.test.labels[~split.is_anomaly]
    assert (normal_test == 2).all() and len(normal_test) == 4
    assert (split.test.labels[split.is_anomaly] != 2).all() and int(split.is_anomaly.sum()) == 60
    # seeded
    again = one_class(data, 2, seed=0)
    assert torch.equal(again.train.images, split.train.images)
    assert not torch.equal(one_class(data, 2, seed=1).train.images, split.train.images)
    # a class by name, as leave-one-class-out takes it
    assert torch.equal(one_class(data, data.classes[2], seed=0).train.images, split.train.images)
    with pytest.raises(ConfigError, match=r"normal class must be in 0\.\.3"):
        one_class(data, 9)
    # leave-one-class-out is its mirror image: the same class held out is the only anomaly
    loo = leave_one_class_out(data, 2, seed=0)
    assert (loo.test.labels[loo.is_anomaly] == 2).all()


def test_bench_runs_a_suite_as_one_class_with_the_protocol_flag(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(
        'dataset = "fake:per_class=20,classes=3"\nclasses = [0, 1]\n'
        'encoders = ["dcgan_ae:width=8,latent_dim=8"]\nflows = ["gaussian"]\n'
        "epochs_encoder = 1\n"
    )
    out = tmp_path / "r"
    res = CliRunner().invoke(
        app,
        ["bench", "--suite", str(suite), "--protocol", "one-class", "--out", str(out), "-q",
         "--no-plots", "--executor", "local", "--device", "cpu"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["config"]["protocol"] for r in records] == ["one-class", "one-class"]
    assert all(r["sizes"]["anomalies"] == 40 and r["sizes"]["test"] == 44 for r in records)
    assert "one-class (one class normal, the others anomalous)" in (out / "report.md").read_text()
    bad = CliRunner().invoke(
        app, ["bench", "--protocol", "two-class", "--out", str(tmp_path / "x")]
    )
    assert (
        bad.exit_code == 2 and "protocol must be loo (leave one class out), one-class" in bad.output
    )
