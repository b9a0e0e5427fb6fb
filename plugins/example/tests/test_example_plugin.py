from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flowkit
from flowkit.cli import app
from flowkit.testing import check_dataset, check_encoder, check_flow, check_scorer, registered

HERE = Path(__file__).resolve().parents[1]
KINDS = ("encoder", "flow", "scorer", "dataset")


def test_contract():
    assert registered("encoders", plugin="example") == ["mean_pool"]
    assert registered("flows", plugin="example") == ["diag_gaussian"]
    assert registered("scorers", plugin="example") == ["latent_distance"]
    assert registered("datasets", plugin="example") == ["stripes"]
    check_encoder("mean_pool", in_channels=3)
    check_flow("diag_gaussian", features=5)
    check_scorer("latent_distance")
    check_dataset("stripes")


def test_cli_sees_and_trains_the_installed_plugin(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["plugins"])
    assert res.exit_code == 0 and "flowkit-example" in res.output and "mean_pool" in res.output
    assert "mean_pool" in runner.invoke(app, ["list", "encoders"]).output
    args = ["train", "--dataset", "stripes", "--anomaly-class", "1", "--encoder", "mean_pool"]
    args += ["--flow", "diag_gaussian", "--scorer", "latent_distance", "--epochs-flow", "3"]
    args += ["--device", "cpu", "--out", str(tmp_path / "m.flowkit"), "-q"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "test ROC AUC" in res.output
    det = flowkit.Detector.load(tmp_path / "m.flowkit")
    assert det.encoder_spec_[0] == "mean_pool" and det.scorer_spec_[0] == "latent_distance"
    # its declared capabilities were used: one flow per latent part, trained with its views
    assert det.density_.part_sizes == (16, 4) and len(det.flow_.parts) == 2


def test_the_capabilities_the_example_declares_are_checked():
    from flowkit.encoders.base import has_capability

    enc = flowkit.create_encoder("mean_pool", in_channels=1, image_size=32)
    assert has_capability(enc, "latent_parts") and has_capability(enc, "augment")
    assert not has_capability(enc, "reconstruction_error")

    class Broken(type(enc)):
        def augment(self, x):
            return x[:1]  # drops images: check_encoder must say so

    with pytest.raises(AssertionError, match="augment changed the shape"):
        check_encoder(Broken())


def _section(text: str, kind: str) -> str:
    match = re.search(rf"# -- {kind} -+\n(.*?)(?=\n# -- |\Z)", text, re.S)
    assert match, f"no {kind} section"
    return match.group(1).strip()


@pytest.mark.parametrize("kind", KINDS)
def test_contributing_shows_this_exact_code_for_each_kind(kind):
    doc = (HERE.parents[1] / "CONTRIBUTING.md").read_text()
    blocks = re.findall(rf"```python\n# flowkit_example.py: {kind}\n(.*?)```", doc, re.S)
    assert blocks, f"CONTRIBUTING.md has no {kind} example"
    assert blocks[0].strip() == _section((HERE / "flowkit_example.py").read_text(), kind)
