"""Time to accuracy: the recommended pipeline's AUC against encoder and flow epochs (issue 28).

Runs `flowkit bench --suite recommended` on a few held-out classes once per budget, all
sharing one cache, so that each budget is exactly what a default of that many epochs would
train (its own learning-rate schedule and early stopping), and the encoder of the full budget
is trained once for every flow budget:

- encoder epochs E in --encoder-epochs, each with the default flow budget;
- flow epochs F in --flow-epochs, each on the default encoder.

Prints, per budget, the mean AUC of every scorer over the classes and the worker seconds per
class (encoder, flows), then the CPU it ran on. Prints figures, asserts nothing.

    python benchmarks/time_to_accuracy.py --data-root ../shared/data/mnist-dev --classes 1,7
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import cpu_features, cpu_name  # noqa: E402


def run(out: Path, cache: Path, args: argparse.Namespace, *flags: str) -> list[dict]:
    cmd = [
        sys.executable, "-m", "flowkit", "bench", "--suite", "recommended",
        "--dataset", args.dataset, "--classes", args.classes, "--seeds", str(args.seed),
        "--out", str(out), "--cache", str(cache), "--no-plots", "-q", *flags,
    ]  # fmt: skip
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    lines = (out / "results.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["status"] == "ok"]


def summarise(label: str, records: list[dict], table: Table, scorers: list[str]) -> None:
    aucs: dict[str, list[float]] = defaultdict(list)
    enc: dict[str, float] = {}
    flow: dict[str, float] = {}
    for r in records:
        aucs[r["config"]["scorer"]].append(r["metrics"]["auc"])
        t = r["timings"]
        enc[r["target_name"]] = t["encoder_fit_s"]  # the fit's own time, cached or not
        flow[r["target_name"]] = t["flow_fit_s"]
    n = max(len(enc), 1)
    table.add_row(
        label,
        *(f"{sum(aucs[s]) / len(aucs[s]):.4f}" if aucs[s] else "-" for s in scorers),
        f"{sum(enc.values()) / n:.0f}",
        f"{sum(flow.values()) / n:.0f}",
        f"{(sum(enc.values()) + sum(flow.values())) / n:.0f}",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--classes", default="1,7")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--encoder-epochs", default="5,10,20")
    ap.add_argument("--flow-epochs", default="25,50,100,200")
    ap.add_argument("--default-encoder-epochs", type=int, default=20)
    ap.add_argument("--default-flow-epochs", type=int, default=200)
    ap.add_argument("--work", type=Path, default=None, help="keep the runs here (resumable)")
    args = ap.parse_args()
    scorers = ["nll", "knn:k=2,metric=cosine,part=0", "nll+knn:k=2,metric=cosine,part=0"]
    table = Table(title=f"{args.dataset} {args.data_root or ''}: classes {args.classes}, seed "
                  f"{args.seed} (mean AUC; worker seconds per class)")  # fmt: skip
    for col in ["budget", "nll", "knn", "nll+knn", "encoder s", "flows s", "total s"]:
        table.add_column(col)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        cache = work / "cache"
        for e in map(int, args.encoder_epochs.split(",")):
            recs = run(work / f"enc{e}", cache, args, "--epochs-encoder", str(e),
                       "--epochs-flow", str(args.default_flow_epochs))  # fmt: skip
            summarise(f"encoder {e} epochs, flows {args.default_flow_epochs}", recs, table, scorers)
        for f in map(int, args.flow_epochs.split(",")):
            if f == args.default_flow_epochs:
                continue  # the row above with the default encoder budget
            recs = run(work / f"flow{f}", cache, args, "--epochs-encoder",
                       str(args.default_encoder_epochs), "--epochs-flow", str(f))  # fmt: skip
            summarise(f"encoder {args.default_encoder_epochs}, flows {f} epochs", recs, table,
                      scorers)  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"Machine: {cpu_name()}; {cpu_features()}")


if __name__ == "__main__":
    main()
