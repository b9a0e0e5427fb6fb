"""The bench's guarantees: typed suites, complete cache keys, one writer, nothing left behind."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flowkit import Detector
from flowkit.bench.report import write_report
from flowkit.bench.runner import run_suite
from flowkit.bench.store import RunStore
from flowkit.bench.suite import (
    ENCODER_FIELDS,
    FLOW_FIELDS,
    SCORER_FIELDS,
    Cell,
    Suite,
    load_suite,
)
from flowkit.cli import app
from flowkit.errors import ConfigError, RunLockedError

from .test_bench import TINY_SUITE, lines
from .test_files import make_mvtec

runner = CliRunner()


@pytest.mark.parametrize(
    "toml, match",
    [
        ('classes = "0,1"', r"field classes must be a list of integers.*got '0,1'"),
        ('seeds = ["zero"]', r"field seeds must be a list of integers.*\['zero'\]"),
        ("flows = [1, 2]", r"field flows must be a list of strings.*\[1, 2\]"),
        ('epochs_encoder = "one"', r"field epochs_encoder must be an integer; got 'one'"),
        ("confidence = true", r"field confidence must be a number"),
        ("image_size = 32.5", r"field image_size must be an integer"),
        ('protocol = "lol"', r"protocol must be loo"),
        ('categories = "all"', r"categories only apply to protocol 'given'"),
        ("bogus = 1", r"unknown field\(s\) bogus"),
        ("flows = [", r"cannot read suite"),
    ],
)
def test_suite_fields_are_type_checked(tmp_path, toml, match):
    path = tmp_path / "s.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=match):
        load_suite(str(path))
    res = runner.invoke(app, ["bench", "--suite", str(path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_missing_suite_file_says_file_not_found(tmp_path):
    with pytest.raises(ConfigError, match="suite file not found"):
        load_suite(str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="unknown suite 'quik'; did you mean quick"):
        load_suite("quik")


def _cell(**changes) -> Cell:
    base = Suite(**TINY_SUITE).validate().cells([0])[0]
    return dataclasses.replace(base, **changes)


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 1 if value > 1 else value / 2
    return f"{value}x"


def test_every_setting_that_changes_an_artifact_is_in_its_cache_key():
    base = _cell()
    fields = [f.name for f in dataclasses.fields(Cell)]
    assert set(fields) == set(ENCODER_FIELDS) | set(FLOW_FIELDS) | set(SCORER_FIELDS) | {"target"}
    for name in fields:
        other = _cell(**{name: _changed(getattr(base, name))})
        assert other.cell_id != base.cell_id, name
        assert (other.encoder_key != base.encoder_key) == (name in ENCODER_FIELDS + ("target",))
        assert (other.flow_key != base.flow_key) == (name not in SCORER_FIELDS), name
    # every Detector setting a suite can change reaches the Detector through one mapping
    params = base.detector_params("cpu")
    unsettable = {"encoder_options", "flow_options", "scorer_options", "contamination"}
    unsettable |= {"value_range", "verbose"}
    assert set(Detector().get_params()) - unsettable == set(params)
    assert Detector(**params).flow_batch_size == base.flow_batch_size


def test_runs_recorded_before_a_field_was_added_keep_their_keys():
    # a cell of the recommended suite's v1 run on the MNIST dev sample (in git history),
    # recorded before flow_augment existed
    path = Path(__file__).resolve().parent / "data" / "record-before-flow-augment.jsonl"
    record = json.loads(path.read_text().splitlines()[0])
    assert "flow_augment" not in record["config"]
    cell = Cell(**record["config"])
    assert cell.flow_augment == 0
    assert (cell.cell_id, cell.encoder_key, cell.flow_key) == (
        record["cell_id"],
        record["encoder_key"],
        record["flow_key"],
    )
    assert dataclasses.replace(cell, flow_augment=2).flow_key != cell.flow_key


def test_given_protocol_runs_every_mvtec_category(tmp_path):
    data = tmp_path / "mvtec"
    make_mvtec(data / "bottle", n_train=20)
    make_mvtec(data / "cable", n_train=20)
    suite = dataclasses.replace(
        load_suite("mvtec"),
        encoders=TINY_SUITE["encoders"],
        flows=TINY_SUITE["flows"],
        epochs_encoder=1,
        epochs_flow=2,
        image_size=32,
    )
    run_suite(suite, tmp_path / "run", data_root=data, device="cpu")
    recs = lines(tmp_path / "run" / "results.jsonl")
    assert sorted(r["config"]["target"] for r in recs) == ["bottle", "cable"]
    assert all(r["status"] == "ok" for r in recs)
    assert all(r["sizes"]["train"] + r["sizes"]["val"] == 20 for r in recs)
    assert all(r["sizes"]["anomalies"] == 12 and r["sizes"]["test"] == 20 for r in recs)
    md = write_report(tmp_path / "run")["markdown"].read_text()
    assert "bottle" in md and "cable" in md


def test_given_protocol_without_data_says_where_to_put_it(tmp_path):
    res = runner.invoke(
        app,
        ["bench", "--suite", "mvtec", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")],
    )
    assert res.exit_code == 2 and "licence" in res.output and "Traceback" not in res.output


# -- one writer per run --------------------------------------------------------------------

SUITE_TOML = """
dataset = "fake:per_class=30"
classes = [0, 1, 2]
encoders = ["dcgan_ae:width=8,latent_dim=8"]
flows = ["realnvp:hidden=16,layers=2,blocks=1"]
epochs_encoder = 2
epochs_flow = 3
"""


def _bench(suite: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowkit",
            "bench",
            "--suite",
            str(suite),
            "--out",
            str(out),
            "--device",
            "cpu",
            "-q",
            "--no-plots",
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_concurrent_benches_one_runs_one_exits_2(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE_TOML)
    out = tmp_path / "run"
    first = _bench(suite, out)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until the first holds the lock
        lock = out / ".lock"
        if lock.exists() and lock.read_text().strip() == str(first.pid):
            break
        time.sleep(0.05)
    # Freeze the holder so that the second bench surely starts while the first runs.
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = _bench(suite, out)
        second_out, _ = second.communicate(timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first_out, _ = first.communicate(timeout=300)
    assert second.returncode == 2, second_out
    assert f"in use by another flowkit bench (pid {first.pid})" in second_out
    assert "Traceback" not in second_out
    assert first.returncode == 0, first_out
    recs = lines(out / "results.jsonl")
    assert sorted(r["config"]["target"] for r in recs) == [0, 1, 2]  # each cell exactly once


def test_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    store = RunStore(tmp_path, create=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    store.lock_path.write_text(dead)  # a pid file without a held lock: its run was killed
    with pytest.warns(UserWarning, match=f"took over the lock of pid {dead}"):
        with store.lock():
            assert store.lock_path.read_text() == str(os.getpid())
            with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
                _other_process_lock(tmp_path)
    assert store.lock_path.read_text() == ""


def _other_process_lock(path: Path) -> None:
    code = (
        "import sys; from flowkit.bench.store import RunStore\n"
        "from flowkit.errors import RunLockedError\n"
        f"try:\n    RunStore({str(path)!r}).lock().__enter__()\n"
        "except RunLockedError as e:\n    print(e); sys.exit(2)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode == 2:
        raise RunLockedError(res.stdout.strip())


# -- nothing left behind -------------------------------------------------------------------


def test_temporaries_of_killed_writes_are_cleaned_and_files_honour_umask(tiny_detector, tmp_path):
    stale = tmp_path / ".m.flowkit.999999999.abcd.tmp"  # no such pid: a killed writer
    stale.write_bytes(b"half a model")
    old = os.umask(0o022)
    try:
        path = tiny_detector.save(tmp_path / "m.flowkit")
    finally:
        os.umask(old)
    assert not stale.exists()
    assert (path.stat().st_mode & 0o777) == 0o644
    assert not list(tmp_path.glob(".*.tmp"))


def test_report_on_a_bad_directory_creates_nothing(tmp_path):
    missing = tmp_path / "nope"
    res = runner.invoke(app, ["report", str(missing)])
    assert res.exit_code == 2 and "not a bench run directory" in res.output
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["report", str(empty)])
    assert res.exit_code == 2 and list(empty.iterdir()) == []


def test_report_skips_incomplete_records_and_leaves_one_seed_std_empty(tmp_path):
    run_suite(Suite(**{**TINY_SUITE, "classes": [0]}).validate(), tmp_path, device="cpu")
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write(json.dumps({"cell_id": "x", "status": "ok"}) + "\n")
        fh.write(
            json.dumps(
                {"cell_id": "y", "status": "ok", "combination": "c", "config": {"dataset": "d"}}
            )
            + "\n"
        )
    with pytest.warns(UserWarning, match="skipping a record without combination, config"):
        res = write_report(tmp_path, plots=False)
    import csv

    rows = list(csv.reader(res["csv"].read_text().splitlines()))
    header, row = rows[0], rows[1]
    assert len(rows) == 2 and row[header.index("auc_std")] == ""
    assert row[header.index("auc_mean")] != ""
    res = runner.invoke(app, ["report", str(tmp_path), "--no-plots"])
    assert res.exit_code == 0 and "Traceback" not in res.output


def test_report_into_an_unwritable_place_is_one_line(tmp_path):
    run_suite(Suite(**{**TINY_SUITE, "classes": [0]}).validate(), tmp_path, device="cpu")
    (tmp_path / "report.md").mkdir()  # stands in for a read-only file (tests run as root)
    res = runner.invoke(app, ["report", str(tmp_path), "--no-plots"])
    assert res.exit_code == 2 and "cannot write the report" in res.output
    assert "Traceback" not in res.output


def _as_before_the_rename(record: dict) -> dict:
    """A record as flowkit wrote it before ``latent`` became ``preprocess`` (its cell id
    hashed under the old field name)."""
    import hashlib

    cfg = dict(record["config"])
    cfg["latent"] = cfg.pop("preprocess")
    blob = json.dumps(cfg, sort_keys=True)
    return {**record, "config": cfg, "cell_id": hashlib.sha256(blob.encode()).hexdigest()[:16]}


def test_records_from_before_the_preprocess_rename_are_read_and_not_retrained(tmp_path):
    suite = Suite(**{**TINY_SUITE, "classes": [0]}).validate()
    run_suite(suite, tmp_path, device="cpu")
    new = lines(tmp_path / "results.jsonl")
    old = [_as_before_the_rename(r) for r in new]
    assert {r["cell_id"] for r in old}.isdisjoint(r["cell_id"] for r in new)
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    paths = write_report(tmp_path, plots=False)
    text = paths["markdown"].read_text()
    assert f"{len(old)} cells finished" in text and "no results" not in text
    assert "dcgan_ae" in paths["csv"].read_text()
    run_suite(suite, tmp_path, device="cpu")  # resume: every cell is done already
    assert len(lines(tmp_path / "results.jsonl")) == len(old)


def test_a_report_of_no_readable_record_keeps_the_existing_one(tmp_path):
    run_suite(Suite(**{**TINY_SUITE, "classes": [0]}).validate(), tmp_path, device="cpu")
    write_report(tmp_path, plots=False)
    good = (tmp_path / "report.md").read_text()
    (tmp_path / "results.jsonl").write_text('{"cell_id": "x"}\nnot json\n')
    res = runner.invoke(app, ["report", str(tmp_path), "--no-plots"])
    assert res.exit_code == 2 and "existing report is kept" in res.output
    assert (tmp_path / "report.md").read_text() == good


@pytest.mark.parametrize("name", ["../../escaped", "a/b", ".hidden", "", "x" * 101, "a\\b"])
def test_a_suite_name_that_is_not_one_path_component_is_refused(tmp_path, name):
    toml = tmp_path / "s.toml"
    toml.write_text(f"name = {json.dumps(name)}\nclasses = [0]\n")
    with pytest.raises(ConfigError, match="must be one path component"):
        load_suite(str(toml))
    res = runner.invoke(app, ["bench", "--suite", str(toml)], catch_exceptions=False)
    assert res.exit_code == 2 and "must be one path component" in res.output
    assert not (tmp_path.parent.parent / "escaped").exists()
