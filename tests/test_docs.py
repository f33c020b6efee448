"""Docs that cannot drift.

- Every `aevb ...` command written in README.md and docs/**/*.md (fenced shell blocks and inline code spans) names
  a real subcommand, real options of it, and literal values its types and choices accept (tests/doccheck.py
  walks the real parser, `aevb.cli.build_parser()`).
- The checker itself reports a misspelled flag, an unknown subcommand and a bad choice, extracts commands from the
  shell forms the docs use, and finds enough commands in the real docs that an extraction bug cannot pass quietly.
- docs/cli.md lists every subcommand, and under it every option string and choice of that subcommand, and no
  option the parser does not have; it is exactly what `python docs/gen_cli.py` writes.
- The README's Python example runs on the real MNIST (shortened to 3,000 datapoints) and reaches a sane ELBO.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import re
from pathlib import Path

import pytest

from aevb.cli import build_parser
from doccheck import check_argv, check_markdown, find_commands, options, subcommands

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


def _check_docs(parser) -> tuple[dict[str, list], list[str]]:
    """Commands found per file (relative path) and every problem in all doc files."""
    found, problems = {}, []
    for path in DOC_FILES:
        where = str(path.relative_to(ROOT))
        found[where], file_problems = check_markdown(path.read_text(encoding="utf-8"), where, parser)
        problems += file_problems
    return found, problems


def test_every_documented_command_matches_the_parser(parser):
    """Each aevb command in README.md and docs/ uses a real subcommand, real options and accepted values."""
    _, problems = _check_docs(parser)
    assert not problems, f"{len(problems)} documented command(s) disagree with the parser:\n" + "\n".join(problems)


def test_the_docs_hold_enough_commands_to_check(parser):
    """Extraction finds >= 10 commands in the README, >= 50 in all, and an example of every subcommand."""
    found, _ = _check_docs(parser)
    readme = len(found["README.md"])
    total = sum(map(len, found.values()))
    assert readme >= 10, f"only {readme} aevb commands found in README.md: is the extraction broken?"
    assert total >= 50, f"only {total} aevb commands found in README.md and docs/: is the extraction broken?"
    used = {c.argv[0] for commands in found.values() for c in commands}
    missing = sorted(set(subcommands(parser)) - used)
    assert not missing, f"no documented command uses the subcommand(s) {missing}"


SYNTHETIC = """# A page with mistakes

```bash
aevb train --latent-dimm 5 --out runs/x        # a misspelled flag
aevb trian --samples 1e6
aevb train --likelihood bernouli \\
    --hidden 500
aevb reproduce fig9 --out x
aevb train --preset paper-mnist-20 && aevb eval runs/x --method is --k 5000
aevb restore runs/x --task inpaint --factor 3
aevb sample runs/x 16
aevb --verison
```

```console
$ aevb eval runs/x --method iss
aevb eval: this is output, not a command --nonsense
```

Inline: `aevb sample RUN --nn 4`, and a placeholder that is fine: `aevb eval RUN --method METHOD`.
"""


def test_the_checker_reports_misspelled_flags_subcommands_and_choices(parser):
    """A synthetic page with one mistake of each kind: each is reported at its line; correct commands are not."""
    commands, problems = check_markdown(SYNTHETIC, "doc.md", parser)
    joined = "\n".join(problems)
    expected = [
        "doc.md:4: aevb train: unknown option --latent-dimm (did you mean --latent-dim?)",
        "doc.md:5: aevb: unknown subcommand 'trian' (did you mean train?)",
        "doc.md:6: aevb train --likelihood: 'bernouli' is not one of",
        "doc.md:8: aevb reproduce figure: 'fig9' is not one of fig2, fig3, fig4, fig5",
        "doc.md:10: aevb restore --factor: '3' is not one of 2, 4",
        "doc.md:11: aevb sample: unexpected argument '16'",
        "doc.md:12: aevb: unknown option --verison before the subcommand (did you mean --version?)",
        "doc.md:16: aevb eval --method: 'iss' is not one of",
        "doc.md:20: aevb sample: unknown option --nn (did you mean --n?)",
    ]
    for line in expected:
        assert line in joined, f"not reported: {line}\nreported:\n{joined}"
    assert len(problems) == len(expected), joined  # line 9 (two commands) and line 20's second span pass
    assert len(commands) == 12


@pytest.mark.parametrize("argv", [
    ["--version"], ["-h"], ["train", "--help"], ["train", "--samples", "1e7", "--likelihood=gaussian"],
    ["eval", "RUN", "--method", "is|ais|hmc|grid"], ["reproduce", "fig2|fig3", "--out", "DIR"],
    ["restore", "<run>", "--task", "superres", "--factor", "4", "--images", "a.png", "b.png"],
    ["SUBCOMMAND", "--help"], ["train", "--preset", "NAME", "[flags]"], ["eval", "RUN", "--limit", "N"],
])
def test_the_checker_accepts_correct_commands(parser, argv):
    """Right commands, usage notation and placeholders (RUN, <run>, [flags], a|b) raise nothing."""
    assert check_argv(argv, parser) == []


@pytest.mark.parametrize("line, argv", [
    ("aevb train --samples 1e6", ["train", "--samples", "1e6"]),
    ("$ aevb eval runs/x", ["eval", "runs/x"]),
    ("AEVB_DATA=x OMP_NUM_THREADS=1 aevb eval runs/x  # comment", ["eval", "runs/x"]),
    ("taskset -c 0 aevb train --threads 1", ["train", "--threads", "1"]),
    ("time aevb train --threads 1", ["train", "--threads", "1"]),
    ("python -m aevb train --seed 1", ["train", "--seed", "1"]),
    ("python3 -X importtime -m aevb eval r", ["eval", "r"]),
    (".venv/bin/aevb plot r", ["plot", "r"]),
    ("torchrun --standalone --nproc_per_node=2 -m aevb train --shards 2", ["train", "--shards", "2"]),
    ("torchrun --nnodes 2 --rdzv_endpoint h:29400 $(which aevb) train --device cuda", ["train", "--device", "cuda"]),
    ("python -m torch.distributed.run --nproc_per_node 2 -m aevb train", ["train"]),
    ("aevb train --out r > log.txt 2>&1", ["train", "--out", "r"]),
    ("pip install aevb", None),
    ("python -c 'import aevb'", None),
    ("python -m pytest tests/test_docs.py", None),
    ("ls src/aevb/cli && cat ~/.cache/aevb/x", None),
])
def test_extraction_of_one_command(line, argv):
    """Prompts, env assignments, wrappers, python -m, torchrun, comments, redirections; non-aevb programs skipped."""
    commands, problems = find_commands(f"```bash\n{line}\n```")
    assert not problems
    assert [list(c.argv) for c in commands] == ([argv] if argv else [])


def test_extraction_of_blocks_and_spans():
    """Continuations keep the first line's number; && ; | split commands; python blocks and prose are skipped."""
    text = "\n".join([
        "Intro with `aevb eval RUN` and `pip install aevb` and `src/aevb/cli/` and a span",  # 1
        "`aevb sample RUN",  # 2: a span wrapping over two lines
        "--n 4`.",  # 3
        "```sh",  # 4
        "aevb train \\",  # 5
        "    --seed 1 && aevb eval r; aevb plot r | tee x",  # 6
        "```",  # 7
        "```python",  # 8
        "import aevb  # aevb train --nope",  # 9
        "```",  # 10
        "~~~",  # 11
        "aevb report r",  # 12
        "~~~",  # 13
    ])
    commands, _ = find_commands(text)
    assert [(c.line, list(c.argv)) for c in commands] == [
        (1, ["eval", "RUN"]), (2, ["sample", "RUN", "--n", "4"]), (5, ["train", "--seed", "1"]),
        (5, ["eval", "r"]), (5, ["plot", "r"]), (12, ["report", "r"]),
    ]


