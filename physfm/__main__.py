"""``python -m physfm`` runs the CLI."""

import sys

from physfm.cli import main

sys.exit(main())
