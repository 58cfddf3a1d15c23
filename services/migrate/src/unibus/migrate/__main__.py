"""``python -m unibus.migrate``: the one-shot migration job (see ``unibus.migrate.cli``)."""

from __future__ import annotations

import sys

from unibus.migrate.cli import main

if __name__ == "__main__":
    sys.exit(main())
