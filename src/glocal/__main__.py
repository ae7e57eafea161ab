"""``python -m glocal`` (and ``torchrun -m glocal``): the ``glocal`` command line."""

import sys

from glocal.cli import main

if __name__ == "__main__":
    sys.exit(main())
