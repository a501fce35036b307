"""Fault injection for the tests: run the mtrec command with a signal sent to itself at a chosen point.

    python -c "import faults; faults.run('save', 2, 'KILL', ['train', ...])"

``save`` N: the N-th atomic write, after its temporary file is written and before it replaces the
target (the most fragile moment of a save). ``step`` N: the N-th training step. The signal is
SIGKILL (nothing runs after it) or SIGINT (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def run(point: str, count: int, name: str, argv: list[str]) -> None:
    import mtrec.fileio as fileio

    calls = [0]
    sig = getattr(signal, f"SIG{name}")

    def hit() -> None:
        calls[0] += 1
        if calls[0] == count:
            os.kill(os.getpid(), sig)

    if point == "save":
        real = fileio.atomic_output

        @contextlib.contextmanager
        def faulty(path):
            with real(path) as temporary:
                yield temporary
                hit()

        fileio.atomic_output = faulty  # before any module binds it
    import mtrec.training as training

    if point == "step":
        real_call = training.Step.__call__

        def faulty_call(self, batch):
            hit()
            return real_call(self, batch)

        training.Step.__call__ = faulty_call
    from mtrec.cli import main

    sys.exit(main(argv))
