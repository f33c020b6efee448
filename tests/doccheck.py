"""Find the `aevb ...` commands written in Markdown and check each against the real argparse parser.

Extraction (`find_commands`):
- fenced code blocks in a shell-like language (bash, sh, shell, zsh, console, shell-session, text, txt or none);
  a block in which some line starts with a `$ ` prompt is a terminal transcript: only its prompt lines (and their
  `\\` continuations) are commands, the other lines are output;
- inline code spans anywhere else (a span may wrap over lines; the `\\|` of a Markdown table cell is a `|`);
- a command is joined over `\\` line continuations, tokenized with `shlex` (`# comments` dropped), cut into pieces
  at `&&`, `||`, `;`, `|` and `&`; redirections (`> log`, `2>&1`) are dropped;
- in each piece, after leading `VAR=value` assignments and the wrappers `time`, `nohup`, `env`, `taskset [-c] CPUS`,
  `numactl --opts`, the program must be `aevb` (or a path ending in `/bin/aevb`, or `$(which aevb)`),
  `python[3] [opts] -m aevb` or `torchrun [torchrun options] -m aevb | aevb`; anything else (`pip install aevb`,
  `src/aevb/...`, `import aevb`) is not an aevb command.

Checking (`check_argv`) walks the parser's own structure, with no parsing of the command (values may be
placeholders):
- `parser._actions`: the top-level options (`-h`, `--version`), allowed only before the subcommand;
- `parser._subparsers._group_actions`: the actions of the subparsers group; the one `_SubParsersAction` among
  them has `.choices`, a dict from subcommand name (aliases included) to its own ArgumentParser;
- in a subcommand's `_actions`, an action with `option_strings` is an option (`nargs` says how many values it
  takes, 0 for a switch); one without is a positional argument, in order (reproduce's `figure`).
Each `--flag`, `--flag=value` or `-x` must be an option of that subcommand. A literal value (see `is_placeholder`)
must pass the option's `type` and be one of its `choices`; `a|b|c` means each of a, b and c. Positionals with
choices are checked the same way, and a literal word beyond the last positional is reported.
"""
from __future__ import annotations

import argparse
import difflib
import re
import shlex
from dataclasses import dataclass

SHELL_LANGS = {"", "bash", "sh", "shell", "zsh", "console", "shell-session", "text", "txt"}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
INLINE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
WHICH = re.compile(r"\$\(\s*(?:which|command -v)\s+aevb\s*\)|`\s*(?:which|command -v)\s+aevb\s*`")
SEPARATORS = {"&&", "||", ";", "|", "&"}
WRAPPERS = {"time", "nohup", "env", "exec", "command"}
PYTHON = re.compile(r"(?:\S*/)?python(?:3(?:\.\d+)?)?")


@dataclass(frozen=True)
class Command:
    """One aevb command found in Markdown: the line it starts on, the words after the program, `aevb ARGV`."""
    line: int
    argv: tuple[str, ...]
    text: str


def find_commands(markdown: str) -> tuple[list[Command], list[tuple[int, str]]]:
    """All aevb commands of a Markdown text, and (line, problem) for the commands that cannot be tokenized."""
    commands, problems, prose = [], [], []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            prose.append(lines[i])
            i += 1
            continue
        fence, lang = opening.group(1), opening.group(2).lower()
        close = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body = []
        prose.append("")
        i += 1
        while i < len(lines) and not close.match(lines[i]):
            body.append((i + 1, lines[i]))
            prose.append("")
            i += 1
        if i < len(lines):
            prose.append("")
            i += 1
        if lang in SHELL_LANGS:
            for number, command in _logical_lines(body):
                _add(commands, problems, number, command)
    text = "\n".join(prose)
    for span in INLINE_SPAN.finditer(text):
        content = span.group(2)
        if "\n\n" in content:  # an unmatched backtick: no span crosses a paragraph
            continue
        _add(commands, problems, text.count("\n", 0, span.start(2)) + 1, " ".join(content.split()))
    commands.sort(key=lambda c: c.line)
    return commands, problems


def _logical_lines(body: list[tuple[int, str]]):
    """(first line number, command) of a shell block: `\\` continuations joined, `$ ` prompts handled."""
    transcript = any(re.match(r"\s*\$ ", line) for _, line in body)
    buffer, first = [], None
    for number, line in body:
        if not buffer:
            prompt = re.match(r"\s*\$ ", line)
            if transcript and not prompt:
                continue  # output of a command in a transcript
            line, first = (line[prompt.end():] if prompt else line), number
        stripped = line.rstrip()
        if stripped.endswith("\\") and not stripped.endswith("\\\\"):
            buffer.append(stripped[:-1])
            continue
        buffer.append(line)
        yield first, " ".join(buffer)
        buffer = []
    if buffer:
        yield first, " ".join(buffer)


