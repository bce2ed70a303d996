"""``python -m trio_orchestrator`` runs the command line."""

import sys

from .cli import main

sys.exit(main())
