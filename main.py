"""The assignment's entry point: ``python main.py [options]`` is ``mtrec train --preset seed [options]``."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from mtrec.cli import Parser, main  # noqa: E402
from mtrec.cli.train import add_arguments  # noqa: E402

DESCRIPTION = """\
The assignment's entry point: 'python main.py [options]' is 'mtrec train --preset seed [options]'.
It trains the multi-task model with the assignment's settings (the seed preset: 200 epochs,
d = 32, MLP [96, 64], batch 256, Adam at 1e-3, no weight decay, the 95/5 random split, no
validation, the last epoch's model): matrix factorisation (watch score p, pairwise BPR-style
loss) and a rating MLP on [u, q, u*q] (MSE), joined as
factorization_weight * L_F + regression_weight * L_R. The run directory (--logdir) receives
TensorBoard curves, config.json, metrics.json and the model (model.safetensors).
'mtrec train' takes the same options, from the quality preset by default.
"""

EXAMPLES = """\
examples:
  python main.py --factorization_weight 0.99 --regression_weight 0.01 --logdir run/shared=True_LF=0.99_LR=0.01
  python main.py --factorization_weight 0.5 --regression_weight 0.5 --logdir run/shared=True_LF=0.5_LR=0.5
  python main.py --no_shared_embeddings --factorization_weight 0.5 --regression_weight 0.5 --logdir run/shared=False_LF=0.5_LR=0.5
"""


def parser() -> argparse.ArgumentParser:
    """``mtrec train``'s options, described for main.py, with the seed preset's defaults."""
    described = Parser(prog="main.py", description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(described, default_preset="seed")
    return described


if __name__ == "__main__":
    parser().parse_args()  # main.py's own --help and usage errors; the run is mtrec train's
    sys.exit(main(["train", "--preset", "seed", *sys.argv[1:]]))
