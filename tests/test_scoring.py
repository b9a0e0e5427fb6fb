"""Scoring a folder on several processes or Ray actors gives the local rows, in order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flowkit.cli import app
from flowkit.errors import ConfigError
from flowkit.scoring import check_executor

runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for sub in ("a", "b"):
        (root / sub).mkdir()
        for i in range(23):
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(
                root / sub / f"{i:02d}.png"
            )
    (root / "b" / "zz_broken.png").write_bytes(b"\x89PNG not an image")
    return root


def _csv(model, folder, *args):
    res = runner.invoke(
        app,
        ["score", str(model), str(folder), "--csv", "-q", "--batch-size", "7",
         "--skip-unreadable", *args],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "skipped 1 unreadable file(s)" in res.output and "zz_broken.png" in res.output
    assert res.output.count("zz_broken.png") == 1  # reported once, not once per chunk too
    return [line for line in res.stdout.splitlines() if line.count(",") == 4]


@pytest.mark.parametrize("executor", ["process", "ray"])
def test_workers_give_the_local_rows_in_the_local_order(tiny_detector, tmp_path, folder, executor):
    model = tiny_detector.save(tmp_path / "m.flowkit")
    local = _csv(model, folder)
    assert len(local) == 1 + 46  # the header and one row per readable file
    assert _csv(model, folder, "--executor", executor, "--workers", "2", "--threads", "1") == local


@pytest.mark.parametrize("executor", ["process", "ray"])
def test_workers_report_an_unreadable_file_as_local_scoring_does(
    tiny_detector, tmp_path, folder, executor
):
    model = tiny_detector.save(tmp_path / "m.flowkit")
    cmd = ["score", str(model), str(folder), "--csv", "-q", "--batch-size", "7"]
    local = runner.invoke(app, cmd)
    assert local.exit_code == 2 and "zz_broken.png" in local.output
    res = runner.invoke(app, [*cmd, "--executor", executor, "--workers", "2", "--threads", "1"])
    assert res.exit_code == 2  # one clear line, not a worker's traceback
    error = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert error == [line for line in local.output.splitlines() if line.startswith("error:")]
    assert "Traceback" not in res.output


def test_a_workers_user_error_is_raised_on_the_driver_as_its_own_class():
    from flowkit.errors import DataError, FlowkitError, ModelFileError
    from flowkit.executors import raise_reported

    for cls in (DataError, ModelFileError):
        with pytest.raises(cls, match="^bad thing$"):
            raise_reported(f"{cls.__name__}: bad thing")
    for name in ("TrainingDivergedError", "ValueError", "NoSuchError"):
        with pytest.raises(FlowkitError, match="^bad thing$") as info:
            raise_reported(f"{name}: bad thing")
        assert type(info.value) is FlowkitError  # its own constructor, or not flowkit's


def test_score_executor_options_are_checked_before_any_work(tiny_detector, tmp_path, folder):
    with pytest.raises(ConfigError, match="unknown executor 'gpu'"):
        check_executor("gpu", None, None)
    with pytest.raises(ConfigError, match="workers need the process or ray executor"):
        check_executor("local", 2, None)
    assert check_executor("process", 3, None) == 3
    model = tiny_detector.save(tmp_path / "m.flowkit")
    res = runner.invoke(app, ["score", str(model), str(folder), "--workers", "2"])
    assert res.exit_code == 2 and "--workers need --executor process or ray" in res.output


def test_ray_rows_are_the_chunks_scores_and_the_model_opens_once_a_process(monkeypatch):
    """The Ray Data map of the executor layer, run here on scoring's own job: one row per
    chunk, the model opened once per worker process, a user's error in its row."""
    import pickle
    from pathlib import Path

    import flowkit.executors as executors
    import flowkit.scoring as scoring
    from flowkit.errors import DataError

    opened = []
    monkeypatch.setattr(scoring, "_MODEL", {})
    monkeypatch.setattr(executors, "_WORKER", {})
    monkeypatch.setattr(scoring, "open_model", lambda *a: opened.append(a) or "model")

    def fake_chunk(model, files, skip, maps):  # the second file of every chunk is unreadable
        assert model == "model" and skip is True and maps is False
        if files[0].name == "bad.png":
            raise DataError("1 of 1 image file(s) could not be read: bad.png")
        kept = [f for i, f in enumerate(files) if i != 1]
        score = np.array([float(f.stem) for f in kept])
        return scoring.ChunkScores(kept, score, -score, [str(files[1])] if len(files) > 1 else [])

    monkeypatch.setattr(scoring, "score_chunk", fake_chunk)
    job = executors.Job(scoring._score_here, scoring._open_here, ("m.flowkit", "auto", True, False))
    chunks = [["0.png", "1.png", "2.png"], ["3.png"], ["4.png", "5.png"], ["bad.png"]]
    rows = [
        executors._ray_rows(
            {"item": np.array([pickle.dumps([Path(f) for f in c])], dtype=object)},
            job,
            "cpu",
            None,  # threads: this test process's torch threads stay as they are
        )
        for c in chunks
    ]
    assert opened == [("m.flowkit", "auto", "cpu")]  # once for every chunk of this process
    assert all(len(r["result"]) == 1 for r in rows)  # one row a chunk
    got = [pickle.loads(r["result"][0]) for r in rows[:3]]
    assert [[str(f) for f in g.kept] for g in got] == [["0.png", "2.png"], ["3.png"], ["4.png"]]
    assert [g.skipped for g in got] == [["1.png"], [], ["5.png"]]
    assert got[0].anomaly_score.tolist() == [0.0, 2.0] and got[2].log_prob.tolist() == [-4.0]
    assert [r["error"][0] for r in rows[:3]] == ["", "", ""]
    # a user's error comes back in its row, and the driver raises it as its own class
    assert rows[3]["error"] == ["DataError: 1 of 1 image file(s) could not be read: bad.png"]
    with pytest.raises(DataError, match="could not be read: bad.png"):
        executors.raise_reported(rows[3]["error"][0])
