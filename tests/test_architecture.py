"""The package's layers (docs/architecture.md), checked from the code's own import statements; nothing is imported.

Every .py file under src/aevb is parsed with `ast`; every import in it (module level and inside functions,
`import aevb.x`, `from aevb.x import y`, `from . import y`, `from .x import y`, `from ..x import y`, the relative
ones resolved against the file's package) becomes an edge to a module of the package: `from pkg import name` is an
import of `pkg.name` when `pkg/name.py` or `pkg/name/` exists, else of `pkg` (its `__init__.py`). Then:

(a) no module imports a module of a higher layer (LAYERS; the facade `aevb/__init__.py` and `aevb/__main__.py`
    is the top, so `from aevb import __version__` inside the package is an upward import);
(b) the module-level import graph between files has no cycle (imports inside functions and under
    `if TYPE_CHECKING:` do not run at import time and are left out; a package `__init__` importing its submodule
    is an edge `pkg -> pkg.sub`, and that submodule importing from `pkg` closes a cycle);
(c) every module belongs to a layer (a new top-level module must be added to LAYERS and docs/architecture.md);
(d) no file is over 400 lines; (e) no function or method over 60 (end_lineno - lineno + 1, less its docstring);
(f) the class Trainer, defined under src/aevb/train/, is under 200 lines.

The checker also runs on small synthetic packages written to tmp_path: broken ones must be reported, a clean one
must pass.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "aevb"

# The first name under `aevb.` -> its layer: a module may import its own layer and lower ones only.
# "" is the facade, aevb/__init__.py and aevb/__main__.py: it may import anything and nothing in the package
# imports it. options.py and version.py are layer 0 in docs/architecture.md.
LAYERS = {
    "runs": 0, "distributed": 0, "options": 0, "version": 0, "bars": 0,
    "data": 1, "distributions": 1, "likelihoods": 1, "discretized": 1, "nets": 1, "optim": 1,
    "models": 2,
    "estimators": 3,
    "train": 4, "load": 4,
    "marginal": 5,
    "inspect": 6,
    "paper": 7,
    "cli": 8,
    "": 9,
}
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_TRAINER_LINES = 200  # exclusive: "under 200"


@dataclass(frozen=True)
class Import:
    """One import of a module of the package: the target's dotted name, the line, and whether it runs at import."""
    target: str
    line: int
    module_level: bool


