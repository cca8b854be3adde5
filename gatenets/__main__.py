"""``python -m gatenets`` runs the ``gatenets`` command."""

import sys

from gatenets.cli import main

sys.exit(main())
