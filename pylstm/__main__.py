"""python -m pylstm: the command line (see pylstm.cli)."""

import sys

from .cli import main

sys.exit(main())
