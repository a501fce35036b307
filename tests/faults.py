"""Fault injection for the tests: run the mtrec command with a signal sent to itself at a chosen point.

    python -c "import faults; faults.run('save', 2, 'KILL', ['train', ...])"

``save`` N: the N-th atomic write, after its temporary file is written and before it replaces the
target (the most fragile moment of a save). ``step`` N: the N-th training step (a stacked group's
step, which trains all its runs, counts once). The signal is
SIGKILL (nothing runs after it), SIGINT (Ctrl-C) or HANG (the process sleeps, answering nothing).

Under torchrun, ``MTREC_FAULT_RANK`` limits the fault to one process, and the fault fires only in
the first attempt (not in a worker torchrun restarted).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time


def run(point: str, count: int, name: str, argv: list[str]) -> None:
    import mtrec.io.files as fileio

    calls = [0]
    rank = os.environ.get("MTREC_FAULT_RANK")
    armed = (rank is None or rank == os.environ.get("RANK")) and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"

    def hit() -> None:
        calls[0] += 1
        if armed and calls[0] == count:
            if name == "HANG":
                time.sleep(3600)
            os.kill(os.getpid(), getattr(signal, f"SIG{name}"))

    if point == "save":
        real = fileio.atomic_output

        @contextlib.contextmanager
        def faulty(path):
            with real(path) as temporary:
                yield temporary
                hit()

        fileio.atomic_output = faulty  # before any module binds it
    import mtrec.train.steps as training

    if point == "step":
        real_call = training.Step.__call__

        def faulty_call(self, batch):
            hit()
            return real_call(self, batch)

        training.Step.__call__ = faulty_call
        import mtrec.train.stacked as stacked  # a stacked group's step, one for all its runs

        real_gradients = stacked._StackedEpoch.gradients

        def faulty_gradients(self, *args):
            hit()
            return real_gradients(self, *args)

        stacked._StackedEpoch.gradients = faulty_gradients
    from mtrec.cli import main

    sys.exit(main(argv))


if __name__ == "__main__":  # torchrun runs a script: faults.py POINT COUNT SIGNAL ARGV...
    run(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:])
