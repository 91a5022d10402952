"""The daemon's SQLite store: WAL, batching, downsampling, the disk bound, bad files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perfpilot.agent.daemon.store import Store, StoreError


def _store(path: Path, **kw) -> Store:
    return Store(path, **kw).open()


def test_wal_mode_and_batched_writes(tmp_path: Path) -> None:
    store = _store(tmp_path / "pp.db")
    now = time.time()
    store.add_samples(now, "host", {"cpu.utilization_pct": 12.5, "memory.used_bytes": 1e9})
    store.add_samples(now + 1, "host", {"cpu.utilization_pct": 13.5})
    # Nothing is on disk until the batch is flushed: another connection sees no samples.
    other = sqlite3.connect(tmp_path / "pp.db")
    assert other.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 0
    assert store.flush() == 3
    assert other.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 3
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    rows = store.query("cpu.utilization_pct", now - 10)
    assert [r["value"] for r in rows] == [12.5, 13.5]
    assert store.stats.flushed_until == pytest.approx(now + 1, abs=0.01)
    store.close()


def test_downsampling_keeps_minute_means_and_drops_old_raw(tmp_path: Path) -> None:
    store = _store(tmp_path / "pp.db", raw_retention=3600, rollup_step=60)
    now = time.time()
    base = (int(now) // 60) * 60 - 2 * 3600  # two hours ago, on a minute boundary
    for i in range(120):  # two minutes of 1 Hz samples, values 0..119
        store.add_samples(base + i, "name:web", {"memory.rss_bytes": float(i)})
    store.add_samples(now, "name:web", {"memory.rss_bytes": 999.0})
    store.flush()
    store.maintain(now)
    rows = store.query("memory.rss_bytes", base - 1, entity="name:web")
    rollups = [r for r in rows if r["kind"] == "rollup"]
    raw = [r for r in rows if r["kind"] == "raw"]
    assert [r["value"] for r in raw] == [999.0]  # only the recent sample stays raw
    assert [(r["value"], r["min"], r["max"], r["n"]) for r in rollups] == [(29.5, 0, 59, 60), (89.5, 60, 119, 60)]
    store.close()


def test_size_bound_evicts_oldest_and_never_raises(tmp_path: Path) -> None:
    limit = 256 * 1024
    store = _store(tmp_path / "pp.db", max_bytes=limit, raw_retention=10 * 86400)
    start = time.time() - 5000
    for second in range(5000):  # ~100k rows, several MB unbounded
        store.add_samples(start + second, "host", {f"m{j}": float(second) for j in range(20)})
        if second % 250 == 0:
            store.flush()
            store.maintain(start + second)
    store.flush()
    store.maintain()
    assert store.stats.size_evictions > 0
    assert store.stats.dropped == 0
    assert store.size_bytes() <= limit
    # The database file itself stays near the bound (pages are returned to the filesystem).
    assert os.path.getsize(tmp_path / "pp.db") <= 2 * limit
    newest = store.query("m0", start + 4990)
    assert newest and newest[-1]["value"] == 4999.0  # the newest data is what is kept
    assert sqlite3.connect(tmp_path / "pp.db").execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()


def test_full_disk_during_a_flush_is_survived(tmp_path: Path) -> None:
    """max_page_count is the store's hard cap: hitting it is SQLITE_FULL, as on a full disk."""
    store = _store(tmp_path / "pp.db", max_bytes=128 * 1024, raw_retention=10 * 86400)
    start = time.time() - 3000
    for second in range(3000):  # one huge batch, far over the cap
        store.add_samples(start + second, "host", {f"m{j}": float(second) for j in range(10)})
    store.flush()
    assert "full" in store.stats.last_error
    assert store.stats.size_evictions > 0
    # Either the retry after shrinking fitted, or the batch was dropped and counted: never a crash.
    assert store.stats.flushes + (1 if store.stats.dropped else 0) == 1
    store.add_samples(time.time(), "host", {"m0": 1.0})
    assert store.flush() == 1  # and the store keeps working
    store.close()


