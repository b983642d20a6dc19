"""Atomic file writes: a killed run never leaves a half-written artifact behind."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from trtmix.errors import TrtmixError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place.

    A folder that cannot be made or written (read-only, full, a file in the way) is one clear error, and nothing
    half-written is left at ``path``.
    """
    target = Path(path)
    temp_name = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, target)
    except OSError as err:
        if temp_name:
            Path(temp_name).unlink(missing_ok=True)
        raise TrtmixError(
            f"cannot write {target}: {err.strerror or err}.",
            fix="choose an output path in a folder you can write to, with free space",
        ) from err
    except BaseException:
        if temp_name:
            Path(temp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """UTF-8 text version of ``atomic_write_bytes``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | Path, what: str, error: type[TrtmixError], missing_fix: str) -> Any:
    """Parse a JSON file, raising ``error`` that names ``what`` the file is when it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist.", fix=missing_fix) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{what} {path} is not valid JSON: {err}.") from err


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (artifacts and store files can be gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
