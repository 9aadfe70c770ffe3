"""``python -m reid_prune`` runs the CLI (also the entry point for torchrun)."""

import sys

from .entry import main

sys.exit(main())
