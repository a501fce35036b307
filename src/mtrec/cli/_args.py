"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import math

from mtrec.errors import ConfigError


class UsageError(ConfigError):
    """Options that ask for something not allowed, described by their flags: the command prints it as
    it prints argparse's usage errors (one line, a pointer to ``--help``, exit status 2)."""


def add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, *more: str, **kwargs):
    """Add ``--some-name`` also as ``--some_name`` (the assignment's spelling), or the reverse."""
    spellings = [name, *more]
    for option in [name, *more]:
        if option.startswith("--"):
            body = option[2:]
            for variant in (body.replace("_", "-"), body.replace("-", "_")):
                if f"--{variant}" not in spellings:
                    spellings.append(f"--{variant}")
    return parser.add_argument(*spellings, **kwargs)


def whole_number(text: str) -> int:
    """``text`` as a whole number; its range is the setting's to check."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def number(text: str) -> float:
    """``text`` as a number; its range is the setting's to check."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = number(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
