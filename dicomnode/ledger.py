"""The ledger: one SQLite file (WAL mode) that holds every instance, job and delivery.

It is the node's single source of truth, in the manner of mercure: an admin can read the
state of any study from ``dicomnode jobs list`` or from the file itself with ``sqlite3``.

A job's life: ``complete`` (its instances settled) -> ``routed`` -> ``harmonized`` ->
``delivered``; or ``quarantined`` (cannot or must not be processed; reason stated),
``discarded`` (a rule said so; files kept for the retention period) or ``failed`` (a step
broke or a delivery ran out of retries). Instances belong to no job until their study
settles, so an instance that arrives after its study's job was made starts a new job, a new
version of the old one (``supersedes``), rather than being dropped.

A harmonize rule with ``evaluate: true`` also gives its job a quality report: ``pending`` ->
``written`` (the DICOM-SR file is in the job's folder) or ``failed`` (reason stated). The
report has deliveries of its own (``kind = 'report'``), so it never holds up the images: the
job is ``delivered`` when its images are.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

JOB_STATES = (
    "complete", "routed", "harmonized", "delivered", "quarantined", "discarded", "failed",
)
ACTIVE_STATES = ("complete", "routed", "harmonized")
TERMINAL_STATES = ("delivered", "quarantined", "discarded", "failed")

_DELIVERIES_TABLE = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    destination TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'images',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    updated_at REAL NOT NULL,
    UNIQUE (job_id, destination, kind)
);
"""

_SCHEMA = _DELIVERIES_TABLE + """
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sop_instance_uid TEXT,
    sop_class_uid TEXT,
    study_uid TEXT,
    series_uid TEXT,
    calling_ae TEXT NOT NULL,
    peer TEXT NOT NULL,
    size INTEGER NOT NULL,
    parse_error TEXT,
    received_at REAL NOT NULL,
    expected INTEGER,
    purged_at REAL,
    job_id INTEGER REFERENCES jobs(id),
    acquisition TEXT
);
CREATE INDEX IF NOT EXISTS instances_unclaimed ON instances(job_id, study_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    study_uid TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    rule TEXT,
    method TEXT,
    model TEXT,
    output_dir TEXT,
    supersedes INTEGER REFERENCES jobs(id),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS reports (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
    destinations TEXT NOT NULL,
    state TEXT NOT NULL,
    verdict TEXT,
    path TEXT,
    error TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    at REAL NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL
);
"""


# Columns added after the first release; older ledgers get them at open.
_ADDED_COLUMNS = (
    ("instances", "expected", "INTEGER"),
    ("instances", "purged_at", "REAL"),
    ("jobs", "supersedes", "INTEGER REFERENCES jobs(id)"),
    ("instances", "acquisition", "TEXT"),
)


@dataclass(frozen=True)
class Instance:
    id: int
    path: str
    sop_instance_uid: str | None
    sop_class_uid: str | None
    study_uid: str | None
    series_uid: str | None
    calling_ae: str
    peer: str
    size: int
    parse_error: str | None
    received_at: float
    expected: int | None
    purged_at: float | None
    job_id: int | None
    # dicomnode.assembly.acquisition_key at intake; None in rows from before it was kept.
    acquisition: str | None = None


@dataclass(frozen=True)
class Job:
    id: int
    study_uid: str | None
    state: str
    reason: str | None
    rule: str | None
    method: str | None
    model: str | None
    output_dir: str | None
    supersedes: int | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Report:
    """A job's quality report (DICOM-SR): ``pending``, ``written`` or ``failed``."""

    job_id: int
    destinations: str  # comma-separated names, the rule's when the report was asked for
    state: str
    verdict: str | None
    path: str | None
    error: str | None
    updated_at: float


@dataclass(frozen=True)
class Delivery:
    id: int
    job_id: int
    destination: str
    kind: str  # 'images' or 'report'
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    updated_at: float


