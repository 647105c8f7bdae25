"""`python -m edge_agent` is the `edge-moa` command."""

import sys

from .cli import main

sys.exit(main())
