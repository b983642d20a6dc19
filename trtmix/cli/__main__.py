"""``python -m trtmix.cli``: the ``trtmix`` command."""

import sys

from trtmix.cli import main

sys.exit(main())
