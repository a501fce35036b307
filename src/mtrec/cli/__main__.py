import sys

from mtrec.cli import main

sys.exit(main())
