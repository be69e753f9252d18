"""``python -m ark_obs serve``: the same command line as the ``ark-obs`` script."""

import sys

from ark_obs.cli import main

if __name__ == "__main__":
    sys.exit(main())