def test_flapping_writes_are_one_failing_spell_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """On a nearly full disk a small batch fits and the next does not: writes flap. Here a
    real second writer holds the lock on and off. The spell ends only after
    RECOVERED_AFTER flushes in a row succeed; a new spell within WARN_QUIET_S of the warning
    is counted and named in the next warning, not logged again."""
    from perfpilot.agent.daemon.store import RECOVERED_AFTER, WARN_QUIET_S

    path = tmp_path / "pp.db"
    store = _store(path, busy_timeout=0.05)
    holder = sqlite3.connect(path, isolation_level=None)
    values = iter(range(100))

    def flush(locked: bool) -> int:
        if locked:
            holder.execute("BEGIN EXCLUSIVE")
        store.add_samples(time.time(), "host", {"m": float(next(values))})  # a new value: stored
        try:
            return store.flush()
        finally:
            if locked:
                holder.execute("ROLLBACK")

    def warnings(word: str) -> int:
        return sum(word in r.getMessage() for r in caplog.records if r.levelname == "WARNING")

    caplog.set_level("DEBUG", logger="perfpilot")
    for locked in (True, False, True, False, True):  # flapping: one spell
        flush(locked)
    assert store.stats.failing_since is not None and store.stats.dropped == 3
    for _ in range(RECOVERED_AFTER - 1):
        assert flush(False) == 1
    assert store.stats.failing_since is not None  # not yet: writes have flapped back before
    assert (warnings("cannot write to"), warnings("work again")) == (1, 0)
    flush(False)
    assert store.stats.failing_since is None and (warnings("cannot write to"), warnings("work again")) == (1, 1)
    # A new spell soon after: /healthz's flag is set again, the log stays quiet.
    flush(True)
    assert store.stats.failing_since is not None and warnings("cannot write to") == 1
    for _ in range(RECOVERED_AFTER):
        flush(False)
    assert store.stats.failing_since is None and warnings("work again") == 1
    # Later than WARN_QUIET_S after the warning: logged, with the quiet spell counted.
    store.stats.last_warned -= WARN_QUIET_S + 1
    flush(True)
    last = [r.getMessage() for r in caplog.records if "cannot write to" in r.getMessage()][-1]
    assert warnings("cannot write to") == 2 and "(1 shorter failing spells since the last warning)" in last
    holder.close()
    store.close()


def test_corrupt_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "pp.db"
    path.write_bytes(b"this is not sqlite" * 500)
    with pytest.raises(StoreError) as err:
        _store(path)
    message = str(err.value)
    assert "corrupt or not a perfpilot database" in message and "\n" not in message
    assert "move the file aside" in message


def test_database_locked_by_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "pp.db"
    _store(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError) as err:
            Store(path, busy_timeout=0.2).open()
        assert "is locked by another process" in str(err.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_second_daemon_on_the_same_database_is_refused(tmp_path: Path) -> None:
    first = _store(tmp_path / "pp.db")
    with pytest.raises(StoreError, match=f"in use by another perfpilot daemon \\(pid {os.getpid()}\\)"):
        _store(tmp_path / "pp.db")
    first.close()
    _store(tmp_path / "pp.db").close()  # free again once the first one closed


def test_crash_loses_only_the_unflushed_batch(tmp_path: Path) -> None:
    """A writer SIGKILLed after some flushes: the database opens cleanly with every flushed row."""
    path = tmp_path / "pp.db"
    script = f"""
import os, signal, time
from perfpilot.agent.daemon.store import Store
s = Store({str(path)!r}).open()
for i in range(50):
    s.add_samples(1000.0 + i, "host", {{"x": float(i)}})
    if i % 10 == 9:
        s.flush()
s.add_samples(2000.0, "host", {{"x": -1.0}})  # buffered, never flushed
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    store = _store(path)
    assert store.stats.opened_after_crash  # noticed, and checked with quick_check
    values = [r["value"] for r in store.query("x", 0, until=3000)]
    assert values == [float(i) for i in range(50)]
    store.close()
    reopened = _store(path)
    assert not reopened.stats.opened_after_crash
    reopened.close()


def test_readonly_open_of_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "nope.db", readonly=True).open()


def test_unchanged_values_are_stored_once_a_minute(tmp_path: Path) -> None:
    store = _store(tmp_path / "pp.db", unchanged_every=60)
    start = time.time() - 200
    for second in range(150):
        store.add_samples(start + second, "host", {"memory.total_bytes": 8e9, "cpu.time_s": float(second)})
    store.flush()
    flat = store.query("memory.total_bytes", start - 1)
    moving = store.query("cpu.time_s", start - 1)
    assert [round(r["ts"] - start) for r in flat] == [0, 60, 120]  # heartbeat only
    assert len(moving) == 150  # every change is kept
    store.close()


def test_findings_left_active_by_the_last_run_are_closed_on_restart(tmp_path: Path) -> None:
    # A restarted daemon's findings engine starts empty: a row the last run left active was
    # never updated again and `perfpilot daemon status|findings` showed it active for ever.
    path = tmp_path / "pp.db"
    store = _store(path)
    now = time.time()
    store.put_finding({"kind": "restarts", "entity": "name:x", "first_seen": now - 60, "last_seen": now,
                       "active": True, "severity": "warning", "message": "name:x: restarted 5 times in 10 min"})
    store.flush()
    store.close()
    reader = Store(path, readonly=True).open()
    assert [f["active"] for f in reader.findings()] == [True]  # a reader changes nothing
    reader.close()
    store = _store(path)
    (finding,) = store.findings()
    assert not finding["active"] and finding["message"].endswith("(closed when the daemon restarted)")
    assert store.findings(active_only=True) == [] and store.summary()["active_findings"] == 0
    store.close()
