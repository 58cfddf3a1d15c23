import sys

from unibus.cli.main import main

sys.exit(main())
