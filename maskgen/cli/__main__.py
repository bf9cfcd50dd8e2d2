"""``python -m maskgen.cli``: the ``maskgen`` command."""

import sys

from maskgen.cli import main

sys.exit(main())
