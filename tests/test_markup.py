"""File and class names are text, never markup: names with [, ], [bold], [/], a newline or
bytes that are not UTF-8 go through every command that prints them and come out as written
(markup characters verbatim; a newline or a non-UTF-8 byte as an unambiguous escape)."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flowkit.cli import app
from flowkit.cli._common import shown

from .test_cli import TINY_ARGS

runner = CliRunner()
MARKUP = ["a[/]b", "a[bold]b", "x]y[z", "[red]r[/red]", "q[link=x]"]


def _png(path, value: int) -> None:
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8) // 2 + value).save(path)


@pytest.fixture
def odd_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(MARKUP + ["new\nline"]):
        (folder / f"{name}.png").parent.mkdir(parents=True, exist_ok=True)  # "a[/]b": a[ / ]b
        _png(folder / f"{name}.png", i * 10)
    raw = os.fsencode(folder) + b"/bad\xffname.png"  # not UTF-8
    _png(os.fsdecode(raw), 99)
    return folder


def test_shown_keeps_markup_and_escapes_what_cannot_print():
    assert shown("a[/]b [bold]") == "a[/]b [bold]"
    assert shown("new\nline") == "new\\nline"
    assert shown(os.fsdecode(b"bad\xff.png")) == "bad\\xff.png"


@pytest.mark.parametrize("fmt", ["table", "--csv", "--json"])
def test_score_prints_every_file_name_as_written(tiny_detector, tmp_path, odd_folder, fmt):
    model = tiny_detector.save(tmp_path / "m.flowkit")
    args = ["score", str(model), str(odd_folder), "-q"] + ([fmt] if fmt != "table" else [])
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    flat = res.output if fmt != "table" else "".join(res.output.replace("│", "").split())
    for name in MARKUP:
        assert f"{name}.png" in flat, (name, res.output)
    if fmt == "--json":
        paths = [json.loads(line)["path"] for line in res.stdout.splitlines()]
        assert len(paths) == len(MARKUP) + 2 and any(p.endswith("new\nline.png") for p in paths)
    elif fmt == "--csv":  # quoted by the csv module: a newline is a newline, not "\n"
        paths = [row[0] for row in csv.reader(io.StringIO(res.stdout))][1:]
        assert any(p.endswith("new\nline.png") for p in paths)
        assert any(p.endswith("bad\\xffname.png") for p in paths)
    else:
        assert "bad\\xffname.png" in flat and "new\\nline.png" in flat
    assert "7 image(s)" in res.output or fmt != "table"


def test_a_path_with_markup_in_an_error_is_printed_as_written(tmp_path):
    missing = tmp_path / "no[/]pe[bold].flowkit"
    res = runner.invoke(app, ["score", str(missing), str(tmp_path)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "no[/]pe[bold].flowkit" in res.output.replace("\n", "")


def test_help_keeps_the_brackets_of_install_hints():
    res = runner.invoke(app, ["bench", "--help"])
    assert "flowkit[ray]" in res.output


def _class_tree(root):
    for c, name in enumerate(["c[bold]", "d]x[i"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            _png(root / name / f"{i}.png", 40 * c + i)


def test_train_bench_and_report_print_class_names_as_written(tmp_path):
    _class_tree(tmp_path / "tree")
    res = runner.invoke(
        app,
        ["train", "--dataset", "folder", "--data-root", str(tmp_path / "tree"),
         "--anomaly-class", "1", "--out", str(tmp_path / "m[bold].flowkit"), *TINY_ARGS],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "'d]x[i' held out" in res.output
    assert "m[bold].flowkit" in res.output.replace("\n", "")
    res = runner.invoke(
        app,
        ["bench", "--dataset", "folder", "--data-root", str(tmp_path / "tree"), "--classes", "1",
         "--encoder", "dcgan_ae:width=8,latent_dim=8", "--flow", "gaussian", "--epochs-encoder",
         "1", "--out", str(tmp_path / "run[/]x"), "--executor", "local", "-q", "--no-plots"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "run[/]x" in res.output.replace("\n", "")
    report = (tmp_path / "run[/]x" / "report.md").read_text()
    assert "d]x[i" in report
    res = runner.invoke(app, ["report", str(tmp_path / "run[/]x"), "--no-plots"])
    assert res.exit_code == 0 and "run[/]x" in res.output.replace("\n", "")
