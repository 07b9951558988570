"""``python -m mind_recbole`` runs the ``mind-recbole`` command."""

import sys

from mind_recbole.cli import main

sys.exit(main())
