"""One job per output folder: an advisory lock (``.trtmix.lock``) held for the job's life.

Two ``trtmix compile`` runs writing one folder at once (parallel release jobs with the same ``-o``) would interleave
their artifacts and reports. The second one fails at once, naming the running job's pid. The lock is ``flock``, so
the kernel drops it when its process dies: a lock file left by a killed run is taken over, and the log says so.
Within one process the lock is re-entrant (a benchmark may open several pipelines on one folder in turn).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO

from trtmix.errors import TrtmixError

LOG = logging.getLogger(__name__)
LOCK_NAME = ".trtmix.lock"
_HELD: dict[Path, int] = {}  # folder → how many holders in this process
_HANDLES: dict[Path, IO[str]] = {}


def acquire(folder: Path) -> None:
    """Hold ``folder``'s lock, or fail at once naming the pid of the job that holds it."""
    key = folder.resolve()
    if key in _HELD:
        _HELD[key] += 1
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks; one job per folder is then the user's to keep
        return
    handle = (key / LOCK_NAME).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise TrtmixError(
            f"Another trtmix job (pid {holder}) is writing to {folder}.",
            fix="wait for it to finish, or give this job another -o folder",
        ) from None
    handle.seek(0)
    previous = handle.read().strip()
    if previous.isdigit() and int(previous) != os.getpid() and not _alive(int(previous)):
        LOG.info("taking over %s from a run that was killed (pid %s)", folder / LOCK_NAME, previous)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _HELD[key], _HANDLES[key] = 1, handle


def release(folder: Path) -> None:
    """Let go of ``folder``'s lock (the last holder in this process unlocks it)."""
    key = folder.resolve()
    if key not in _HELD:
        return
    _HELD[key] -= 1
    if _HELD[key] > 0:
        return
    del _HELD[key]
    handle = _HANDLES.pop(key, None)
    if handle is not None:
        handle.seek(0)
        handle.truncate()
        handle.close()  # closing the descriptor releases the flock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
