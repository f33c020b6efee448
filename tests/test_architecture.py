"""The package's layers (docs/architecture.md), checked from the code's own import statements with `ast`.

A module imports only from its own layer or lower ones; the import graph between files has no cycle; every module
belongs to a known layer; no file is over 400 lines, no function over 60 (docstring not counted) and the Trainer
class under 200. The checker runs on the real package and on small synthetic packages that must fail.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "aevb"

# The first name under `aevb.` -> its layer (lower imports nothing higher). "" is the facade (aevb/__init__.py and
# aevb/__main__.py), which may import anything and which nothing inside the package imports.
LAYERS = {
    "runs": 0, "distributed": 0, "options": 0, "version": 0,
    "data": 1, "distributions": 1, "likelihoods": 1, "nets": 1, "optim": 1,
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
MAX_TRAINER_LINES = 200


def _module_name(path: Path, root: Path) -> str:
    """Dotted name of a file under the package root (package `__init__` files take the package's name)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def _imports(path: Path, root: Path) -> set[str]:
    """Every module of the package that the file imports (module level and inside functions)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = root.name
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == top or a.name.startswith(top + ".")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == top or target.startswith(top + ".")):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _is_module(sub, root) else target)
    found.discard(name)
    return found


def _layer(name: str) -> int | None:
    parts = name.split(".")
    key = parts[1] if len(parts) > 1 else ""
    if key == "__main__":
        key = ""
    return LAYERS.get(key)


def _body_lines(node) -> int:
    """Lines of a function without its docstring."""
    lines = node.end_lineno - node.lineno + 1
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        lines -= body[0].end_lineno - body[0].lineno + 1
    return lines


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check_package(root: Path, layer_of=_layer) -> list[str]:
    """Every violation of the rules above in the package at `root`, one line each."""
    problems = []
    files = sorted(root.rglob("*.py"))
    graph = {}
    for path in files:
        name = _module_name(path, root)
        graph[name] = _imports(path, root)
        rel = path.relative_to(root.parent)
        mine = layer_of(name)
        if mine is None:
            problems.append(f"{rel}: module {name} is in no layer (add it to LAYERS and docs/architecture.md)")
            continue
        for target in sorted(graph[name]):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                problems.append(f"{rel}: {name} (layer {mine}) imports {target} (layer {theirs}): an upward import")
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            problems.append(f"{rel}: {len(text.splitlines())} lines (at most {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > MAX_FUNCTION_LINES:
                problems.append(f"{rel}:{node.lineno}: function {node.name} has {_body_lines(node)} lines "
                                f"(at most {MAX_FUNCTION_LINES})")
            if isinstance(node, ast.ClassDef) and node.name == "Trainer":
                size = node.end_lineno - node.lineno + 1
                if size >= MAX_TRAINER_LINES:
                    problems.append(f"{rel}: class Trainer has {size} lines (under {MAX_TRAINER_LINES})")
    for component in _cycles(graph):
        problems.append(f"import cycle: {' -> '.join(component)}")
    return problems


def test_the_package_keeps_its_layers():
    problems = check_package(PACKAGE)
    assert not problems, "\n".join(problems)


def test_the_layer_table_is_the_documented_one():
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [key for key in LAYERS if key and key not in text]
    assert not missing, f"layers not in docs/architecture.md: {missing}"


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "aevb" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "aevb"


def test_the_checker_finds_an_upward_import_and_a_cycle(tmp_path):
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "runs.py": "from .estimators import x\n",  # layer 0 importing layer 3
        "estimators.py": "from . import runs\nx = 1\n",  # and back: a cycle
        "train/__init__.py": "from .trainer import Trainer\n",
        "train/trainer.py": "from . import Trainer\n",  # a submodule importing its package's __init__
        "stray.py": "",
    })
    problems = "\n".join(check_package(pkg))
    assert "aevb.runs (layer 0) imports aevb.estimators (layer 3)" in problems
    assert "import cycle: aevb.estimators -> aevb.runs" in problems
    assert "import cycle: aevb.train -> aevb.train.trainer" in problems
    assert "module aevb.stray is in no layer" in problems


def test_the_checker_finds_long_files_and_functions(tmp_path):
    long_function = "def f():\n    '''doc\n    string'''\n" + "    x = 1\n" * 61
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "nets.py": long_function,
        "optim.py": "x = 1\n" * 401,
        "train/__init__.py": "class Trainer:\n" + "    x = 1\n" * 200,
    })
    problems = "\n".join(check_package(pkg))
    assert "function f has 62 lines" in problems  # 61 statements + the def line; the docstring is not counted
    assert "optim.py: 401 lines" in problems
    assert "class Trainer has 201 lines" in problems


def test_the_checker_passes_a_clean_package(tmp_path):
    pkg = _write(tmp_path, {
        "__init__.py": "from .train import fit\n",
        "runs.py": "",
        "estimators.py": "from . import runs\n",
        "train/__init__.py": "from .fit import fit\n",
        "train/fit.py": "from ..estimators import runs\nfrom .. import runs as r\n\n\ndef fit():\n    return r\n",
    })
    assert check_package(pkg) == []


@pytest.mark.parametrize("name, layer", [("aevb", 9), ("aevb.cli.train", 8), ("aevb.train.trainer", 4),
                                         ("aevb.runs", 0)])
def test_layer_lookup(name, layer):
    assert _layer(name) == layer
