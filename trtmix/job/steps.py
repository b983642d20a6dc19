"""Steps of a job: running out of memory or disk is reported as such, with the step and what it asked for.

The journal commits each probe as it is measured, so a job stopped this way keeps everything it measured; the
message says so, and rerunning the same command on a machine with room resumes it.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trtmix.errors import JobInterruptedError, ResourceError, TrtmixError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def step(name: str, output: Path) -> Iterator[None]:
    """Turn a MemoryError or a full disk inside the block into one ``ResourceError`` naming the step.

    Ctrl-C inside it becomes a ``JobInterruptedError`` naming the step, with how to resume.
    """
    resume = f"rerun the same command: what was measured is kept in {output / 'journal.sqlite'} and resumed"
    try:
        yield
    except KeyboardInterrupt:
        raise JobInterruptedError(output, name) from None
    except MemoryError as err:
        detail = str(err) or "an allocation failed"
        raise ResourceError(f"Out of memory during {name}: {detail}.",
                            fix=f"free memory or use a machine with more; then {resume}") from err  # fmt: skip
    except (OSError, TrtmixError) as err:
        cause = err if isinstance(err, OSError) else err.__cause__
        if not isinstance(cause, OSError) or cause.errno not in DISK_FULL:
            raise
        free = _free_mib(output)
        raise ResourceError(f"Out of disk space during {name}: {err}".rstrip(".") + f" ({free} free in {output}).",
                            fix=f"free disk space there; then {resume}") from err  # fmt: skip


def _free_mib(folder: Path) -> str:
    """Free space on ``folder``'s file system, in words (its nearest existing parent's)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return f"{shutil.disk_usage(existing).free / 2**20:.0f} MiB"
    except OSError:
        return "unknown space"