def _add(commands: list[Command], problems: list[tuple[int, str]], number: int, command: str) -> None:
    try:
        for argv in invocations(command):
            if not argv:  # the bare program name, as in "`aevb` has seven subcommands": nothing to check
                continue
            commands.append(Command(number, tuple(argv), "aevb " + shlex.join(argv)))
    except ValueError as exc:
        if re.search(r"(^|[\s;&|(])aevb(\s|$)", command):
            problems.append((number, f"cannot split {command.strip()!r} into words ({exc})"))


def invocations(command: str) -> list[list[str]]:
    """The argument lists after `aevb` of every aevb invocation in one shell command line."""
    words = shlex.split(WHICH.sub("aevb", command), comments=True)
    pieces, current = [], []
    skip_next = False
    for word in words:
        if skip_next:
            skip_next = False
        elif word in SEPARATORS:
            pieces.append(current)
            current = []
        elif re.fullmatch(r"\d*>>?(&\d+)?|&>|<", word):  # a redirection; its target is the next word
            skip_next = not word.endswith(tuple("0123456789"))
        elif re.fullmatch(r"\d*>>?[^>&]\S*", word) and not word.endswith(">"):  # >log.txt
            continue
        elif word.endswith(";") and len(word) > 1:
            current.append(word[:-1])
            pieces.append(current)
            current = []
        else:
            current.append(word)
    pieces.append(current)
    found = [_program_argv(piece) for piece in pieces]
    return [[_clean(w) for w in argv] for argv in found if argv is not None]


def _program_argv(words: list[str]) -> list[str] | None:
    """The words after the aevb program of one simple command, or None when the program is not aevb."""
    i = 0
    while i < len(words):
        word = words[i]
        if re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*=\S*", word) or word in WRAPPERS:
            i += 1
        elif word == "taskset":
            i += 1
            while i < len(words) and words[i].startswith("-"):
                i += 1
            i += 1  # the CPU list
        elif word == "numactl":
            i += 1
            while i < len(words) and words[i].startswith("-"):
                i += 1
        else:
            break
    if i >= len(words):
        return None
    program, rest = words[i], words[i + 1:]
    if _is_aevb(program):
        return rest
    if PYTHON.fullmatch(program):
        j = 0
        while j < len(rest) and rest[j].startswith("-") and rest[j] != "-m":
            j += 2 if rest[j] in ("-X", "-W") else 1  # python's own options
        if j + 1 >= len(rest) or rest[j] != "-m":
            return None  # python script.py, python -c ...
        if rest[j + 1] in ("torch.distributed.run", "torch.distributed.launch"):
            program, rest = "torchrun", rest[j + 2:]
        else:
            return rest[j + 2:] if rest[j + 1] == "aevb" else None
    if program == "torchrun":  # torchrun [its options] -m aevb ... | torchrun [its options] $(which aevb) ...
        for j, word in enumerate(rest):
            if word == "-m":
                return rest[j + 2:] if j + 1 < len(rest) and rest[j + 1] == "aevb" else None
            if _is_aevb(word):
                return rest[j + 1:]
    return None


def _is_aevb(word: str) -> bool:
    return word == "aevb" or word.endswith("/bin/aevb")  # .venv/bin/aevb; not src/aevb or ~/.cache/aevb


def _clean(word: str) -> str:
    """Optional-argument brackets of usage notation: `[--flag` -> `--flag`, `VALUE]` -> `VALUE`; `[x]` stays."""
    if word.startswith("[") and word.endswith("]") and not word.lstrip("[").startswith("-"):
        return word
    return word.lstrip("[").rstrip("]") or word


def is_placeholder(word: str) -> bool:
    """A word that stands for a value rather than being one: <run>, $RUN, {a,b}, [x], RUN, N, PATH, ..., RUN..."""
    return (any(c in word for c in "<>${}") or "..." in word or "\u2026" in word
            or (word.startswith("[") and word.endswith("]"))
            or re.fullmatch(r"[A-Z][A-Z0-9_]*(/[A-Z0-9_./-]*)?", word) is not None)


