"""The ``mtrec`` command: parses arguments and calls the library.

Each subcommand lives in its own module with ``register(subparsers)``; the module's
handler receives the parsed arguments and returns an exit code. Errors a user can cause
(:class:`mtrec.errors.MtrecError`) become one line on stderr and exit 1; usage errors,
argparse's, options the settings do not allow (:class:`mtrec.cli._args.UsageError`, which name
their flags) and :class:`mtrec.errors.ConfigError`, exit 2. Library warnings (duplicate ratings
dropped, ...) are shown as one line each.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from mtrec import __version__
from mtrec.cli._args import UsageError
from mtrec.errors import ConfigError, MtrecError
from mtrec.settings import SettingsError

SUBCOMMANDS = (
    "train",
    "experiments",
    "tune",
    "report",
    "recommend",
    "predict",
    "similar",
    "export",
    "serve",
    "explore",
    "synth",
    "datasets",
)


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line and a pointer to --help, not the whole usage."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mtrec",
        description=(
            "Multi-task recommenders: one network learns from shared user and item embeddings both "
            "whether a user watches an item (matrix factorisation, pairwise BPR-style loss) and the "
            "rating they would give it (an MLP on [u, q, u*q], MSE)."
        ),
        epilog="Run 'mtrec COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"mtrec {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"mtrec.cli.{name}").register(subparsers)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mtrec: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version and usage errors: their exit code, for callers of main()
        return stop.code if isinstance(stop.code, int) else 2
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return int(args.handler(args) or 0)
    except UsageError as error:
        print(f"mtrec {args.command}: error: {error} (see 'mtrec {args.command} --help')", file=sys.stderr)
        return 2
    except SettingsError as error:  # settings by their flags
        from mtrec.cli.options import flag_message

        print(f"mtrec {args.command}: error: {flag_message(error)}", file=sys.stderr)
        return 2
    except ConfigError as error:
        print(f"mtrec {args.command}: error: {error}", file=sys.stderr)
        return 2
    except MtrecError as error:
        print(f"mtrec {args.command}: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (mtrec recommend ... | head): stop quietly, like cat
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except OSError as error:  # an unwritable --logdir, a --data-dir that is a file, a full disk...
        where = f": {error.filename}" if error.filename else ""
        print(f"mtrec {args.command}: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mtrec {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