def module_name(path: Path, root: Path) -> str:
    """Dotted name of a file under the package root; a package's `__init__.py` has the package's name."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, root: Path) -> bool:
    """Whether the dotted name is a file or a folder of the package at `root`."""
    rel = Path(*name.split(".")[1:])
    return (root / rel).with_suffix(".py").is_file() or (root / rel).is_dir()


def _runtime_nodes(tree: ast.Module):
    """(node, module_level) for every node; module_level is False inside functions and `if TYPE_CHECKING:`."""
    def walk(node, module_level):
        yield node, module_level
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            module_level = False
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                yield from walk(child, False)
            for child in node.orelse:
                yield from walk(child, module_level)
            return
        for child in ast.iter_child_nodes(node):
            yield from walk(child, module_level)
    yield from walk(tree, True)


def imports_of(path: Path, root: Path, tree: ast.Module | None = None) -> list[Import]:
    """Every import of a module of the package in one file (self-imports left out)."""
    name, top = module_name(path, root), root.name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = tree or ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node, module_level in _runtime_nodes(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level - 1 >= len(base):
                    continue  # beyond the top-level package: Python refuses it
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if _is_module(f"{source}.{a.name}", root) else source
                       for a in node.names] if source == top or source.startswith(top + ".") else []
        found += [Import(t, node.lineno, module_level) for t in targets
                  if (t == top or t.startswith(top + ".")) and t != name]
    return found


def layer_of(name: str, layers: dict[str, int] = LAYERS) -> int | None:
    """The layer of a dotted module name: by its first component under the package; the facade for the package."""
    parts = name.split(".")
    key = parts[1] if len(parts) > 1 else ""
    return layers.get("" if key == "__main__" else key)


def _lines_without_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _cycle_path(component: list[str], graph: dict[str, set[str]]) -> str:
    """One closed path through a strongly connected component, for the message: a -> b -> a."""
    members, path = set(component), [component[0]]
    while True:
        nxt = sorted(graph[path[-1]] & members)
        step = next((n for n in nxt if n == path[0]), None) if len(path) > 1 else None
        if step or not nxt:
            return " -> ".join(path + [path[0]])
        fresh = [n for n in nxt if n not in path]
        if not fresh:
            back = next(n for n in nxt if n in path)
            return " -> ".join(path[path.index(back):] + [back])
        path.append(fresh[0])


def check_package(root: Path, layers: dict[str, int] = LAYERS, trainer_package: str = "train") -> list[str]:
    """Every violation of rules (a)-(f) in the package at `root`, one readable line each."""
    problems, graph, trainers = [], {}, []
    for path in sorted(root.rglob("*.py")):
        rel, name = path.relative_to(root.parent.parent), module_name(path, root)
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
        found = imports_of(path, root, tree)
        graph[name] = {i.target for i in found if i.module_level}
        mine = layer_of(name, layers)
        if mine is None:
            problems.append(f"{rel}: (c) module {name} is in no layer: add it to LAYERS and docs/architecture.md")
        for imp in found:
            theirs = layer_of(imp.target, layers)
            if mine is not None and theirs is not None and theirs > mine:
                problems.append(f"{rel}:{imp.line}: (a) {name} (layer {mine}) imports {imp.target} "
                                f"(layer {theirs}): an upward import")
        if len(text.splitlines()) > MAX_FILE_LINES:
            problems.append(f"{rel}: (d) {len(text.splitlines())} lines, more than {MAX_FILE_LINES}")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = _lines_without_docstring(node)
                if size > MAX_FUNCTION_LINES:
                    problems.append(f"{rel}:{node.lineno}: (e) function {node.name} has {size} lines without "
                                    f"its docstring, more than {MAX_FUNCTION_LINES}")
            elif isinstance(node, ast.ClassDef) and node.name == "Trainer":
                trainers.append((rel, node, name.split(".")[1:2] == [trainer_package]))
    for component in cycles(graph):
        problems.append(f"(b) import cycle at module level: {_cycle_path(component, graph)}")
    for rel, node, in_train in trainers:
        size = node.end_lineno - node.lineno + 1
        if size >= MAX_TRAINER_LINES:
            problems.append(f"{rel}:{node.lineno}: (f) class Trainer has {size} lines, not under {MAX_TRAINER_LINES}")
        if not in_train:
            problems.append(f"{rel}:{node.lineno}: (f) class Trainer outside {root.name}/{trainer_package}/")
    if not any(in_train for _, _, in_train in trainers):
        problems.append(f"(f) no class Trainer under {root.name}/{trainer_package}/")
    return problems


def test_the_package_keeps_its_layers():
    """Rules (a)-(f) on the real src/aevb: every violation is listed."""
    problems = check_package(PACKAGE)
    assert not problems, f"{len(problems)} architecture violation(s):\n" + "\n".join(problems)


def test_the_real_package_is_seen():
    """The checker reads the real package: its files, the facade's imports, and an edge into every layer."""
    files = list(PACKAGE.rglob("*.py"))
    assert len(files) >= 20
    facade = {i.target for i in imports_of(PACKAGE / "__init__.py", PACKAGE)}
    assert {"aevb.estimators", "aevb.train"} <= facade, facade
    layers_reached = {layer_of(i.target) for f in files for i in imports_of(f, PACKAGE)}
    assert set(range(0, 9)) <= layers_reached, layers_reached  # the facade (9) is imported by nobody


