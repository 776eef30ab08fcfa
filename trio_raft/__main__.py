"""``python -m trio_raft``: the command line (see :mod:`trio_raft._cli`)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
