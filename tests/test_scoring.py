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
    import flowkit.scoring as scoring
    from flowkit.errors import DataError, FlowkitError, ModelFileError

    for cls in (DataError, ModelFileError):
        with pytest.raises(cls, match="^bad thing$"):
            scoring._raise_user_error(f"{cls.__name__}: bad thing")
    for name in ("TrainingDivergedError", "ValueError", "NoSuchError"):
        with pytest.raises(FlowkitError, match="^bad thing$") as info:
            scoring._raise_user_error(f"{name}: bad thing")
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
    import flowkit.scoring as scoring
    from flowkit.errors import DataError

    opened = []
    monkeypatch.setattr(scoring, "_MODEL", {})
    monkeypatch.setattr(scoring, "open_model", lambda *a: opened.append(a) or "model")

    def fake_chunk(model, files, skip):  # the second file of every chunk is unreadable
        if files[0].name == "bad.png":
            raise DataError("1 of 1 image file(s) could not be read: bad.png")
        kept = [f for i, f in enumerate(files) if i != 1]
        score = np.array([float(f.stem) for f in kept])
        return scoring.ChunkScores(kept, score, -score, [str(files[1])] if len(files) > 1 else [])

    monkeypatch.setattr(scoring, "score_chunk", fake_chunk)
    rows = [
        scoring._ray_score(
            {"files": np.array([files], dtype=object)},
            "m.flowkit",
            "auto",
            "cpu",
            None,  # threads: this test process's torch threads stay as they are
            True,
        )
        for files in [["0.png", "1.png", "2.png"], ["3.png"], ["4.png", "5.png"], ["bad.png"]]
    ]
    assert opened == [("m.flowkit", "auto", "cpu")]  # once for every chunk of this process
    assert all(len(r["kept"]) == 1 for r in rows)  # one row a chunk
    assert [r["kept"][0] for r in rows] == [["0.png", "2.png"], ["3.png"], ["4.png"], []]
    assert [r["skipped"][0] for r in rows] == [["1.png"], [], ["5.png"], []]
    assert rows[0]["anomaly_score"] == [[0.0, 2.0]] and rows[2]["log_prob"] == [[-4.0]]
    assert [r["error"][0] for r in rows[:3]] == ["", "", ""]
    # a user's error comes back in its row, and the driver raises it as its own class
    assert rows[3]["error"] == ["DataError: 1 of 1 image file(s) could not be read: bad.png"]
    with pytest.raises(DataError, match="could not be read: bad.png"):
        scoring._raise_user_error(rows[3]["error"][0])
