"""``python -m kind_cli``: the ``kind`` command."""

import sys

from . import main

sys.exit(main())
