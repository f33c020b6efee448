"""Options declared once: a dataclass field carries its default, help, choices and how a flag's text is parsed.

`option(...)` makes such a field. The command line (`aevb train`'s flags), the preset merge, the list of flags that
define a run (refused with `--resume`) and config.json all derive from these declarations, so a new option is one
field. The parsers below turn a flag's text into a value and raise `argparse.ArgumentTypeError` with a one-line
message.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Callable


def option(default: Any, help: str, *, choices=None, parse: Callable[[str], Any] | None = None,
           flag: bool | str = True, metavar: str | None = None, group: str | None = None,
           apply: Callable[[Any], dict] | None = None) -> Any:
    """A dataclass field declared as a command-line option.

    Args:
        default: the field's default (a tuple default is kept immutable).
        help: the flag's help text.
        choices: allowed values (a callable returning them is resolved when the parser is built).
        parse: turns the flag's text into a value (else the field's plain type: int, float, str; bool = a switch).
        flag: False for a field with no flag; a string to name the flag otherwise than `--field-name`.
        metavar: the value's name in --help.
        group: options of one group are mutually exclusive on the command line.
        apply: maps the parsed value to the field updates it makes (e.g. `--lr auto` sets `lr_candidates`);
            default `{name: value}`.
    """
    meta = {"help": help, "choices": choices, "parse": parse, "flag": flag, "metavar": metavar, "group": group,
            "apply": apply}
    return dataclasses.field(default=default, metadata={"option": meta})


def declared(cls) -> list[tuple[dataclasses.Field, dict]]:
    """The fields of a dataclass that are command-line options, with their declarations, in field order."""
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("option")
        if meta is not None and meta["flag"] is not False:
            out.append((f, meta))
    return out


def flag_name(f: dataclasses.Field, meta: dict) -> str:
    return meta["flag"] if isinstance(meta["flag"], str) else "--" + f.name.replace("_", "-")


def updates(f: dataclasses.Field, meta: dict, value) -> dict:
    """The field updates that giving this option's value makes."""
    return meta["apply"](value) if meta["apply"] is not None else {f.name: value}


def check_fields(cls, d: dict, what: str) -> None:
    """Refuse keys of `d` that are not fields of the dataclass `cls` (a tampered or foreign config section)."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} config keys: {', '.join(sorted(unknown))}")


# -- parsers of flag values --------------------------------------------------------------------------------------
def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def count(text: str) -> int:
    """A datapoint count such as 1e7 or 250000."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 1 or math.isinf(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a positive whole count, got {text!r}")
    return int(value)


def _ints(text: str) -> tuple[int, ...]:
    """Comma-separated integers, or () when the text is not one."""
    try:
        return tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        return ()


def sizes(text: str) -> tuple[int, ...]:
    values = _ints(text)
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 2,5,10, got {text!r}")
    return values


def log_var_floor(text: str) -> float | str:
    """A finite log-variance, or "none" (no floor)."""
    if text.strip().lower() == "none":
        return "none"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a log-variance or none: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite log-variance or none, got {text!r}")
    return value


def widths(text: str) -> tuple[int, ...]:
    values = _ints(text)
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths such as 500 or 512,512, got {text!r}")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"hidden widths must be positive, got {text!r}")
    return values


def learning_rate(text: str):
    """A positive step size, or 'auto'."""
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"the learning rate must be a positive number, got {text!r}")
    return value


def weight_decay(text: str):
    """'prior' or a number."""
    if text == "prior":
        return "prior"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'prior', got {text!r}") from None


def image_size(text: str) -> tuple[int, int]:
    """H or HxW (e.g. 64 or 32x48) -> (H, W)."""
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected an image size such as 64 or 32x48 (H x W), got {text!r}")
    return values


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction strictly between 0 and 1, got {text!r}")
    return value
