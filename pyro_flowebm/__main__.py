"""``python -m pyro_flowebm``: the ``pyro-flowebm`` command."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
