"""``python -m mtrec ...`` (and ``torchrun -m mtrec ...``) is the ``mtrec`` command."""

import sys

from mtrec.cli import main

sys.exit(main())