def _cli_sections(text: str) -> dict[str, str]:
    """`## aevb NAME` heading -> the text of its section in docs/cli.md."""
    parts = re.split(r"^## aevb (\S+)\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_the_cli_page_lists_every_subcommand_option_and_choice(parser):
    """docs/cli.md has a `## aevb NAME` section per subcommand listing each of its option strings and choices
    (help excepted: the page says `aevb SUBCOMMAND --help` once), and no `--flag` row the parser lacks."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    sections, problems = _cli_sections(text), []
    assert "--help" in text
    for name, sub in subcommands(parser).items():
        if name not in sections:
            problems.append(f"no section '## aevb {name}'")
            continue
        section = sections[name]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            problems += [f"aevb {name}: option {s} not listed" for s in action.option_strings
                         if f"`{s}`" not in section]
            problems += [f"aevb {name} {action.option_strings or action.dest}: choice {c} not listed"
                         for c in action.choices or () if f"`{c}`" not in section]
        known = options(sub)
        problems += [f"aevb {name}: lists {flag}, which the parser does not have"
                     for flag in re.findall(r"^\| `(-[\w-]+)`", section, flags=re.M) if flag not in known]
    problems += [f"section '## aevb {name}' is no subcommand" for name in sections if name not in subcommands(parser)]
    assert not problems, "docs/cli.md disagrees with the parser (run python docs/gen_cli.py):\n" + "\n".join(problems)


def test_the_cli_page_is_what_gen_cli_writes():
    """docs/cli.md is byte for byte the output of docs/gen_cli.py's render(): regenerated after every flag change."""
    spec = importlib.util.spec_from_file_location("gen_cli", ROOT / "docs" / "gen_cli.py")
    gen_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_cli)  # defines render(); writes nothing (that is under __main__)
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == gen_cli.render(), \
        "docs/cli.md is stale: run python docs/gen_cli.py"


def test_the_readme_python_example_runs(shared_data, tmp_path, monkeypatch):
    """The README's first ```python block, with samples=1_000_000 cut to 3_000, runs on the real MNIST found
    through $AEVB_DATA (an empty cache, so nothing else can supply it) and ends with a finite test ELBO > -550."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```python[ \t]*\n(.*?)^```", text, re.S | re.M)
    assert block, "README.md has no ```python block"
    code = block.group(1)
    assert "samples=1_000_000" in code, "the README example should train on samples=1_000_000"
    monkeypatch.setenv("AEVB_DATA", str(shared_data))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code.replace("samples=1_000_000", "samples=3_000"), "README.md (python block)", "exec"), namespace)
    elbo = namespace["history"][-1]["test_elbo"]
    assert math.isfinite(elbo) and -550 < elbo < 0, elbo  # Bernoulli on grey levels: the ELBO is <= 0
    assert not (tmp_path / "cache" / "aevb").exists() or not any((tmp_path / "cache" / "aevb").rglob("*.gz")), \
        "the example downloaded MNIST instead of reading $AEVB_DATA"
