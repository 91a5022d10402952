"""The daemon's store: SQLite in WAL mode, batched writes, retention, downsampling and
a hard bound on disk use.

Durability: samples are buffered in memory and written in one transaction every
``flush_interval``; WAL with ``synchronous=NORMAL`` makes each commit survive a crash of
the process (SIGKILL, OOM kill), so a crash loses at most the samples of the last flush
interval. ``flushed_until`` says how far the database is known to be complete.

Unchanged values are stored at most once a minute (a heartbeat), changed ones every
tick: raw queries see steps, and minute means weight ticks where values moved a little
more than flat stretches (the price of a small database).

Layout: ``series`` maps (entity, metric) to a small integer; ``samples`` is a
``WITHOUT ROWID`` table keyed by (ts, series) so rows append in time order and retention
deletes a prefix. ``rollups`` holds per-step (default 1 minute) mean/min/max/count.

Disk bound: ``max_db_bytes`` is kept by deleting the oldest data (raw first, rolled up
to minutes before it goes; then the oldest rollups) and returning freed pages to the
filesystem (``auto_vacuum=INCREMENTAL``). ``max_page_count`` is set a little above the
bound, so a runaway write fails with SQLITE_FULL -- handled exactly like a full disk:
shrink, retry once, and if that fails drop the batch and count it, never crash.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from perfpilot.errors import PerfpilotError

log = logging.getLogger("perfpilot.daemon")

SCHEMA_VERSION = 1
PAGE_SIZE = 4096

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series(id INTEGER PRIMARY KEY, entity TEXT NOT NULL, metric TEXT NOT NULL,
    UNIQUE(entity, metric));
CREATE TABLE IF NOT EXISTS samples(ts INTEGER NOT NULL, series INTEGER NOT NULL, value REAL,
    PRIMARY KEY(ts, series)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollups(ts INTEGER NOT NULL, series INTEGER NOT NULL, mean REAL, min REAL, max REAL,
    n INTEGER, PRIMARY KEY(ts, series)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events(ts INTEGER NOT NULL, kind TEXT NOT NULL, entity TEXT, message TEXT);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE TABLE IF NOT EXISTS hotspots(ts INTEGER NOT NULL, entity TEXT NOT NULL, pid INTEGER, rank INTEGER,
    function TEXT, file TEXT, line INTEGER, self_pct REAL, total_pct REAL, samples INTEGER);
CREATE INDEX IF NOT EXISTS hotspots_ts ON hotspots(ts);
CREATE TABLE IF NOT EXISTS findings(id INTEGER PRIMARY KEY, kind TEXT NOT NULL, entity TEXT NOT NULL,
    first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL, active INTEGER NOT NULL, severity TEXT,
    message TEXT, details TEXT, proposal TEXT);
CREATE INDEX IF NOT EXISTS findings_last ON findings(last_ts);
CREATE TABLE IF NOT EXISTS proposals(id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, kind TEXT NOT NULL,
    entity TEXT NOT NULL, pid INTEGER, process TEXT, status TEXT NOT NULL, backend TEXT, finding TEXT,
    proposals TEXT, error TEXT, request TEXT);
CREATE INDEX IF NOT EXISTS proposals_ts ON proposals(ts);
"""
PROPOSAL_COLUMNS = ("id", "ts", "kind", "entity", "pid", "process", "status", "backend", "finding", "proposals",
                    "error", "request")


CLOSED_AT_RESTART = " (closed when the daemon restarted)"


class StoreError(PerfpilotError):
    """The database cannot be opened or used (corrupt, locked, wrong file, no space)."""


def _ms(ts: float) -> int:
    return int(round(ts * 1000))


# A failing spell ends after this many successful flushes in a row; a spell that starts
# within WARN_QUIET_S of the last warning is not logged again (see StoreStats).
RECOVERED_AFTER = 3
WARN_QUIET_S = 300.0


def _is_full(exc: sqlite3.Error) -> bool:
    return "full" in str(exc).lower()


