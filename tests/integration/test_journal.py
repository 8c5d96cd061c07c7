"""The master's SQLite journal against a real dev server: kill -9 of the whole tree and recovery on the
next start, the dev server down while activities finish (the outbox), a crash matrix, and a full disk
under the journal (backpressure).

The journal is read from the test only through read-only SQLite connections (the master stays its one
writer). Each test prints a FIGURES line (pytest -s shows them)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from helpers import (TemporalEnv, activity_spec, exec_activity, kill_session, session_members, wait_until)
from workflows import WORKFLOW_TASK_QUEUE


# ---- helpers ---------------------------------------------------------------------------------------

def sleeper(md: Path, **opts) -> dict:
    return exec_activity("Sleep", "sleeper.py", env=[f"MARKER_DIR={md}"], **opts)


def markers(md: Path, pattern: str) -> list[Path]:
    return sorted(md.glob(pattern))


def marker_time(p: Path) -> float:
    return float(p.read_text().split()[0])


def start_workflow(env, specs: list[dict], timeout: float = 300.0, wf_id: str | None = None):
    async def go():
        return await env.client.start_workflow(
            "RunActivities", specs, id=wf_id or f"journal-{uuid.uuid4()}", task_queue=WORKFLOW_TASK_QUEUE,
            execution_timeout=timedelta(seconds=timeout))
    return env.run(go(), 30)


def workflow_result(env, handle, timeout: float = 120.0) -> list[dict]:
    async def go():
        return await asyncio.wait_for(handle.result(), timeout)
    return env.run(go(), timeout + 10)


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


_QUERY = """
import sqlite3, sys
con = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=5)
print(con.execute(sys.argv[2]).fetchone()[0])
con.close()
"""


def _query(path: Path, sql: str, ns_pid: int | None = None):
    """One value from the journal through a read-only connection; ns_pid: inside that process's mount
    namespace (SQLite resolves /proc/PID/root links back to this namespace's view)."""
    if ns_pid is None:
        con = _ro(path)
        try:
            return con.execute(sql).fetchone()[0]
        finally:
            con.close()
    r = subprocess.run(["nsenter", "-t", str(ns_pid), "-m", sys.executable, "-c", _QUERY, str(path), sql],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    v = r.stdout.strip()
    return int(v) if v.lstrip("-").isdigit() else v


def journal_rows(path: Path, ns_pid: int | None = None) -> tuple[int, int]:
    """(in-flight rows, outbox rows), read through a read-only connection."""
    return (_query(path, "SELECT count(*) FROM inflight", ns_pid),
            _query(path, "SELECT count(*) FROM outbox", ns_pid))


def journal_integrity(path: Path, ns_pid: int | None = None) -> str:
    return _query(path, "PRAGMA integrity_check", ns_pid)


def kill_tree(tp) -> None:
    """kill -9 of the master, its workers and their commands at once; wait until all are gone."""
    kill_session(tp.pid)
    tp.proc.wait(10)
    wait_until(lambda: not session_members(tp.pid), 10, "the killed tree to disappear")


def journal_cfg(jpath: Path, md: Path, **workers) -> dict:
    return {"workers": {"count": 2, "max_concurrent_activities": 4, "pollers": 2, "shutdown_timeout": 10,
                        "cancel_grace": 2, **workers},
            "journal": {"path": str(jpath)},
            "activities": [sleeper(md)]}


def count(rx: str, text: str) -> int:
    return len(re.findall(rx, text))


# ---- 1. kill -9 of the whole tree, then restart ----------------------------------------------------

def test_kill9_tree_then_restart_retries_at_once(server, tprefork, tmp_path):
    md = tmp_path / "markers"
    md.mkdir()
    jpath = tmp_path / "state" / "journal.db"
    cfg = journal_cfg(jpath, md)
    tp = tprefork(cfg, wait_ready=True)
    k, start_to_close = 8, 120
    h = start_workflow(server, [
        activity_spec("Sleep", [30, {"fast_retry": True}], tp.task_queue, activity_id=f"a{i}",
                      start_to_close_s=start_to_close, max_attempts=0, initial_interval_s=1) for i in range(k)])
    wait_until(lambda: len(markers(md, "a*.1.start")) == k, 30, f"{k} activities running")
    wait_until(lambda: journal_rows(jpath) == (k, 0), 10, f"{k} in-flight rows in the journal")
    kill_tree(tp)
    rows_after_kill = journal_rows(jpath)
    integrity_after_kill = journal_integrity(jpath)
    cfg["temporal"] = {"task_queue": tp.task_queue}
    t_restart = time.time()
    tp2 = tprefork(cfg, wait_ready=True)
    wait_until(lambda: len(markers(md, "a*.2.start")) == k, 30, "every interrupted task's next attempt")
    delays = [marker_time(p) - t_restart for p in markers(md, "a*.2.start")]
    out = workflow_result(server, h)
    wait_until(lambda: journal_rows(jpath) == (0, 0), 15, "the journal to empty")
    recovered = count(r"recovered a task of a previous run: Sleep id=a\d", tp2.log())
    lost = sum("ok" not in o for o in out)
    print(f"\nFIGURES kill -9 tree: K={k} rows after kill={rows_after_kill} integrity={integrity_after_kill} "
          f"recovered={recovered} next attempts after restart: max {max(delays):.2f}s "
          f"(start_to_close {start_to_close}s) lost={lost} rows left={journal_rows(jpath)}")
    assert rows_after_kill == (k, 0)
    assert integrity_after_kill == "ok"
    assert recovered == k
    assert max(delays) < 10, delays
    assert out == [{"ok": {"attempt": 2, "slept": 30}}] * k, out
    assert journal_integrity(jpath) == "ok"
    assert tp2.stop(20) == 0


# ---- 2. the dev server down while activities finish ------------------------------------------------

def test_server_down_results_delivered_after_restart(dev_server, runner, tprefork, tmp_path):
    srv = dev_server(db_file=tmp_path / "temporal.db")
    env = TemporalEnv(srv, runner)
    try:
        md = tmp_path / "markers"
        md.mkdir()
        jpath = tmp_path / "state" / "journal.db"
        # A short report retry in the children, so that the results go to the master's outbox.
        cfg = journal_cfg(jpath, md, report_retry=5)
        tp = tprefork(cfg, server=env, wait_ready=True)
        k, downtime = 8, 30.0
        h = start_workflow(env, [activity_spec("Sleep", [5], tp.task_queue, activity_id=f"d{i}",
                                               start_to_close_s=600, max_attempts=0) for i in range(k)])
        wait_until(lambda: len(markers(md, "d*.1.start")) == k, 30, f"{k} activities running")
        srv.stop()
        t_down = time.monotonic()
        assert not markers(md, "d*.1.done"), "an activity finished before the server was down"
        wait_until(lambda: len(markers(md, "d*.1.done")) == k, 30, "the activities to finish")
        tp.wait_log(r"handed over by its worker; the master delivers it", count=k, timeout=40)
        held = journal_rows(jpath)
        # The scenario: the server comes back 30 s after it went down.
        time.sleep(max(0.0, downtime - (time.monotonic() - t_down)))
        srv.start()
        t_up = time.monotonic()
        tp.wait_log(r"outbox: (delivered Sleep id=d\d|Sleep id=d\d .*NOT_FOUND)", count=k, timeout=60)
        delivered_after = time.monotonic() - t_up
        out = workflow_result(env, h, 120)
        wait_until(lambda: journal_rows(jpath) == (0, 0), 15, "the journal to empty")
        log = tp.log()
        delivered = count(r"outbox: delivered Sleep id=d\d", log)
        expired = count(r"outbox: Sleep id=d\d .*NOT_FOUND", log)
        lost = sum("ok" not in o for o in out)
        crashed = count(r"unexpectedly|killed by signal", log)
        print(f"\nFIGURES server down {downtime:.0f}s: K={k} held in outbox={held[1]} delivered={delivered} "
              f"expired(NOT_FOUND)={expired} lost={lost} all delivered {delivered_after:.2f}s after the restart; "
              f"tprefork crashes={crashed} (master pid {tp.pid} still running: {tp.running()})")
        assert held == (0, k), held
        assert delivered + expired == k
        assert lost == 0, out
        assert all(o["ok"]["attempt"] == 1 for o in out), out
        assert crashed == 0 and tp.running()
        assert journal_integrity(jpath) == "ok"
        assert tp.stop(20) == 0
    finally:
        env.close()


def test_outbox_left_by_a_stop_is_delivered_by_the_next_start(dev_server, runner, tprefork, tmp_path):
    srv = dev_server(db_file=tmp_path / "temporal.db")
    env = TemporalEnv(srv, runner)
    try:
        md = tmp_path / "markers"
        md.mkdir()
        jpath = tmp_path / "state" / "journal.db"
        cfg = journal_cfg(jpath, md, count=1, report_retry=2)
        tp = tprefork(cfg, server=env, wait_ready=True)
        h = start_workflow(env, [activity_spec("Sleep", [5], tp.task_queue, activity_id=f"o{i}",
                                               start_to_close_s=600, max_attempts=0) for i in range(2)])
        wait_until(lambda: len(markers(md, "o*.1.start")) == 2, 30, "the activities running")
        srv.stop()
        assert not markers(md, "o*.1.done"), "an activity finished before the server was down"
        tp.wait_log(r"handed over by its worker", count=2, timeout=30)
        since = tp.log_size()
        tp.signal(signal.SIGTERM)
        assert tp.wait_exit(30) == 0
        tp.wait_log(r"stop: trying the 2 undelivered report\(s\) once more", since=since, timeout=1)
        left = journal_rows(jpath)
        srv.start()
        cfg["temporal"] = {"task_queue": tp.task_queue}
        tp2 = tprefork(cfg, server=env, wait_ready=True)
        tp2.wait_log(r"2 undelivered report\(s\) of a previous run; delivering them", timeout=10)
        tp2.wait_log(r"outbox: delivered Sleep id=o\d", count=2, timeout=30)
        out = workflow_result(env, h, 60)
        print(f"\nFIGURES outbox across a stop: left in the journal={left[1]} delivered by the next start=2 "
              f"lost={sum('ok' not in o for o in out)}")
        assert left == (0, 2)
        assert out == [{"ok": {"attempt": 1, "slept": 5}}] * 2, out
        wait_until(lambda: journal_rows(jpath) == (0, 0), 15, "the journal to empty")
    finally:
        env.close()


# ---- 3. crash matrix ---------------------------------------------------------------------------------

PHASES = ("early", "random", "mid_exec", "at_done", "after_done")


def _kill_at(phase: str, md: Path, ids: list[str], rng: random.Random, t0: float) -> None:
    """Wait for a point of the activities' life, then return (the caller kills)."""
    first = ids[0]
    if phase == "early":          # around the poll, the journal write, the start of the command
        time.sleep(max(0.0, t0 + rng.uniform(0.0, 0.25) - time.monotonic()))
    elif phase == "random":
        time.sleep(max(0.0, t0 + rng.uniform(0.0, 1.5) - time.monotonic()))
    elif phase == "mid_exec":
        wait_until(lambda: markers(md, f"{first}.*.start"), 20, "a command to start", interval=0.005)
        time.sleep(rng.uniform(0.0, 0.3))
    elif phase == "at_done":      # the result is being reported
        wait_until(lambda: markers(md, f"{first}.*.done"), 20, "a command to finish", interval=0.002)
    else:                         # around the server's answer and the row's delete
        wait_until(lambda: markers(md, f"{first}.*.done"), 20, "a command to finish", interval=0.002)
        time.sleep(rng.uniform(0.0, 0.06))


def test_crash_matrix(server, tprefork, tmp_path):
    runs = int(os.environ.get("TP_CRASH_RUNS", "50"))
    rng = random.Random(int(os.environ.get("TP_CRASH_SEED", "5")))
    md = tmp_path / "markers"
    md.mkdir()
    jpath = tmp_path / "state" / "journal.db"
    cfg = journal_cfg(jpath, md, count=1)
    start_to_close = 4
    tp = tprefork(cfg, wait_ready=True)
    cfg["temporal"] = {"task_queue": tp.task_queue}
    per_phase = {p: 0 for p in PHASES}
    journal_retries = timeout_retries = first_time = lost = stuck = 0
    integrity_ok = 0
    t_start = time.monotonic()
    for run in range(runs):
        phase = PHASES[run % len(PHASES)]
        per_phase[phase] += 1
        ids = [f"r{run}x{j}" for j in range(2)]
        t0 = time.monotonic()
        h = start_workflow(server, [
            activity_spec("Sleep", [round(rng.uniform(0.05, 0.4), 3)], tp.task_queue, activity_id=i,
                          start_to_close_s=start_to_close, max_attempts=0, initial_interval_s=0.2,
                          maximum_interval_s=1) for i in ids], timeout=120)
        _kill_at(phase, md, ids, rng, t0)
        kill_tree(tp)
        tp = tprefork(cfg, wait_ready=True)
        out = workflow_result(server, h, 60)
        lost += sum("ok" not in o for o in out)
        log = tp.log()
        for i, o in zip(ids, out):
            if "ok" not in o:
                continue
            attempts = o["ok"]["attempt"]
            if attempts == 1:
                first_time += 1
                continue
            # Each retry came either from the journal's recovery, or from a server timeout (the task
            # was polled but not journaled yet when the tree died).
            rec = count(rf"recovered a task of a previous run: Sleep id={i} ", log)
            journal_retries += rec
            timeout_retries += attempts - 1 - rec
        try:
            wait_until(lambda: journal_rows(jpath) == (0, 0), 15, "no row left")
        except TimeoutError:
            stuck += sum(journal_rows(jpath))
        integrity_ok += journal_integrity(jpath) == "ok"
    total = time.monotonic() - t_start
    print(f"\nFIGURES crash matrix: runs={runs} activities={2 * runs} phases={per_phase} "
          f"done first time={first_time} retried via journal={journal_retries} "
          f"retried via server timeout (unjournaled window)={timeout_retries} lost={lost} stuck rows={stuck} "
          f"integrity ok {integrity_ok}/{runs} total {total:.0f}s")
    assert lost == 0
    assert stuck == 0
    assert integrity_ok == runs
    assert tp.stop(20) == 0


# ---- 4. disk full under the journal ------------------------------------------------------------------

def _can_unshare() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "true"], timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _fill(d: Path) -> int:
    """Write filler files in d until the file system is full; return the bytes written."""
    n = 0
    chunk = b"\0" * 4096
    for i in range(1000):
        f = d / f"filler-{i}"
        if f.exists():
            continue
        try:
            with open(f, "wb", buffering=0) as out:
                while True:
                    out.write(chunk)
                    n += len(chunk)
        except OSError:
            if f.stat().st_size == 0:
                f.unlink()
                return n
    return n


@pytest.mark.skipif(not _can_unshare(), reason="needs root and mount namespaces")
def test_disk_full_backpressure_and_recovery(server, tprefork, tmp_path):
    md = tmp_path / "markers"
    md.mkdir()
    mnt = tmp_path / "small"
    mnt.mkdir()
    jpath = mnt / "journal.db"
    cfg = journal_cfg(jpath, md, count=1, max_concurrent_activities=4, pollers=1)
    wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs -o size=512k,mode=0700 tmpfs "$0" && exec "$@"', str(mnt)]
    tp = tprefork(cfg, wrap=wrap, wait_ready=True)
    # The tmpfs as seen from here (files only: SQLite is opened inside the namespace, see _query).
    inside = Path(f"/proc/{tp.pid}/root") / str(mnt).lstrip("/")
    # Warm up: the journal works.
    assert server.run_workflow([activity_spec("Sleep", [0], tp.task_queue, activity_id="w0")]) == \
        [{"ok": {"attempt": 1, "slept": 0}}]
    filled = _fill(inside)
    since = tp.log_size()
    n = 12
    h = start_workflow(server, [activity_spec("Sleep", [0.3], tp.task_queue, activity_id=f"f{i:02d}",
                                              start_to_close_s=120, max_attempts=0) for i in range(n)])
    tp.wait_log(r"journal: cannot write: disk full", since=since, timeout=30)
    t_full = time.monotonic()
    pause = tp.wait_log(r"no new polls \((\d+) open, (\d+) task\(s\) in flight\)", since=since, timeout=10)
    open_at_pause, held_at_pause = int(pause.group(1)), int(pause.group(2))
    # Keep the disk full (a checkpoint may free a little space), and watch: tasks from the poll that was
    # open at the pause finish, no new poll is issued. A task the child held at the pause may not have
    # written its marker yet: the child's count is the one that holds.
    started_at_pause = max(len(markers(md, "f*.1.start")), held_at_pause)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        _fill(inside)
        time.sleep(0.1)
    started_while_full = len(markers(md, "f*.1.start"))
    paused_ok = tp.running()
    # Space returns.
    for f in inside.glob("filler-*"):
        f.unlink()
    t_free = time.monotonic()
    tp.wait_log(r"journal: writable again", since=since, timeout=15)
    recovered_after = time.monotonic() - t_free
    out = workflow_result(server, h, 120)
    wait_until(lambda: journal_rows(jpath, tp.pid) == (0, 0), 15, "the journal to empty")
    integrity = journal_integrity(jpath, tp.pid)
    log = tp.log()[since:]
    print(f"\nFIGURES disk full: filler={filled} B crashes={count(r'unexpectedly|killed by signal', log)} "
          f"tasks started at the pause={started_at_pause} started while full={started_while_full} "
          f"(pollers=1) unwritable for {t_free - t_full:.1f}s, writable again {recovered_after:.2f}s after "
          f"space returned; completed={sum('ok' in o for o in out)}/{n} lost={sum('ok' not in o for o in out)} "
          f"integrity={integrity}")
    assert paused_ok
    # At most the tasks of the poll(s) open when the pause arrived (pollers=1, and one re-opened
    # before the pause message came).
    assert started_while_full <= started_at_pause + open_at_pause + 1, \
        (started_at_pause, open_at_pause, started_while_full)
    assert started_while_full < n
    assert all("ok" in o for o in out), out
    assert integrity == "ok"
    assert count(r"unexpectedly|killed by signal", log) == 0
    assert tp.stop(20) == 0
