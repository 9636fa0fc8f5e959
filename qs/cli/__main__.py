"""``python -m qs.cli``: the ``qs`` command."""

import sys

from . import main

sys.exit(main())