@dataclass
class StoreStats:
    flushes: int = 0
    rows_written: int = 0
    dropped: int = 0
    retention_runs: int = 0
    size_evictions: int = 0
    flushed_until: float = 0.0
    last_error: str = ""
    opened_after_crash: bool = False
    # Set while writes fail (disk full, I/O errors): rows are being dropped. /healthz says
    # "degraded" meanwhile; the first failure and the recovery are logged, once each. On a
    # nearly full disk writes flap (a small batch fits in a page's free space, the next
    # does not), so a spell ends only after RECOVERED_AFTER flushes in a row succeed, and
    # a new spell within WARN_QUIET_S of the last warning is counted, not logged again.
    failing_since: float | None = None
    dropped_while_failing: int = 0
    ok_in_a_row: int = 0
    last_warned: float | None = None  # equals failing_since while the spell was warned of
    quiet_spells: int = 0


@dataclass
class _Buffer:
    samples: list[tuple[int, str, str, float]] = field(default_factory=list)
    events: list[tuple[int, str, str, str]] = field(default_factory=list)
    hotspots: list[tuple[Any, ...]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples) + len(self.events) + len(self.hotspots) + len(self.findings)


class Store:
    """Read-write for the daemon (one writer, guarded by a lock file), read-only for the CLI."""

    def __init__(self, path: Path | str, *, max_bytes: int = 512 * 1024 * 1024, raw_retention: float = 86400.0,
                 rollup_retention: float = 30 * 86400.0, rollup_step: float = 60.0, readonly: bool = False,
                 busy_timeout: float = 2.0, unchanged_every: float = 60.0) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.raw_retention = raw_retention
        self.rollup_retention = rollup_retention
        self.step_ms = max(1000, _ms(rollup_step))
        self.readonly = readonly
        self.busy_timeout = busy_timeout
        self.unchanged_ms = _ms(unchanged_every)
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self.stats = StoreStats()
        self._buffer = _Buffer()
        self._lock = threading.Lock()  # guards the buffer
        self._db_lock = threading.Lock()  # one statement stream on the connection
        self._series: dict[tuple[str, str], int] = {}
        self._lockfile: Any = None
        self.conn: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ opening

    def open(self) -> "Store":
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise self._explain(exc) from None
        return self

    def _explain(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        low = text.lower()
        if "locked" in low or "busy" in low:
            return StoreError(f"database {self.path} is locked by another process ({text})",
                              hint="stop the other writer or pass --db with another path")
        if "not a database" in low or "malformed" in low or "corrupt" in low:
            return StoreError(f"database {self.path} is corrupt or not a perfpilot database ({text})",
                              hint="move the file aside (a new one is created) or pass --db with another path")
        if "readonly" in low or "unable to open" in low:
            return StoreError(f"database {self.path} cannot be opened for writing ({text})",
                              hint="check the directory exists and is writable by this user")
        return StoreError(f"database {self.path}: {text}")

    def _open(self) -> None:
        if self.readonly:
            if not self.path.is_file():
                raise StoreError(f"database {self.path} does not exist",
                                 hint="start `perfpilot daemon` first, or pass --db with the daemon's path")
            uri = f"file:{self.path}?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout, check_same_thread=False,
                                        isolation_level=None)
            version = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if version is None:
                raise StoreError(f"database {self.path} is not a perfpilot daemon database")
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the database's folder {self.path.parent}: {exc.strerror}",
                             hint="pass --db with a path in a writable folder") from None
        self._take_lockfile()
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self.conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout, check_same_thread=False,
                                    isolation_level=None)
        conn = self.conn
        if fresh:
            # Must precede the first table: only then does incremental vacuum work.
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"database {self.path}: cannot switch to WAL mode (got {mode})",
                             hint="put the database on a local filesystem")
        conn.execute("PRAGMA synchronous=NORMAL")
        # The WAL counts against the disk bound: keep it a small fraction of it.
        conn.execute(f"PRAGMA journal_size_limit={min(4 << 20, self.max_bytes // 8)}")
        conn.execute(f"PRAGMA wal_autocheckpoint={max(16, min(256, self.max_bytes // PAGE_SIZE // 16))}")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA cache_size=-2000")  # 2 MB: the daemon's RSS budget is small
        self._set_page_cap()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in SCHEMA.strip().split(";"):
                if statement.strip():
                    conn.execute(statement)
            version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if version is None:
                conn.execute("INSERT INTO meta VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(version[0]) > SCHEMA_VERSION:
                raise StoreError(f"database {self.path} was written by a newer perfpilot (schema {version[0]})",
                                 hint="upgrade perfpilot or pass --db with another path")
            clean = conn.execute("SELECT value FROM meta WHERE key='clean_shutdown'").fetchone()
            self.stats.opened_after_crash = clean is not None and clean[0] == "0"
            conn.execute("INSERT OR REPLACE INTO meta VALUES('clean_shutdown', '0')")
            # The findings engine starts empty: a finding the last run left active would stay
            # "active" for ever (no one updates or resolves it). Close it; this run raises a
            # new one if the condition still holds.
            conn.execute(f"UPDATE findings SET active = 0, message = COALESCE(message, '') || '{CLOSED_AT_RESTART}'"
                         " WHERE active = 1")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if self.stats.opened_after_crash:
            # The last run did not shut down cleanly: make sure what it left is sound.
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise StoreError(f"database {self.path} is corrupt after a crash ({result})",
                                 hint="move the file aside (a new one is created) or pass --db with another path")
        for sid, entity, metric in conn.execute("SELECT id, entity, metric FROM series"):
            self._series[(entity, metric)] = sid
        row = conn.execute("SELECT MAX(ts) FROM samples").fetchone()
        if row and row[0] is not None:
            self.stats.flushed_until = row[0] / 1000.0

    def _take_lockfile(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            handle = open(lock_path, "a+")
        except OSError as exc:
            raise StoreError(f"cannot create lock file {lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            handle.close()
            raise StoreError(f"database {self.path} is in use by another perfpilot daemon (pid {owner})",
                             hint="stop it first, or pass --db with another path") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lockfile = handle

    def _set_page_cap(self) -> None:
        assert self.conn is not None
        page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        used = self.conn.execute("PRAGMA page_count").fetchone()[0]
        cap = max(int(self.max_bytes * 1.25) // page_size, used + 64)
        self.conn.execute(f"PRAGMA max_page_count={cap}")

    # ------------------------------------------------------------------ writing

    def add_samples(self, ts: float, entity: str, values: dict[str, float]) -> None:
        """Buffer one tick's values. A value equal to the last one stored for its series is
        skipped unless ``unchanged_every`` has passed (a heartbeat), so constant series
        (memory total, thread counts, an idle process's CPU time) cost almost nothing."""
        t = _ms(ts)
        rows = []
        for metric, value in values.items():
            if value is None or not math.isfinite(value):
                continue
            key = (entity, metric)
            last = self._last.get(key)
            if last is not None and last[0] == value and t - last[1] < self.unchanged_ms:
                continue
            self._last[key] = (float(value), t)
            rows.append((t, entity, metric, float(value)))
        with self._lock:
            self._buffer.samples.extend(rows)

    def add_event(self, ts: float, kind: str, entity: str, message: str) -> None:
        with self._lock:
            self._buffer.events.append((_ms(ts), kind, entity, message))

    def add_hotspots(self, ts: float, entity: str, pid: int, hotspots: Iterable[dict[str, Any]]) -> None:
        t = _ms(ts)
        rows = [(t, entity, pid, rank, h.get("function"), h.get("file"), h.get("line"), h.get("self_pct"),
                 h.get("total_pct"), h.get("samples")) for rank, h in enumerate(hotspots, 1)]
        with self._lock:
            self._buffer.hotspots.extend(rows)

    def put_finding(self, finding: dict[str, Any]) -> None:
        with self._lock:
            self._buffer.findings.append(dict(finding))

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def flush(self) -> int:
        """Write everything buffered in one transaction; return rows written."""
        if self.conn is None:
            return 0
        with self._lock:
            batch, self._buffer = self._buffer, _Buffer()
        if not len(batch):
            return 0
        with self._db_lock:
            for attempt in (1, 2):
                try:
                    written = self._write(batch)
                except sqlite3.OperationalError as exc:
                    self._rollback()
                    self.stats.last_error = str(exc)
                    if _is_full(exc) and attempt == 1:
                        self._shrink(target=int(self.max_bytes * 0.5))
                        continue
                    self._write_failed(exc, len(batch))
                    return 0
                self._write_succeeded()
                self.stats.flushes += 1
                self.stats.rows_written += written
                if batch.samples:
                    self.stats.flushed_until = max(self.stats.flushed_until, max(r[0] for r in batch.samples) / 1000)
                return written
        return 0

    def _rollback(self) -> None:
        try:
            if self.conn is not None and self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite rolls back on its own when the failing statement already did

    def _write_failed(self, exc: sqlite3.Error, rows: int) -> None:
        stats, now = self.stats, time.time()
        stats.dropped += rows
        stats.dropped_while_failing += rows
        stats.ok_in_a_row = 0
        if stats.failing_since is not None:
            return
        stats.failing_since = now
        if stats.last_warned is not None and now - stats.last_warned < WARN_QUIET_S:
            stats.quiet_spells += 1
            log.debug("perfpilot daemon: writes to %s failing again: %s", self.path, exc)
            return
        stats.last_warned = now
        hint = " (is the disk full?)" if _is_full(exc) or "I/O" in str(exc) else ""
        earlier = (f" ({stats.quiet_spells} shorter failing spells since the last warning)"
                   if stats.quiet_spells else "")
        stats.quiet_spells = 0
        log.warning("perfpilot daemon: cannot write to %s: %s%s; dropping rows until writes succeed again "
                    "(/healthz reports degraded)%s", self.path, exc, hint, earlier)

    def _write_succeeded(self) -> None:
        stats = self.stats
        if stats.failing_since is None:
            return
        stats.ok_in_a_row += 1
        if stats.ok_in_a_row < RECOVERED_AFTER:
            return
        warned = stats.last_warned == stats.failing_since  # this spell's start was logged
        log.log(logging.WARNING if warned else logging.DEBUG,
                "perfpilot daemon: writes to %s work again; %d rows were dropped over %.0f s", self.path,
                stats.dropped_while_failing, time.time() - stats.failing_since)
        stats.failing_since, stats.dropped_while_failing, stats.ok_in_a_row = None, 0, 0

    def _series_id(self, entity: str, metric: str) -> int:
        key = (entity, metric)
        sid = self._series.get(key)
        if sid is None:
            assert self.conn is not None
            self.conn.execute("INSERT OR IGNORE INTO series(entity, metric) VALUES(?, ?)", key)
            sid = self.conn.execute("SELECT id FROM series WHERE entity=? AND metric=?", key).fetchone()[0]
            self._series[key] = sid
        return sid

    def _write(self, batch: _Buffer) -> int:
        conn = self.conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        known = dict(self._series)
        try:
            rows = [(t, self._series_id(entity, metric), value) for t, entity, metric, value in batch.samples]
            conn.executemany("INSERT OR REPLACE INTO samples(ts, series, value) VALUES(?, ?, ?)", rows)
            conn.executemany("INSERT INTO events(ts, kind, entity, message) VALUES(?, ?, ?, ?)", batch.events)
            conn.executemany("INSERT INTO hotspots VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch.hotspots)
            for finding in batch.findings:
                self._upsert_finding(finding)
            conn.execute("COMMIT")
        except BaseException:
            self._series = known  # ids handed out inside the rolled-back transaction are void
            raise
        return len(rows) + len(batch.events) + len(batch.hotspots) + len(batch.findings)

    def _upsert_finding(self, f: dict[str, Any]) -> None:
        assert self.conn is not None
        details = json.dumps(f.get("details") or {}, sort_keys=True)
        proposal = json.dumps(f["proposal"]) if f.get("proposal") is not None else None
        row = self.conn.execute(
            "SELECT id FROM findings WHERE kind=? AND entity=? AND first_ts=?",
            (f["kind"], f["entity"], _ms(f["first_seen"])),
        ).fetchone()
        values = (_ms(f["last_seen"]), 1 if f.get("active") else 0, f.get("severity"), f.get("message"), details)
        if row is None:
            self.conn.execute(
                "INSERT INTO findings(kind, entity, first_ts, last_ts, active, severity, message, details, proposal)"
                " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (f["kind"], f["entity"], _ms(f["first_seen"]), *values, proposal),
            )
        else:
            self.conn.execute(
                "UPDATE findings SET last_ts=?, active=?, severity=?, message=?, details=?,"
                " proposal=COALESCE(?, proposal) WHERE id=?", (*values, proposal, row[0]))

    def add_proposal(self, record: dict[str, Any]) -> int | None:
        """Write one proposal record now (they are rare; the caller wants its id).
        None when the store cannot take it (full, closed): the caller keeps it in memory."""
        if self.conn is None or self.readonly:
            return None
        values = (_ms(record["ts"]), record["kind"], record["entity"], record.get("pid"), record.get("process"),
                  record["status"], record.get("backend"), record.get("finding"),
                  json.dumps(record.get("proposals") or []), record.get("error") or "",
                  json.dumps(record.get("request") or []))
        with self._db_lock:
            try:
                cursor = self.conn.execute(
                    "INSERT INTO proposals(ts, kind, entity, pid, process, status, backend, finding, proposals, error,"
                    " request) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            except sqlite3.Error as exc:
                self.stats.last_error = f"proposal: {exc}"
                return None
            return cursor.lastrowid

    # ------------------------------------------------------------- maintenance

    def size_bytes(self) -> int:
        """Pages in use (free pages excluded) plus the WAL file."""
        if self.conn is None:
            return 0
        with self._db_lock:
            return self._size_locked()

    def _size_locked(self) -> int:
        assert self.conn is not None
        page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        try:
            wal = os.path.getsize(str(self.path) + "-wal")
        except OSError:
            wal = 0
        return (pages - free) * page_size + wal

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.path.getsize(str(self.path) + suffix)
            except OSError:
                pass
        return total

    def maintain(self, now: float | None = None) -> None:
        """Downsample old raw samples, apply retention, keep the size bound."""
        if self.conn is None or self.readonly:
            return
        now = time.time() if now is None else now
        with self._db_lock:
            try:
                self._roll_up_before(_ms(now - self.raw_retention))
                old = _ms(now - self.rollup_retention)
                self._in_tx(
                    ("DELETE FROM rollups WHERE ts < ?", (old,)),
                    ("DELETE FROM events WHERE ts < ?", (old,)),
                    ("DELETE FROM hotspots WHERE ts < ?", (old,)),
                    ("DELETE FROM findings WHERE last_ts < ? AND active = 0", (old,)),
                    ("DELETE FROM proposals WHERE ts < ?", (old,)),
                )
                self.stats.retention_runs += 1
                if self._size_locked() > self.max_bytes:
                    self._shrink(target=int(self.max_bytes * 0.8))
                self.conn.execute("PRAGMA incremental_vacuum")
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.OperationalError as exc:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                self.stats.last_error = f"maintenance: {exc}"

    def _in_tx(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        assert self.conn is not None
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                self.conn.execute(sql, params)
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def _roll_up_before(self, cutoff_ms: int) -> None:
        """Fold raw samples older than ``cutoff_ms`` into per-step means, then delete them."""
        cutoff = (cutoff_ms // self.step_ms) * self.step_ms
        step = self.step_ms
        self._in_tx(
            ("INSERT OR REPLACE INTO rollups(ts, series, mean, min, max, n) "
             "SELECT (ts / ?) * ?, series, AVG(value), MIN(value), MAX(value), COUNT(*) "
             "FROM samples WHERE ts < ? GROUP BY 1, 2", (step, step, cutoff)),
            ("DELETE FROM samples WHERE ts < ?", (cutoff,)),
        )

    def _shrink(self, target: int) -> None:
        """Delete the oldest data until the store is under ``target`` bytes (disk bound)."""
        assert self.conn is not None
        for _ in range(12):
            if self._size_locked() <= target:
                break
            lo, hi = self.conn.execute("SELECT MIN(ts), MAX(ts) FROM samples").fetchone()
            try:
                if lo is not None and hi is not None and hi > lo:
                    # The oldest quarter of raw data becomes minute means, then goes
                    # (a partial minute at the cut is dropped: the bound comes first).
                    cut = lo + max((hi - lo) // 4, 1)
                    self._roll_up_before(cut)
                    self._in_tx(("DELETE FROM samples WHERE ts < ?", (cut,)))
                    if self._size_locked() > target:
                        lo2, hi2 = self.conn.execute("SELECT MIN(ts), MAX(ts) FROM rollups").fetchone()
                        if lo2 is not None:
                            cut = lo2 + max(((hi2 or lo2) - lo2) // 2, 1)
                            self._in_tx(("DELETE FROM rollups WHERE ts < ?", (cut,)))
                else:
                    lo2, hi2 = self.conn.execute("SELECT MIN(ts), MAX(ts) FROM rollups").fetchone()
                    if lo2 is None:
                        # Only the newest raw instant and small tables are left.
                        self._in_tx(("DELETE FROM samples", ()), ("DELETE FROM hotspots", ()),
                                    ("DELETE FROM events", ()))
                    else:
                        cut = lo2 + max(((hi2 or lo2) - lo2) // 2, 1)
                        self._in_tx(("DELETE FROM rollups WHERE ts <= ?", (cut,)))
                    oldest = self.conn.execute("SELECT MIN(ts) FROM hotspots").fetchone()[0]
                    if oldest is not None:
                        self._in_tx(("DELETE FROM hotspots WHERE ts <= ?", (oldest,)),
                                    ("DELETE FROM events WHERE ts <= ?", (oldest,)))
            except sqlite3.OperationalError as exc:
                # Even deleting needs a little space in the WAL; checkpoint and go on.
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                self.stats.last_error = f"shrink: {exc}"
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.conn.execute("PRAGMA incremental_vacuum")
            self.stats.size_evictions += 1

    # ------------------------------------------------------------------ reading

    def query(self, metric: str | None, since: float, entity: str | None = None,
              until: float | None = None) -> list[dict[str, Any]]:
        """Rows ``{ts, entity, metric, value, kind}`` from rollups then raw samples, oldest first."""
        assert self.conn is not None
        clauses, params = [], []
        if metric:
            clauses.append("s.metric = ?")
            params.append(metric)
        if entity:
            clauses.append("s.entity = ?")
            params.append(entity)
        where = (" AND " + " AND ".join(clauses)) if clauses else ""
        lo, hi = _ms(since), _ms(until if until is not None else time.time() + 86400)
        out: list[dict[str, Any]] = []
        with self._db_lock:
            for ts, ent, met, mean, mn, mx, n in self.conn.execute(
                "SELECT r.ts, s.entity, s.metric, r.mean, r.min, r.max, r.n FROM rollups r JOIN series s "
                f"ON s.id = r.series WHERE r.ts >= ? AND r.ts < ?{where} ORDER BY r.ts", (lo, hi, *params)):
                out.append({"ts": ts / 1000, "entity": ent, "metric": met, "value": mean, "min": mn, "max": mx,
                            "n": n, "kind": "rollup"})
            for ts, ent, met, value in self.conn.execute(
                "SELECT x.ts, s.entity, s.metric, x.value FROM samples x JOIN series s "
                f"ON s.id = x.series WHERE x.ts >= ? AND x.ts < ?{where} ORDER BY x.ts", (lo, hi, *params)):
                out.append({"ts": ts / 1000, "entity": ent, "metric": met, "value": value, "kind": "raw"})
        return out

    def metrics(self) -> list[tuple[str, str]]:
        assert self.conn is not None
        with self._db_lock:
            return [(e, m) for e, m in self.conn.execute("SELECT entity, metric FROM series ORDER BY entity, metric")]

    def findings(self, since: float = 0.0, active_only: bool = False) -> list[dict[str, Any]]:
        assert self.conn is not None
        sql = ("SELECT kind, entity, first_ts, last_ts, active, severity, message, details, proposal FROM findings"
               " WHERE last_ts >= ?" + (" AND active = 1" if active_only else "") + " ORDER BY last_ts DESC")
        with self._db_lock:
            rows = self.conn.execute(sql, (_ms(since),)).fetchall()
        return [{"kind": k, "entity": e, "first_seen": f / 1000, "last_seen": last / 1000, "active": bool(a),
                 "severity": s, "message": m, "details": json.loads(d or "{}"),
                 "proposal": json.loads(p) if p else None} for k, e, f, last, a, s, m, d, p in rows]

    def proposals(self, since: float = 0.0, *, limit: int = 200, proposal_id: int | None = None,
                  with_request: bool = False) -> list[dict[str, Any]]:
        """Stored proposals, newest first (``request``: the messages sent, only when asked)."""
        assert self.conn is not None
        sql = f"SELECT {', '.join(PROPOSAL_COLUMNS)} FROM proposals WHERE "
        params: tuple[Any, ...]
        if proposal_id is not None:
            sql, params = sql + "id = ?", (proposal_id,)
        else:
            sql, params = sql + "ts >= ? ORDER BY ts DESC, id DESC LIMIT ?", (_ms(since), limit)
        with self._db_lock:
            try:
                rows = self.conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []  # a database written before proposals existed
                raise
        out = []
        for row in rows:
            item = dict(zip(PROPOSAL_COLUMNS, row))
            item["ts"] = item["ts"] / 1000
            item["proposals"] = json.loads(item["proposals"] or "[]")
            request = json.loads(item.pop("request") or "[]")
            if with_request:
                item["request"] = request
            item["applied"] = False  # the daemon never applies a proposal
            out.append(item)
        return out

    def proposal_history(self, since: float) -> dict[tuple[str, str], tuple[float, str, int | None]]:
        """(finding kind, process) -> (time, status, id) of the latest request since
        ``since``: the rate limit survives a restart."""
        if self.conn is None:
            return {}
        with self._db_lock:
            rows = self.conn.execute("SELECT kind, process, MAX(ts), status, id FROM proposals WHERE ts >= ?"
                                     " GROUP BY kind, process", (_ms(since),)).fetchall()
        return {(kind, process or ""): (ts / 1000, status, pid) for kind, process, ts, status, pid in rows}

    def hotspots(self, entity: str | None = None, since: float = 0.0) -> list[dict[str, Any]]:
        assert self.conn is not None
        sql = ("SELECT ts, entity, pid, rank, function, file, line, self_pct, total_pct, samples FROM hotspots"
               " WHERE ts >= ?" + (" AND entity = ?" if entity else "") + " ORDER BY ts DESC, rank")
        params: tuple[Any, ...] = (_ms(since), entity) if entity else (_ms(since),)
        with self._db_lock:
            rows = self.conn.execute(sql, params).fetchall()
        keys = ("ts", "entity", "pid", "rank", "function", "file", "line", "self_pct", "total_pct", "samples")
        return [{**dict(zip(keys, row)), "ts": row[0] / 1000} for row in rows]

    def set_meta(self, key: str, value: str) -> None:
        """Record one fact about the daemon that owns this database (e.g. where it listens)."""
        assert self.conn is not None
        with self._db_lock:
            self._in_tx(("INSERT OR REPLACE INTO meta VALUES(?, ?)", (key, value)))

    def summary(self) -> dict[str, Any]:
        assert self.conn is not None
        with self._db_lock:
            first, last = self.conn.execute("SELECT MIN(ts), MAX(ts) FROM samples").fetchone()
            rfirst = self.conn.execute("SELECT MIN(ts) FROM rollups").fetchone()[0]
            series = self.conn.execute("SELECT COUNT(*) FROM series").fetchone()[0]
            entities = [e for (e,) in self.conn.execute("SELECT DISTINCT entity FROM series ORDER BY entity")]
            active = self.conn.execute("SELECT COUNT(*) FROM findings WHERE active = 1").fetchone()[0]
            clean = self.conn.execute("SELECT value FROM meta WHERE key='clean_shutdown'").fetchone()
            listen = self.conn.execute("SELECT value FROM meta WHERE key='listen'").fetchone()
        return {
            "path": str(self.path), "file_bytes": self.file_bytes(), "series": series, "entities": entities,
            "raw_from": first / 1000 if first is not None else None, "raw_to": last / 1000 if last else None,
            "rollups_from": rfirst / 1000 if rfirst is not None else None, "active_findings": active,
            "clean_shutdown": bool(clean and clean[0] == "1"), "listen": listen[0] if listen else None,
        }

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        if self.conn is None:
            return
        if not self.readonly:
            self.flush()
            with self._db_lock:
                try:
                    self.conn.execute("INSERT OR REPLACE INTO meta VALUES('clean_shutdown', '1')")
                    self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as exc:
                    self.stats.last_error = f"close: {exc}"
        self._close_quietly()

    def _close_quietly(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
            self.conn = None
        if self._lockfile is not None:
            try:
                self._lockfile.close()
            except OSError:
                pass
            self._lockfile = None
