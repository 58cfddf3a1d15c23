"""``python -m unibus.migrate``: the one-shot migration job (see ``unibus.migrate.migrate``)."""

from __future__ import annotations

import sys

from unibus.migrate.migrate import main

if __name__ == "__main__":
    sys.exit(main())
