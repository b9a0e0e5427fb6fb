"""A wheel (non-editable) install runs the main command without the source tree: the suites
ship inside the package (importlib.resources), nothing is looked up beside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# editable installs here, not importable from the wheel's venv
PLUGINS = "timm,zuko,mlflow,example"


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """A fresh venv holding only the built flowkit wheel; torch and the other dependencies
    come from this environment's site-packages as a plain path (its .pth files, among them
    the editable flowkit's finder, are not run), after the venv's own site-packages."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("flowkit-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
         str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    work = tmp / "elsewhere"  # not the checkout: nothing relative to it may be found
    work.mkdir()
    env = {**os.environ, "FLOWKIT_DISABLE_PLUGINS": PLUGINS, "PYTHONPATH": ""}
    env.pop("FLOWKIT_SUITES", None)
    return env_dir, work, env


def _run(wheel_env, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env_dir, work, env = wheel_env
    return subprocess.run(
        [str(env_dir / "bin" / "flowkit"), *args],
        cwd=work, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_the_wheel_is_what_runs_and_it_holds_the_suites(wheel_env):
    env_dir, work, env = wheel_env
    where = subprocess.check_output(
        [str(env_dir / "bin" / "python"), "-c",
         "import flowkit, flowkit.bench.suite as s, flowkit.bench.report as r; "
         "print(flowkit.__file__); print(s.list_suites()); print(r.reference_path().is_file())"],
        cwd=work, env=env, text=True,
    )  # fmt: skip
    path, suites, reference = where.strip().splitlines()
    assert reference == "True"  # the published figures ship too
    assert Path(path).is_relative_to(env_dir) and not Path(path).is_relative_to(ROOT)
    for name in ("quick", "recommended", "paper-mnist", "paper-cifar10", "ood-digits"):
        assert f"'{name}'" in suites


def test_the_wheel_lists_components_and_runs_a_tiny_bench_to_a_report(wheel_env):
    listed = _run(wheel_env, "list", "encoders")
    assert listed.returncode == 0, listed.stderr
    assert "dcgan_ae" in listed.stdout and "simclr" in listed.stdout
    _, work, _ = wheel_env
    res = _run(
        wheel_env, "bench", "--suite", "quick", "--classes", "0", "--epochs-encoder", "1",
        "--epochs-flow", "2", "--executor", "local", "--out", "run", "-q", "--no-plots",
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = (work / "run" / "report.md").read_text()
    assert "dcgan_ae + realnvp / nll" in report and "2 cells finished" in report
