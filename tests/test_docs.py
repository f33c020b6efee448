"""Docs that cannot drift: every `aevb ...` command in README.md and docs/ is checked against the real parser,
docs/cli.md lists every subcommand and flag, and the README's Python example runs."""
from __future__ import annotations

import argparse
import math
import re
import shlex
from pathlib import Path

import pytest

from aevb.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
INLINE = re.compile(r"`(aevb [^`]+)`")
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "text"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of `parser` (argparse keeps them in the choices of its _SubParsersAction)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _is_placeholder(value: str) -> bool:
    return (any(c in value for c in "<>${}") or value == "..." or value.endswith("...")
            or (value.isupper() and value.isalpha()) or re.fullmatch(r"[A-Z][A-Z_0-9]*", value) is not None)


def commands(text: str) -> list[tuple[int, list[str]]]:
    """(line number, argv after `aevb`) of every aevb command in fenced shell blocks and inline code spans."""
    found, lang, block = [], None, []
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line.strip())
        if fence:
            if lang is None:
                lang, block = fence.group(1).lower(), []
            else:
                if lang in SHELL_LANGS:
                    found += _from_shell(block)
                lang = None
            continue
        if lang is not None:
            block.append((number, line))
            continue
        for span in INLINE.findall(line):
            found += _from_shell([(number, span)])
    return found


def _from_shell(lines: list[tuple[int, str]]) -> list[tuple[int, list[str]]]:
    """Join continuation lines, drop prompts and comments, split on && ; | and find the aevb invocations."""
    out, buffer, first = [], "", None
    for number, line in lines:
        line = re.sub(r"^\s*\$ ", "", line)
        if first is None:
            first = number
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        buffer += line
        out += [(first, argv) for argv in _invocations(buffer)]
        buffer, first = "", None
    return out


def _invocations(command: str) -> list[list[str]]:
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return []
    pieces, current = [], []
    for w in words:
        if w in ("&&", "||", ";", "|"):
            pieces.append(current)
            current = []
        else:
            current.append(w)
    pieces.append(current)
    found = []
    for words in pieces:
        words = [w.strip("[]") for w in words]
        i = 0
        while i < len(words) and _is_prefix(words[i]):  # env assignments, time, taskset -c 0, ...
            i += 1
        if i < len(words) and words[i] == "aevb":
            found.append(words[i + 1:])
        elif i < len(words) and words[i] in ("python", "python3", "torchrun") and "-m" in words[i:]:
            j = words.index("-m", i)
            if j + 1 < len(words) and words[j + 1] == "aevb":
                found.append(words[j + 2:])
    return found


def _is_prefix(word: str) -> bool:
    """A word that may stand before the program: VAR=value, a wrapper command or its options."""
    return (re.fullmatch(r"[A-Z_][A-Z_0-9]*=\S*", word) is not None or word in ("time", "nohup", "taskset", "-c")
            or re.fullmatch(r"[\d,-]+", word) is not None)


