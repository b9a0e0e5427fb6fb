from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

import flowkit
from flowkit.cli import app
from flowkit.testing import check_encoder, check_flow, registered

HERE = Path(__file__).resolve().parents[1]


def test_contract():
    assert registered("encoders", plugin="example") == ["mean_pool"]
    for name in registered("encoders", plugin="example"):
        check_encoder(name, in_channels=3)
    for name in registered("flows", plugin="example"):
        check_flow(name, features=5)


def test_cli_sees_and_trains_the_installed_plugin(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["plugins"])
    assert res.exit_code == 0 and "flowkit-example" in res.output and "mean_pool" in res.output
    assert "mean_pool" in runner.invoke(app, ["list", "encoders"]).output
    res = runner.invoke(
        app,
        [
            "train",
            "--dataset",
            "fake:per_class=20",
            "--encoder",
            "mean_pool",
            "--flow",
            "diag_gaussian",
            "--epochs-flow",
            "3",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "m.flowkit"),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    assert flowkit.Detector.load(tmp_path / "m.flowkit").encoder_spec_[0] == "mean_pool"


def test_contributing_shows_this_exact_plugin():
    doc = (HERE.parents[1] / "CONTRIBUTING.md").read_text()
    blocks = re.findall(r"```python\n# flowkit_example.py\n(.*?)```", doc, re.S)
    assert blocks, "CONTRIBUTING.md lost the plugin example"
    assert blocks[0].strip() == (HERE / "flowkit_example.py").read_text().strip()
