"""benchmarks/perf.py keeps one table per machine kind in benchmarks/PERF.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

PERF = Path(__file__).resolve().parents[1] / "benchmarks" / "perf.py"


@pytest.fixture
def perf(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(PERF.parent))
    spec = importlib.util.spec_from_file_location("perf_under_test", PERF)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "TABLES", tmp_path / "PERF.md")
    return module


def test_each_machine_kind_keeps_its_own_table(perf):
    perf.TABLES.write_text(
        "intro\n<!-- perf:begin cpu AVX512+BF16 -->\nold\n<!-- perf:end cpu AVX512+BF16 -->\n"
        "reading it\n"
    )
    perf.write_readme("cpu AVX2", "avx2 table")
    perf.write_readme("cpu AVX512+BF16", "new table with \\1 and \\g<0>")  # taken literally
    perf.write_readme("cpu AVX2", "avx2 table, again")
    doc = perf.TABLES.read_text()
    assert doc.count("perf:begin") == 2 and "old" not in doc
    assert doc.index("new table with \\1 and \\g<0>") < doc.index("avx2 table, again")
    assert "avx2 table\n" not in doc and doc.endswith("reading it\n")


def test_the_machine_kind_names_emulation(perf, monkeypatch):
    for var in perf.EMULATION:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert perf.machine_kind(torch.device("cpu")) == "cpu AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert perf.machine_kind(torch.device("cpu")) == "cpu AVX2-emulated"
