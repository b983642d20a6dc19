"""The search journal: every probe, written the moment it is measured, so a killed run resumes where it stopped.

SQLite (standard library) gives atomic commits: a probe is either fully recorded or not at all, whatever kills the
process.  Probes are keyed by plan hash, so a plan measured once is never measured again, even by another ordering.
The journal belongs to one configuration (model, data, flavour, backend, metric, calibration); reopening it with
another is an error rather than a silent mix of incomparable numbers.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from trtmix.errors import TrtmixError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS probes (
    plan_hash TEXT PRIMARY KEY, record TEXT NOT NULL, run_id TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Journal:
    """Probe records (JSON dicts) keyed by plan hash, plus small cached values (e.g. orderings)."""

    def __init__(self, path: Path, config_hash: str) -> None:
        self.path = path
        self.run_id = uuid.uuid4().hex[:12]
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.executescript(SCHEMA)
            stored = self._db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        except sqlite3.DatabaseError as err:
            raise TrtmixError(
                f"The search journal {path} is corrupt ({err}).",
                fix="rerun with --fresh to start over (measured probes in it are lost)",
            ) from err
        if stored is None:
            self._db.execute("INSERT INTO meta VALUES ('config', ?)", (config_hash,))
        elif stored[0] != config_hash:
            raise TrtmixError(
                f"The search journal {path} belongs to a run with other settings (model, data, flavour, backend, "
                "metric or calibration).",
                fix="use another --output folder, or --fresh to discard it",
            )

    def get(self, plan_hash: str) -> dict[str, Any] | None:
        """The recorded probe of ``plan_hash``, or None."""
        row = self._db.execute("SELECT record FROM probes WHERE plan_hash = ?", (plan_hash,)).fetchone()
        return json.loads(row[0]) if row else None

    def record(self, plan_hash: str, record: dict[str, Any]) -> None:
        """Store one probe atomically (one SQLite transaction)."""
        self._db.execute(
            "INSERT OR REPLACE INTO probes VALUES (?, ?, ?, ?)",
            (plan_hash, json.dumps(record), self.run_id, time.time()),
        )

    def records(self) -> list[dict[str, Any]]:
        """Every recorded probe with the id of the run that measured it, oldest first."""
        rows = self._db.execute("SELECT record, run_id FROM probes ORDER BY created").fetchall()
        return [{**json.loads(record), "run_id": run_id} for record, run_id in rows]

    def cached(self, key: str) -> Any | None:
        """A cached JSON value, or None."""
        row = self._db.execute("SELECT value FROM cache WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def store(self, key: str, value: Any) -> None:
        """Cache a JSON value."""
        self._db.execute("INSERT OR REPLACE INTO cache VALUES (?, ?)", (key, json.dumps(value)))

    def close(self) -> None:
        """Close the database."""
        self._db.close()
