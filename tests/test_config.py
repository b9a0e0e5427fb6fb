"""One declaration of the configuration (flowkit.config): every copy is derived from it, and
these tests fail when a derived copy (a Detector parameter, a CLI option, a suite default, a
cell field or a cache key) disagrees with the declaration."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import typer.main

from flowkit import Detector
from flowkit.bench.suite import (
    ENCODER_FIELDS,
    FLOW_FIELDS,
    SCORER_FIELDS,
    SHARED_FIELDS,
    Cell,
    Suite,
)
from flowkit.cli import app
from flowkit.cli.train import TRAIN_OPTIONS
from flowkit.config import (
    DEFAULTS,
    PAPER,
    PAPER_PARAMS,
    DetectorConfig,
    cell_fields,
    option_fields,
)
from flowkit.errors import ConfigError
from flowkit.stages import check_options

DECLARED = {f.name: f for f in option_fields()}


def _command(name: str):
    return typer.main.get_command(app).commands[name]


def test_the_detector_parameters_are_the_declaration():
    sig = inspect.signature(Detector)
    assert list(sig.parameters) == list(DECLARED)
    assert {k: p.default for k, p in sig.parameters.items()} == DEFAULTS.params()
    assert all(p.kind is p.KEYWORD_ONLY for p in sig.parameters.values())
    assert Detector().get_params() == DEFAULTS.params() == Detector().config.params()
    assert Detector.paper().config == PAPER
    # the paper preset is the declaration's paper values, and only the ones that differ
    assert PAPER_PARAMS == {k: v for k, v in PAPER.params().items() if DEFAULTS.params()[k] != v}
    assert PAPER_PARAMS["encoder"] == "dcgan_ae:latent_dim=100" and PAPER.scorer == "nll"


def test_train_options_are_derived_from_the_declaration():
    params = {p.name: p for p in _command("train").params}
    for name in TRAIN_OPTIONS:
        f = DECLARED[name]
        p = params[name]
        assert p.opts[0] == "--" + name.replace("_", "-"), name
        assert (
            str(p.default) == str(f.default) if f.metadata["cli_type"] else p.default == f.default
        )
        assert p.help == f.metadata["help"], name
    # every option a user may set from the command line is there, none is hand-typed
    assert set(TRAIN_OPTIONS) == {f.name for f in option_fields() if f.metadata["cli"]}
    assert {"lr_encoder", "patience", "val_fraction", "device"} <= set(params)
    assert "--latent" in params["preprocess"].opts  # the earlier name still works


def test_bench_overrides_are_derived_from_the_declaration():
    params = {p.name: p for p in _command("bench").params}
    for name in SHARED_FIELDS:
        assert params[name].default is None, name  # None: keep the suite's value
        assert params[name].help.startswith(DECLARED[name].metadata["help"]), name


def test_suite_fields_default_to_the_papers_values():
    suite = Suite(name="s")
    for name in SHARED_FIELDS:
        assert getattr(suite, name) == getattr(PAPER, name), name
    assert suite.encoders == [PAPER.encoder] and suite.flows == [PAPER.flow]
    assert suite.scorers == [PAPER.scorer] and suite.preprocess == [PAPER.preprocess]
    assert suite.seeds == [PAPER.seed]
    # what a suite holds of the config: every cell option, as a shared value or an axis
    assert set(SHARED_FIELDS) | {"encoder", "flow", "scorer", "preprocess", "seed"} == {
        f.name for f in cell_fields()
    }


def test_cells_and_cache_keys_follow_the_declared_stages():
    cell_names = {f.name for f in dataclasses.fields(Cell)}
    assert cell_names == {f.name for f in cell_fields()} | {
        "dataset",
        "protocol",
        "target",
        "image_size",
    }
    for name in (f.name for f in cell_fields()):
        stage = DECLARED[name].metadata["stage"]
        in_key = {"encoder": ENCODER_FIELDS, "density": FLOW_FIELDS, "calibration": SCORER_FIELDS}
        assert name in in_key[stage], (name, stage)
    keys = [*ENCODER_FIELDS, *FLOW_FIELDS, *SCORER_FIELDS]
    assert len(keys) == len(set(keys))  # each option in exactly one key
    assert set(keys) == cell_names - {"target"}  # the target joins the encoder's key itself
    cell = Suite(name="s").validate().cells([0])[0]
    assert cell.detector_config("cpu") == PAPER.replace(device="cpu")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"confidence": 1.0}, r"confidence must be in \(0, 1\)"),
        ({"epochs_encoder": 0}, "epochs_encoder must be >= 1"),
        ({"batch_size": 1}, "BatchNorm needs two"),
        ({"flow_batch_size": "big"}, "flow_batch_size must be an integer"),
        ({"flow_augment": True}, "flow_augment must be an integer"),
        ({"precision": "fp16"}, "precision must be one of fp32, bf16, auto"),
        ({"seed": -1}, r"seed must be in \[0, "),
        ({"lr_flow": float("nan")}, "lr_flow must be in"),
        ({"value_range": (1, 0)}, "low < high"),
        ({"encoder": 3}, "encoder must be a spec string"),
        ({"encoder": ""}, "empty component name"),
        ({"contamination": 0.6}, r"contamination must be in \(0, 0.5\)"),
    ],
)
def test_each_declared_check_refuses_its_bad_values(change, message):
    with pytest.raises(ConfigError, match=message):
        check_options(DetectorConfig(**change))
    with pytest.raises(ConfigError, match=message):
        Detector(**change).check_config()


def test_an_unknown_option_is_refused_with_the_closest_name():
    with pytest.raises(ConfigError, match="did you mean 'epochs_flow'"):
        Detector(epochs_flwo=3)
    with pytest.raises(ConfigError, match="did you mean 'patience'"):
        DEFAULTS.replace(patiense=3)
