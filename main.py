"""The assignment's entry point: ``python main.py [options]`` is ``mtrec train --preset seed [options]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from mtrec.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", "--preset", "seed", *sys.argv[1:]]))