def check(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Problems of one command against the parser: unknown subcommand, flag or choice."""
    subs = _subparsers(parser)
    if not argv or argv[0].startswith("-"):
        known = {s for a in parser._actions for s in a.option_strings}
        return [f"unknown option {a}" for a in argv if a.startswith("-") and a.split("=")[0] not in known]
    name, rest = argv[0], argv[1:]
    if name not in subs:
        return [] if _is_placeholder(name) else [f"unknown subcommand {name!r}"]
    sub = subs[name]
    options = {s: a for a in sub._actions for s in a.option_strings}
    positionals = [a for a in sub._actions if not a.option_strings]
    problems, i, k = [], 0, 0
    while i < len(rest):
        word = rest[i]
        if word.startswith("-") and len(word) > 1 and not re.fullmatch(r"-[\d.e]+", word):
            flag, _, inline = word.partition("=")
            action = options.get(flag)
            if action is None:
                problems.append(f"aevb {name}: unknown flag {flag}")
                i += 1
                continue
            takes = action.nargs != 0
            value = inline or (rest[i + 1] if takes and not inline and i + 1 < len(rest) else None)
            if takes and value is not None and action.choices and not _is_placeholder(value):
                for alternative in value.split("|"):  # a|b|c: each alternative must be a choice
                    if _convert(action, alternative) not in action.choices:
                        problems.append(f"aevb {name} {flag}: {alternative!r} is not one of "
                                        f"{sorted(map(str, action.choices))}")
            i += 1 + (1 if takes and not inline else 0)
            while action.nargs == "+" and i < len(rest) and not rest[i].startswith("-"):
                i += 1
            continue
        if k < len(positionals):
            action = positionals[k]
            bad = [w for w in word.split("|") if action.choices and not _is_placeholder(w) and w not in action.choices]
            problems += [f"aevb {name}: {w!r} is not one of {sorted(action.choices)}" for w in bad]
            k += 1
        i += 1
    return problems


def _convert(action, value):
    try:
        return action.type(value) if callable(action.type) else value
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return value


def check_text(text: str, where: str, parser=None) -> tuple[int, list[str]]:
    parser = parser or build_parser()
    found = commands(text)
    problems = [f"{where}:{line}: {p}" for line, argv in found for p in check(argv, parser)]
    return len(found), problems


def test_every_documented_command_exists():
    parser = build_parser()
    total, problems = 0, []
    for path in DOC_FILES:
        n, found = check_text(path.read_text(), str(path.relative_to(ROOT)), parser)
        total, problems = total + n, problems + found
    assert not problems, "\n".join(problems)
    assert total >= 25, f"only {total} aevb commands found in README.md and docs/: is the extraction broken?"


def test_the_checker_reports_misspelled_flags_subcommands_and_choices():
    text = "\n".join([
        "```bash",
        "aevb train --latent-dimm 5 --out runs/x   # a misspelled flag",
        "aevb trian --samples 1e6",
        "aevb train --likelihood bernouli \\",
        "    --hidden 500",
        "aevb reproduce fig9 --out x",
        "aevb train --preset paper-mnist-20 && aevb eval runs/x --method is --k 5000",
        "```",
        "Inline: `aevb sample RUN --nn 4`.",
    ])
    n, problems = check_text(text, "doc.md")
    joined = "\n".join(problems)
    assert n == 7
    assert "doc.md:2: aevb train: unknown flag --latent-dimm" in joined
    assert "doc.md:3: unknown subcommand 'trian'" in joined
    assert "doc.md:4: aevb train --likelihood: 'bernouli' is not one of" in joined
    assert "doc.md:6: aevb reproduce: 'fig9' is not one of" in joined
    assert "doc.md:9: aevb sample: unknown flag --nn" in joined
    assert len(problems) == 5  # the correct line 7 passes


def test_the_cli_page_lists_every_subcommand_and_flag():
    text = (ROOT / "docs" / "cli.md").read_text()
    missing = []
    for name, sub in _subparsers(build_parser()).items():
        if f"aevb {name}" not in text:
            missing.append(f"aevb {name}")
        for action in sub._actions:
            missing += [f"aevb {name} {s}" for s in action.option_strings
                        if s.startswith("--") and s != "--help" and f"`{s}" not in text]
    assert not missing, "not in docs/cli.md (run python docs/gen_cli.py): " + ", ".join(missing)


def test_the_readme_python_example_runs(shared_data, tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "samples=1_000_000" in code
    monkeypatch.setenv("AEVB_DATA", str(shared_data))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code.replace("samples=1_000_000", "samples=3_000"), "README.md", "exec"), namespace)
    elbo = namespace["history"][-1]["test_elbo"]
    assert math.isfinite(elbo) and -550 < elbo < -100
    assert tuple(namespace["images"].shape) == (16, 784)
    assert abs(namespace["elbo"] - elbo) < 5  # the same bound, evaluated again


@pytest.mark.parametrize("line, argv", [
    ("aevb train --samples 1e6", ["train", "--samples", "1e6"]),
    ("taskset -c 0 aevb train --threads 1", ["train", "--threads", "1"]),
    ("torchrun --nproc_per_node=2 -m aevb train --shards 2", ["train", "--shards", "2"]),
    ("pip install aevb", None),
    ("AEVB_DATA=x aevb eval runs/x  # comment", ["eval", "runs/x"]),
])
def test_extraction(line, argv):
    found = commands(f"```bash\n{line}\n```")
    assert [a for _, a in found] == ([argv] if argv else [])