def _documented_layers(text: str) -> dict[str, int]:
    """name -> number from docs/architecture.md's layer block: ` 4  train/ ...` then `    load.py ...` (same layer)."""
    block = re.search(r"```text\n(.*?)```", text, re.S)
    found, number = {}, None
    for line in (block.group(1) if block else "").splitlines():
        row = re.match(r"\s*(\d+)?\s+(\w+)(?:/|\.py)\s", line + " ")
        if row:
            number = int(row.group(1)) if row.group(1) else number
            found.setdefault(row.group(2), number)
    return found


def test_the_layer_table_is_the_documented_one():
    """Every layer key appears in docs/architecture.md as `name/` or `name.py`, with the same number where the
    page's layer block gives one."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [key for key in LAYERS if key and not re.search(rf"(?<![\w/]){key}(/|\.py\b)", text)]
    assert not missing, f"in LAYERS but not in docs/architecture.md: {missing}"
    documented = _documented_layers(text)
    differ = {k: (LAYERS[k], documented[k]) for k in LAYERS if k in documented and documented[k] != LAYERS[k]}
    assert not differ, f"layer numbers (test, docs) that differ: {differ}"


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    """Write a synthetic package named aevb under tmp_path."""
    root = tmp_path / "src" / "aevb"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


TRAINER = {"train/__init__.py": "", "train/trainer.py": "class Trainer:\n    pass\n"}


def test_the_checker_reports_upward_imports_and_cycles(tmp_path):
    """Upward imports (module level, in a function, of the facade) and cycles (between modules, and a submodule
    importing its package's __init__) are reported; function-level and TYPE_CHECKING imports make no cycle."""
    root = _package(tmp_path, {
        **TRAINER,
        "__init__.py": "from .version import __version__\n",
        "version.py": "__version__ = '1'\n",
        "runs.py": "from .estimators import x\n",  # layer 0 -> 3, and back below: a cycle
        "estimators.py": "from . import runs\nx = 1\n",
        "nets.py": "def f():\n    from aevb.cli import main\n",  # upward, inside a function
        "optim.py": "from aevb import __version__\n",  # the facade, from inside the package
        "models/__init__.py": "from .mlp import VAE\n",
        "models/mlp.py": "from . import registry\nfrom . import VAE_NAME\nVAE = 1\n",  # back into models/__init__
        "models/registry.py": "",
        "data/__init__.py": "import aevb.data.sets\n",
        "data/sets.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import files\n",
        "data/files.py": "from . import sets\n\n\ndef g():\n    from aevb.data import sets\n",
        "cli/__init__.py": "def main():\n    pass\n",
    })
    problems = check_package(root)
    joined = "\n".join(problems)
    for expected in [
        "src/aevb/runs.py:1: (a) aevb.runs (layer 0) imports aevb.estimators (layer 3): an upward import",
        "src/aevb/nets.py:2: (a) aevb.nets (layer 1) imports aevb.cli (layer 8): an upward import",
        "src/aevb/optim.py:1: (a) aevb.optim (layer 1) imports aevb (layer 9): an upward import",
        "(b) import cycle at module level: aevb.estimators -> aevb.runs -> aevb.estimators",
        "(b) import cycle at module level: aevb.models -> aevb.models.mlp -> aevb.models",
    ]:
        assert expected in joined, f"not reported: {expected}\nreported:\n{joined}"
    assert len(problems) == 5, joined  # data/ (TYPE_CHECKING, function level) and models/registry are fine


def test_the_checker_reports_unknown_modules_long_code_and_a_big_trainer(tmp_path):
    """A module outside the layer table, a 401-line file, a 61-line function (docstring aside) and a Trainer of
    200 lines are reported; a docstring does not count towards a function's length."""
    long_function = "def f():\n    '''doc\n    string'''\n" + "    x = 1\n" * 60
    fine_function = "def g():\n    '''doc\n    string'''\n" + "    x = 1\n" * 59
    root = _package(tmp_path, {
        "__init__.py": "",
        "stray.py": "",
        "nets.py": long_function + fine_function,
        "optim.py": "x = 1\n" * 401,
        "train/__init__.py": "",
        "train/trainer.py": "class Trainer:\n" + "    x = 1\n" * 199,
    })
    joined = "\n".join(check_package(root))
    assert "src/aevb/stray.py: (c) module aevb.stray is in no layer" in joined
    assert "src/aevb/nets.py:1: (e) function f has 61 lines without its docstring" in joined
    assert "function g" not in joined
    assert "src/aevb/optim.py: (d) 401 lines, more than 400" in joined
    assert "src/aevb/train/trainer.py:1: (f) class Trainer has 200 lines, not under 200" in joined
    assert len(joined.splitlines()) == 4, joined


def test_the_checker_requires_the_trainer_in_train(tmp_path):
    """A package without a Trainer class under train/ is reported, so rule (f) cannot pass by a rename or a move."""
    root = _package(tmp_path, {"__init__.py": "", "runs.py": "class Trainer:\n    pass\n"})
    assert check_package(root) == ["src/aevb/runs.py:1: (f) class Trainer outside aevb/train/",
                                   "(f) no class Trainer under aevb/train/"]


def test_the_checker_passes_a_clean_package(tmp_path):
    """Downward and same-layer imports, in every spelling, a facade importing everything: no violation."""
    root = _package(tmp_path, {
        **TRAINER,
        "__init__.py": "from .train import fit\nfrom .estimators import x\nimport aevb.runs\n",
        "__main__.py": "from aevb import fit\nfrom .cli import main\n",
        "runs.py": "",
        "distributed.py": "from . import runs\n",
        "estimators.py": "from . import runs\nfrom .models import mlp\nx = 1\n",
        "models/__init__.py": "from .mlp import VAE\n",
        "models/mlp.py": "from ..runs import *\nfrom .. import distributed\nimport aevb.runs as r\nVAE = r\n",
        "train/fit.py": "from ..estimators import x\nfrom .trainer import Trainer\n\n\ndef fit():\n    return x\n",
        "cli/__init__.py": "from ..train.fit import fit\n\n\ndef main():\n    from aevb.paper import figures\n",
        "paper/__init__.py": "",
        "paper/figures.py": "from ..models.mlp import VAE\n",
    })
    assert check_package(root) == []


def test_imports_are_resolved_to_files(tmp_path):
    """`from pkg import name` is pkg.name when that is a file or a folder, else pkg; relative levels count up."""
    root = _package(tmp_path, {
        "__init__.py": "",
        "train/__init__.py": "",
        "train/sub/__init__.py": "",
        "train/sub/deep.py": ("from ... import runs\nfrom ...models import VAE\nfrom .. import trainer, fit\n"
                              "from . import other\nimport aevb.models.mlp\nfrom aevb.models import mlp, registry\n"),
        "train/trainer.py": "",
        "runs.py": "",
        "models/__init__.py": "",
        "models/mlp.py": "",
        "models/registry/__init__.py": "",
    })
    targets = [i.target for i in imports_of(root / "train/sub/deep.py", root)]
    assert targets == ["aevb.runs", "aevb.models", "aevb.train.trainer", "aevb.train", "aevb.train.sub",
                       "aevb.models.mlp", "aevb.models.mlp", "aevb.models.registry"]


@pytest.mark.parametrize("name, layer", [("aevb", 9), ("aevb.__main__", 9), ("aevb.cli.train", 8),
                                         ("aevb.train.trainer", 4), ("aevb.runs", 0), ("aevb.nowhere", None)])
def test_layer_lookup(name, layer):
    """A module's layer is its first component's under aevb; aevb and aevb.__main__ are the facade."""
    assert layer_of(name) == layer