def _is_flag(word: str) -> bool:
    return word.startswith("-") and len(word) > 1 and not re.fullmatch(r"-\.?\d[\d.e+-]*", word)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Subcommand name -> its parser, from the subparsers group's _SubParsersAction (its `choices`)."""
    group = parser._subparsers
    if group is None:
        return {}
    return {name: sub for action in group._group_actions if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Option string (`--latent-dim`, `-h`) -> its action, for one parser (no subcommands)."""
    return {s: a for a in parser._actions for s in a.option_strings}


def check_argv(argv: tuple[str, ...] | list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The problems of one command (the words after `aevb`) against the parser; [] when it is right."""
    argv = list(argv)
    top, subs, problems = options(parser), subcommands(parser), []
    i = 0
    while i < len(argv) and _is_flag(argv[i]):
        flag = argv[i].partition("=")[0]
        if flag not in top:
            problems.append(f"aevb: unknown option {flag} before the subcommand{_suggest(flag, top)}")
        i += 1
    if i == len(argv):
        return problems
    name, rest = argv[i], argv[i + 1:]
    if name in subs:
        return problems + _check_subcommand(name, subs[name], rest)
    if not is_placeholder(name):
        return problems + [f"aevb: unknown subcommand {name!r}{_suggest(name, subs)}"]
    everywhere = {s for sub in subs.values() for s in options(sub)}  # `aevb SUBCOMMAND --help`
    return problems + [f"aevb {name}: {w.partition('=')[0]} is an option of no subcommand"
                       for w in rest if _is_flag(w) and w.partition("=")[0] not in everywhere]


def _check_subcommand(name: str, sub: argparse.ArgumentParser, words: list[str]) -> list[str]:
    known = options(sub)
    positionals = [a for a in sub._actions if not a.option_strings]
    problems, i, k, only_positionals = [], 0, 0, False
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--" and not only_positionals:
            only_positionals = True
        elif _is_flag(word) and not only_positionals:
            flag, eq, inline = word.partition("=")
            action = known.get(flag)
            if action is None and not flag.startswith("--") and flag[:2] in known and known[flag[:2]].nargs != 0:
                flag, eq, inline, action = flag[:2], "=", flag[2:], known[flag[:2]]  # -k5000
            if action is None:
                problems.append(f"aevb {name}: unknown option {flag}{_suggest(flag, known)}")
                if not eq and i < len(words) and not _is_flag(words[i]):
                    i += 1  # its value, most likely: not an unexpected positional
                continue
            if eq:
                values = [inline]
            else:
                values, i = _option_values(action, words, i)
            problems += [f"aevb {name} {flag}: {p}" for v in values for p in _check_value(action, v)]
        elif k < len(positionals):
            action = positionals[k]
            problems += [f"aevb {name} {action.dest}: {p}" for p in _check_value(action, word)]
            if action.nargs not in ("+", "*", argparse.REMAINDER):
                k += 1
        elif not is_placeholder(word):
            problems.append(f"aevb {name}: unexpected argument {word!r} (after the positionals "
                            f"{[a.dest for a in positionals]})")
    return problems


def _option_values(action: argparse.Action, words: list[str], i: int) -> tuple[list[str], int]:
    """The values that follow an option (as many as its nargs takes) and the index after them."""
    nargs = action.nargs
    if nargs == 0:
        return [], i
    if nargs is None or nargs == "?" or isinstance(nargs, int):
        count = 1 if not isinstance(nargs, int) else nargs
        values = []
        while len(values) < count and i < len(words) and not _is_flag(words[i]):
            values.append(words[i])
            i += 1
        return values, i
    values = []  # "+", "*": up to the next option
    while i < len(words) and not _is_flag(words[i]):
        values.append(words[i])
        i += 1
    return values, i


def _check_value(action: argparse.Action, value: str) -> list[str]:
    """Problems of one literal value (each alternative of a|b|c) against the action's type and choices."""
    problems = []
    for alternative in value.split("|") if "|" in value else [value]:
        if not alternative or is_placeholder(alternative):
            continue
        converted = alternative
        if callable(action.type) and not isinstance(action.type, argparse.FileType):
            try:
                converted = action.type(alternative)
            except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
                problems.append(f"{alternative!r} is not a valid value ({exc})")
                continue
        if action.choices is not None and converted not in action.choices:
            problems.append(f"{alternative!r} is not one of {', '.join(map(str, action.choices))}")
    return problems


def _suggest(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def check_markdown(markdown: str, where: str, parser: argparse.ArgumentParser) -> tuple[list[Command], list[str]]:
    """The aevb commands of a Markdown text and every problem found in them, as `where:line: problem`."""
    commands, unsplittable = find_commands(markdown)
    problems = [f"{where}:{line}: {p}" for line, p in unsplittable]
    for command in commands:
        problems += [f"{where}:{command.line}: {p}    [{command.text}]" for p in check_argv(command.argv, parser)]
    return commands, problems
