"""Progress bars for the long steps, on stderr; ``trtmix -q`` silences every one of them.

One switch for all bars: each step builds its bar here instead of calling tqdm itself.  The switch is also kept in
the environment (``TRTMIX_QUIET``), so Ray workers started by a quiet job stay quiet too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

QUIET_VARIABLE = "TRTMIX_QUIET"


def set_quiet(quiet: bool) -> None:
    """Silence (or allow again) every progress bar this process and the workers it starts draw."""
    if quiet:
        os.environ[QUIET_VARIABLE] = "1"
    else:
        os.environ.pop(QUIET_VARIABLE, None)


def bar(iterable: Iterable[Any] | None = None, **options: Any) -> tqdm:
    """A tqdm bar with ``options``, disabled when the job is quiet (``options`` may disable it too)."""
    quiet = os.environ.get(QUIET_VARIABLE) == "1"
    return tqdm(iterable, **{**options, "disable": quiet or bool(options.get("disable"))})