class Ledger:
    """Thread-safe access to the ledger file; one connection, serialized by a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a power cut may roll back the last commits, never corrupt the file. What
        # was acknowledged survives anyway: the spool file is fsynced before Success and
        # intake.recover_spool rebuilds missing rows at start; every later step is idempotent.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._rebuild_old_deliveries()
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Bring a ledger written by an earlier version up to this schema, in place."""
        for table, column, kind in _ADDED_COLUMNS:
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _rebuild_old_deliveries(self) -> None:
        """Give a deliveries table from before quality reports its ``kind`` column.

        Its uniqueness constraint changes too, which SQLite can only do by copying the table.
        """
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(deliveries)")}
        if not columns or "kind" in columns:
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("ALTER TABLE deliveries RENAME TO deliveries_before_reports")
        self._db.execute(_DELIVERIES_TABLE)
        self._db.execute(
            "INSERT INTO deliveries (id, job_id, destination, state, attempts, next_attempt_at,"
            " last_error, updated_at) SELECT id, job_id, destination, state, attempts,"
            " next_attempt_at, last_error, updated_at FROM deliveries_before_reports"
        )
        self._db.execute("DROP TABLE deliveries_before_reports")
        self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- instances -----------------------------------------------------------------------

    def add_instance(
        self,
        *,
        path: str,
        sop_instance_uid: str | None,
        sop_class_uid: str | None,
        study_uid: str | None,
        series_uid: str | None,
        calling_ae: str,
        peer: str,
        size: int,
        parse_error: str | None = None,
        expected: int | None = None,
        acquisition: str | None = None,
    ) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO instances (path, sop_instance_uid, sop_class_uid, study_uid,"
                " series_uid, calling_ae, peer, size, parse_error, received_at, expected,"
                " acquisition) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (path, sop_instance_uid, sop_class_uid, study_uid, series_uid, calling_ae,
                 peer, size, parse_error, time.time(), expected, acquisition),
            )
            return int(cursor.lastrowid or 0)

    def last_received(self) -> float | None:
        with self._lock:
            return self._db.execute("SELECT MAX(received_at) FROM instances").fetchone()[0]

    def instance_paths(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT path FROM instances")}

    def settled_studies(
        self, settle_seconds: float, now: float | None = None, quiet_since: float = 0.0
    ) -> list[str]:
        """Studies whose unclaimed instances are complete.

        Complete as soon as every unclaimed series of the study has its expected count
        (from its header: phases x slices), else once nothing arrived for settle_seconds
        since the later of the last instance and ``quiet_since`` (the node's start: a
        sender cut off by a crash gets the quiet period again to send the rest).
        """
        cutoff = (now if now is not None else time.time()) - settle_seconds
        with self._lock:
            rows = self._db.execute(
                "SELECT study_uid FROM instances WHERE job_id IS NULL AND study_uid IS NOT NULL"
                " GROUP BY study_uid HAVING MAX(MAX(received_at), ?) <= ?"
                " UNION"
                " SELECT study_uid FROM ("
                "   SELECT study_uid, COUNT(DISTINCT sop_instance_uid) AS n,"
                "          MAX(expected) AS e, SUM(expected IS NULL) AS unknown"
                "   FROM instances WHERE job_id IS NULL AND study_uid IS NOT NULL"
                "   GROUP BY study_uid, series_uid)"
                " GROUP BY study_uid HAVING SUM(unknown > 0 OR n < e) = 0",
                (quiet_since, cutoff),
            ).fetchall()
        return [row["study_uid"] for row in rows]

    def arriving_series(self) -> list[tuple[str, str]]:
        """(study, series) of multiphase series still arriving: unclaimed instances, fewer
        than the expected count their header gives, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT study_uid, series_uid FROM instances"
                " WHERE job_id IS NULL AND study_uid IS NOT NULL AND series_uid IS NOT NULL"
                " AND expected IS NOT NULL GROUP BY study_uid, series_uid"
                " HAVING COUNT(DISTINCT sop_instance_uid) < MAX(expected) ORDER BY MIN(id)"
            ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def unclaimed(self, study_uid: str | None, after: int = 0) -> list[Instance]:
        """Instances of a study (or, for None, unreadable ones) that no job holds yet, those
        received after instance id ``after`` only."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM instances WHERE job_id IS NULL AND study_uid IS ? AND id > ?"
                " ORDER BY id",
                (study_uid, after),
            ).fetchall()
        return [Instance(**dict(row)) for row in rows]

    def series_jobs(self, series_uids: Sequence[str]) -> list[int]:
        """Jobs that already hold instances of these series, oldest first."""
        marks = ",".join("?" * len(series_uids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT DISTINCT job_id FROM instances WHERE job_id IS NOT NULL"
                f" AND series_uid IN ({marks}) ORDER BY job_id",
                tuple(series_uids),
            ).fetchall()
        return [row[0] for row in rows]

    def version_instances(self, job_id: int) -> list[Instance]:
        """A job's instances and, for a new version (``supersedes``), those of every version
        before it, in arrival order: what the job harmonizes."""
        chain: list[Instance] = []
        current = self.job(job_id)
        while current is not None:
            chain.extend(self.instances(current.id))
            current = self.job(current.supersedes) if current.supersedes else None
        return sorted(chain, key=lambda i: i.id)

    def instances(self, job_id: int) -> list[Instance]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM instances WHERE job_id = ? ORDER BY id", (job_id,)
            ).fetchall()
        return [Instance(**dict(row)) for row in rows]

    # --- jobs ----------------------------------------------------------------------------

    def create_job(
        self,
        study_uid: str | None,
        instance_ids: Sequence[int],
        reason: str | None = None,
        supersedes: int | None = None,
    ) -> int:
        """Make a job that claims the given instances; quarantined at once when a reason."""
        now = time.time()
        state = "quarantined" if reason else "complete"
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO jobs (study_uid, state, reason, supersedes, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (study_uid, state, reason, supersedes, now, now),
            )
            job_id = int(cursor.lastrowid or 0)
            db.executemany(
                "UPDATE instances SET job_id = ? WHERE id = ? AND job_id IS NULL",
                [(job_id, i) for i in instance_ids],
            )
            db.execute(
                "INSERT INTO events (job_id, at, state, message) VALUES (?, ?, ?, ?)",
                (job_id, now, state, reason or f"{len(instance_ids)} instances settled"),
            )
        return job_id

    def update_job(self, job_id: int, state: str, message: str, **fields: str | None) -> None:
        """Move a job to a new state, with a message for its history."""
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        allowed = {"reason", "rule", "method", "model", "output_dir"}
        if set(fields) - allowed:
            raise ValueError(f"unknown job fields {sorted(set(fields) - allowed)}")
        now = time.time()
        assignments = "".join(f", {name} = ?" for name in fields)
        with self._transaction() as db:
            db.execute(
                f"UPDATE jobs SET state = ?, updated_at = ?{assignments} WHERE id = ?",
                (state, now, *fields.values(), job_id),
            )
            db.execute(
                "INSERT INTO events (job_id, at, state, message) VALUES (?, ?, ?, ?)",
                (job_id, now, state, message),
            )

    def job(self, job_id: int) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job(**dict(row)) if row else None

    def jobs(self, states: Sequence[str] | None = None) -> list[Job]:
        query = "SELECT * FROM jobs"
        params: tuple[str, ...] = ()
        if states:
            query += f" WHERE state IN ({','.join('?' * len(states))})"
            params = tuple(states)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", params).fetchall()
        return [Job(**dict(row)) for row in rows]

    def events(self, job_id: int) -> list[tuple[float, str, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, state, message FROM events WHERE job_id = ? ORDER BY id", (job_id,)
            ).fetchall()
        return [(row["at"], row["state"], row["message"]) for row in rows]

    def purgeable(self, states: Sequence[str], before: float) -> list[Job]:
        """Terminal jobs in ``states`` last changed before ``before`` that still hold files."""
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(
                f"SELECT DISTINCT j.* FROM jobs j JOIN instances i ON i.job_id = j.id"
                f" WHERE j.state IN ({marks}) AND j.updated_at < ? AND i.purged_at IS NULL"
                f" ORDER BY j.id",
                (*states, before),
            ).fetchall()
        return [Job(**dict(row)) for row in rows]

    def mark_purged(self, job_id: int) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE instances SET purged_at = ? WHERE job_id = ? AND purged_at IS NULL",
                (now, job_id),
            )
            db.execute(
                "INSERT INTO events (job_id, at, state, message)"
                " SELECT id, ?, state, 'files purged' FROM jobs WHERE id = ?",
                (now, job_id),
            )

    def counts(self) -> dict[str, int]:
        """Jobs by state, plus unclaimed instances and pending deliveries (status, metrics)."""
        with self._lock:
            counts = dict.fromkeys(JOB_STATES, 0)
            for state, n in self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                counts[state] = n
            counts["unclaimed_instances"] = self._db.execute(
                "SELECT COUNT(*) FROM instances WHERE job_id IS NULL").fetchone()[0]
            counts["pending_deliveries"] = self._db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'").fetchone()[0]
            for state in ("pending", "written", "failed"):
                counts[f"reports_{state}"] = 0
            for state, n in self._db.execute("SELECT state, COUNT(*) FROM reports GROUP BY state"):
                counts[f"reports_{state}"] = n
        return counts

    # --- quality reports -----------------------------------------------------------------

    def request_report(self, job_id: int, destinations: Sequence[str]) -> None:
        """Ask for a (new) quality report of a job; an earlier one and its sends are reset."""
        now = time.time()
        with self._transaction() as db:
            db.execute("DELETE FROM deliveries WHERE job_id = ? AND kind = 'report'", (job_id,))
            db.execute(
                "INSERT OR REPLACE INTO reports (job_id, destinations, state, updated_at)"
                " VALUES (?, ?, 'pending', ?)", (job_id, ",".join(destinations), now),
            )

    def report(self, job_id: int) -> Report | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM reports WHERE job_id = ?", (job_id,)).fetchone()
        return Report(**dict(row)) if row else None

    def pending_reports(self) -> list[Report]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM reports WHERE state = 'pending' ORDER BY job_id").fetchall()
        return [Report(**dict(row)) for row in rows]

    def report_written(self, job_id: int, path: str, verdict: str) -> None:
        """The report file is on disk: record its verdict and queue its deliveries."""
        now = time.time()
        report = self.report(job_id)
        destinations = report.destinations.split(",") if report and report.destinations else []
        with self._transaction() as db:
            db.execute(
                "UPDATE reports SET state = 'written', verdict = ?, path = ?, error = NULL,"
                " updated_at = ? WHERE job_id = ?", (verdict, path, now, job_id),
            )
            _insert_deliveries(db, job_id, destinations, "report", now)
            db.execute(
                "INSERT INTO events (job_id, at, state, message)"
                " SELECT id, ?, state, ? FROM jobs WHERE id = ?",
                (now, f"quality report written: {verdict}", job_id),
            )

    def report_failed(self, job_id: int, error: str) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE reports SET state = 'failed', error = ?, updated_at = ? WHERE job_id = ?",
                (error, now, job_id),
            )
            db.execute(
                "INSERT INTO events (job_id, at, state, message)"
                " SELECT id, ?, state, ? FROM jobs WHERE id = ?",
                (now, f"quality report failed: {error}", job_id),
            )

    def retry(self, job_id: int) -> None:
        """Send a quarantined or failed job through the pipeline again, from routing."""
        job = self.job(job_id)
        if job is None:
            raise KeyError(f"no job {job_id}")
        if job.state not in ("quarantined", "failed"):
            raise ValueError(f"job {job_id} is {job.state}; only quarantined or failed jobs retry")
        with self._transaction() as db:
            db.execute("DELETE FROM deliveries WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM reports WHERE job_id = ?", (job_id,))
        self.update_job(job_id, "complete", "retry requested by an admin", reason=None)

    # --- deliveries ----------------------------------------------------------------------

    def add_deliveries(self, job_id: int, destinations: Sequence[str],
                       kind: str = "images") -> None:
        now = time.time()
        with self._transaction() as db:
            _insert_deliveries(db, job_id, destinations, kind, now)

    def deliveries(self, job_id: int, kind: str | None = None) -> list[Delivery]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM deliveries WHERE job_id = ? AND kind = IFNULL(?, kind)"
                " ORDER BY id", (job_id, kind),
            ).fetchall()
        return [Delivery(**dict(row)) for row in rows]

    def due_deliveries(self, now: float | None = None) -> list[Delivery]:
        """Pending deliveries whose time has come: images of harmonized jobs, and written
        reports (whatever their job's state: the images may be delivered already)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT d.* FROM deliveries d JOIN jobs j ON j.id = d.job_id"
                " LEFT JOIN reports r ON r.job_id = d.job_id"
                " WHERE d.state = 'pending' AND d.next_attempt_at <= ? AND ("
                "   (d.kind = 'images' AND j.state = 'harmonized')"
                "   OR (d.kind = 'report' AND r.state = 'written'))"
                " ORDER BY d.id",
                (now if now is not None else time.time(),),
            ).fetchall()
        return [Delivery(**dict(row)) for row in rows]

    def record_attempt(
        self, delivery_id: int, state: str, error: str | None, next_attempt_at: float
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, last_error = ?,"
                " next_attempt_at = ?, updated_at = ? WHERE id = ?",
                (state, error, next_attempt_at, time.time(), delivery_id),
            )


def _insert_deliveries(db: sqlite3.Connection, job_id: int, destinations: Sequence[str],
                       kind: str, now: float) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO deliveries (job_id, destination, kind, state, next_attempt_at,"
        " updated_at) VALUES (?, ?, ?, 'pending', ?, ?)",
        [(job_id, d, kind, now, now) for d in destinations],
    )
