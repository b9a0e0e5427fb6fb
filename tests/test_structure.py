"""The core keeps to its own public API: no private names across modules, no import cycles."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "flowkit"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")[: -node.level]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, tree: ast.Module, *, lazy: bool) -> list[tuple[str, list[str]]]:
    """(imported flowkit module, names) for module-level imports (and function-level ones
    with ``lazy``), skipping ``if TYPE_CHECKING:`` blocks."""
    found: list[tuple[str, list[str]]] = []

    def visit(nodes: list[ast.stmt], top: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.ImportFrom):
                found.append((_resolve(module, node), [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                found.extend((a.name, []) for a in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list) and children and isinstance(children[0], ast.AST):
                    is_def = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    if lazy or not is_def:
                        visit(children, top and not is_def)

    visit(tree.body, True)
    return [(m, names) for m, names in found if m == "flowkit" or m.startswith("flowkit.")]


def test_no_module_imports_a_private_name_of_another():
    bad = []
    for module, tree in _modules().items():
        for target, names in _imports(module, tree, lazy=True):
            for name in names:
                if name.startswith("_") and not name.startswith("__") and target != module:
                    bad.append(f"{module} imports {target}.{name}")
    assert not bad, bad


def _private_uses(module_trees: dict[str, ast.Module]) -> list[str]:
    """``obj._name`` where ``obj`` is not ``self``/``cls`` and ``_name`` is not defined in the
    module that uses it: reaching into another module's (or library's) private state."""
    bad = []
    for module, tree in module_trees.items():
        own = {
            n.name
            for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        }
        own |= {
            t.attr
            for n in ast.walk(tree)
            if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Attribute)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            name = node.attr
            if not name.startswith("_") or name.startswith("__"):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if name not in own:
                bad.append(f"{module}:{node.lineno} uses {ast.unparse(node)}")
    return bad


def test_no_module_reaches_into_another_objects_private_attributes_or_methods():
    """``det._fitted()`` from export.py or ``det.flow_ = ...`` style writes from the bench
    would show here (the second as a write to another object's fitted state, below)."""
    assert not _private_uses(_modules()), _private_uses(_modules())


def test_no_module_assigns_another_objects_fitted_attributes():
    bad = []
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                for leaf in ast.walk(t):
                    if (
                        isinstance(leaf, ast.Attribute)
                        and leaf.attr.endswith("_")
                        and not leaf.attr.startswith("_")
                        and not (
                            isinstance(leaf.value, ast.Name) and leaf.value.id in ("self", "cls")
                        )
                    ):
                        bad.append(f"{module}:{node.lineno} assigns {ast.unparse(leaf)}")
    assert not bad, bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    return cycles


def test_no_import_cycles():
    """Counting imports inside functions too: a lazy import is no excuse for a cycle."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, tree in modules.items():
        deps = set()
        for target, names in _imports(module, tree, lazy=True):
            # "from flowkit.data import x" may name a submodule
            subs = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
            deps |= subs or {target}
        # a package's own __init__ importing its submodules is not a cycle
        graph[module] = {d for d in deps if d in modules and d != module}
    package_inits = {
        m for m in modules if (ROOT.parent / m.replace(".", "/") / "__init__.py").exists()
    }
    for pkg in package_inits:  # submodules importing their package is how Python works
        for module in modules:
            if module.startswith(pkg + "."):
                graph[module].discard(pkg)
    assert not _cycles(graph), _cycles(graph)


def test_the_checks_above_can_fail():
    uses = _private_uses({"flowkit.x": ast.parse("def f(d):\n    d._fitted()\n    self._ok()\n")})
    assert uses == ["flowkit.x:2 uses d._fitted"]
    tree = ast.parse("from flowkit.registry import _parse_value\n")
    assert _imports("flowkit.x", tree, lazy=False) == [("flowkit.registry", ["_parse_value"])]
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]


def test_no_class_is_over_300_lines_and_the_detector_is_a_facade():
    long = [
        f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for module, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 300
    ]
    assert not long, long
    (detector,) = [
        n
        for n in ast.walk(_modules()["flowkit.detector"])
        if isinstance(n, ast.ClassDef) and n.name == "Detector"
    ]
    # the Detector composes fitted stages; fitting them is the one fit path's
    calls = {ast.unparse(n.func) for n in ast.walk(detector) if isinstance(n, ast.Call)}
    fits = {c for c in calls if c.endswith(".fit")} - {"self.fit"}
    assert fits == {"StagePipeline(config, images, device=self.device).fit"}, fits


def _calls_by_name(tree: ast.Module, names: set[str]) -> list[str]:
    return [
        f"{node.lineno}: {ast.unparse(node)[:60]}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names
    ]


def test_capabilities_are_declared_not_probed():
    """Optional members are declared on each kind's base class (or its registry entry) and
    read through one lookup (registry.optional_members): getattr/hasattr stay rare."""
    probes = {
        module: _calls_by_name(tree, {"getattr", "hasattr"}) for module, tree in _modules().items()
    }
    count = sum(len(v) for v in probes.values())
    assert count <= 20, {m: v for m, v in probes.items() if v}


def test_one_fit_path_one_executor_layer_one_cores_helper():
    modules = _modules()
    # the bench's unit builds no stage itself: it calls the shared fit path
    for module, tree in modules.items():
        if module.startswith("flowkit.bench"):
            imported = {t for t, _ in _imports(module, tree, lazy=True)}
            assert "flowkit.stages" not in imported, f"{module} builds stages itself"
            assert "flowkit.pipeline" in imported or module != "flowkit.bench.units"
    # the CPU count is taken in one place
    counting = [
        m
        for m, src in ((m, ast.unparse(t)) for m, t in modules.items())
        if "sched_getaffinity" in src
    ]
    assert counting == ["flowkit.executors"], counting
    # scoring and the bench run through the one executor layer
    for module in ("flowkit.scoring", "flowkit.bench.runner"):
        imported = {t for t, _ in _imports(module, modules[module], lazy=True)}
        assert "flowkit.executors" in imported, module
        src = ast.unparse(modules[module])
        assert "ProcessPoolExecutor" not in src and "ray.init" not in src, module


def _layout_entries() -> dict[str, str]:
    """CONTRIBUTING's layout block: each ``flowkit/...`` entry and its text (continuation
    lines included)."""
    text = (ROOT.parent / "CONTRIBUTING.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if line.startswith("flowkit/"):
            current, _, rest = line.partition(" ")
            entries[current] = rest
        elif line.startswith(" ") and current:
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def test_every_public_module_is_named_in_contributing():
    """Each module is a layout entry of its own, or named in its package's entry."""
    entries = _layout_entries()
    missing = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name.startswith("_"):
            continue
        rel = path.relative_to(ROOT.parent)
        package = f"{rel.parent}/"
        if str(rel) in entries:
            continue
        if package in entries and re.search(rf"\b{re.escape(path.name)}\b", entries[package]):
            continue
        missing.append(str(rel))
    assert not missing, missing
    # and every entry is still in the tree
    gone = [e for e in entries if not (ROOT.parent / e).exists()]
    assert not gone, gone


def test_benchmarks_hold_results_that_rerun():
    bench = ROOT.parent / "benchmarks"
    assert len((bench / "README.md").read_text().splitlines()) < 300
    for run in sorted(p for p in (bench / "results").iterdir() if p.is_dir()):
        for name in ("results.jsonl", "report.md"):
            assert (run / name).is_file(), f"{run.name} has no {name}"
