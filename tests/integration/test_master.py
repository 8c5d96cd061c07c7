"""The prefork master against a real dev server: graceful stop with work in flight, stragglers killed at
the deadline and retried at once, idle stop in both server modes, a crashed child, reload, scaling,
signal storms, the pid file, process hygiene, the init script and systemd notifications.

Each test prints the figures it measures (pytest -s shows them; they are also in the assertion
messages)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from helpers import (REPO, activity_spec, clean_env, deep_merge, exec_activity, proc_table, to_libconfig,
                     tprefork_bin, wait_until)
from workflows import WORKFLOW_TASK_QUEUE


# ---- helpers ---------------------------------------------------------------------------------------

def start_workflow(env, specs: list[dict], timeout: float = 180.0):
    async def go():
        return await env.client.start_workflow(
            "RunActivities", specs, id=f"master-{uuid.uuid4()}", task_queue=WORKFLOW_TASK_QUEUE,
            execution_timeout=timedelta(seconds=timeout))
    return env.run(go(), 30)


def workflow_result(env, handle, timeout: float = 120.0) -> list[dict]:
    async def go():
        return await asyncio.wait_for(handle.result(), timeout)
    return env.run(go(), timeout + 10)


def sleeper(md: Path, **opts) -> dict:
    return exec_activity("Sleep", "sleeper.py", env=[f"MARKER_DIR={md}"], **opts)


def markers(md: Path, pattern: str) -> list[Path]:
    return sorted(md.glob(pattern))


def marker_time(p: Path) -> float:
    return float(p.read_text().split()[0])


def marker_pid(p: Path) -> int:
    return int(p.read_text().split()[1])


def alive(pid: int) -> bool:
    st = proc_table().get(pid)
    return st is not None and st.state != "Z"


def worker_pids(master_pid: int) -> list[int]:
    return [p.pid for p in proc_table().values() if p.ppid == master_pid and p.state != "Z"]


def cmdline(pid: int) -> str:
    """The process's command line; "" once it has gone (a listing can outlive what it lists)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def ppid_of(pid: int) -> int:
    return proc_table()[pid].ppid


# ---- 1. graceful stop with work in flight --------------------------------------------------------

def test_sigterm_lets_inflight_activities_finish(server, tprefork, tmp_path):
    md = tmp_path / "markers"
    md.mkdir()
    cfg = {"workers": {"count": 2, "max_concurrent_activities": 3, "pollers": 1, "shutdown_timeout": 30,
                       "cancel_grace": 5},
           "activities": [sleeper(md)]}
    tp = tprefork(cfg, wait_ready=True)
    k = 6
    h = start_workflow(server, [activity_spec("Sleep", [3], tp.task_queue, activity_id=f"a{i}", max_attempts=1,
                                              start_to_close_s=60) for i in range(k)])
    wait_until(lambda: len(markers(md, "a*.1.start")) == k, 30, f"{k} activities running")
    since = tp.log_size()
    t0 = time.monotonic()
    tp.signal(signal.SIGTERM)
    # Both workers stopped polling; from now on this tprefork must take no new task.
    tp.wait_log(r"polls closed", count=2, since=since, timeout=10)
    late = start_workflow(server, [activity_spec("Sleep", [0.1], tp.task_queue, activity_id=f"late{i}",
                                                 start_to_close_s=60) for i in range(3)])
    rc = tp.wait_exit(40)
    stop_s = time.monotonic() - t0
    out = workflow_result(server, h)
    print(f"\nFIGURES in-flight stop: K={k} completed={sum('ok' in o for o in out)} "
          f"late tasks taken after stop={len(markers(md, 'late*.start'))} exit={rc} stop_time={stop_s:.2f}s")
    assert rc == 0
    assert out == [{"ok": {"attempt": 1, "slept": 3}}] * k, out
    assert markers(md, "late*.start") == [], "a poll started after the stop took a task"
    assert 1.0 < stop_s < 10, f"stop took {stop_s:.2f} s with 3 s activities in flight"
    # Nothing lost: a new tprefork on the same queue runs what arrived after the stop.
    cfg["temporal"] = {"task_queue": tp.task_queue}
    tprefork(cfg, wait_ready=True)
    assert workflow_result(server, late, 60) == [{"ok": {"attempt": 1, "slept": 0.1}}] * 3


# ---- 2. stragglers killed at the deadline, retried at once ---------------------------------------

def test_stragglers_killed_at_deadline_and_retried_at_once(server, tprefork, tmp_path):
    md = tmp_path / "markers"
    md.mkdir()
    cfg = {"workers": {"count": 1, "max_concurrent_activities": 4, "pollers": 2, "shutdown_timeout": 4,
                       "cancel_grace": 2},
           # kill_grace beyond the deadline: the commands ignore SIGTERM and outlive the child's cancel
           "activities": [sleeper(md, kill_grace=60)]}
    tp = tprefork(cfg, wait_ready=True)
    s = 2
    start_to_close = 120
    h = start_workflow(server, [
        activity_spec("Sleep", [60, {"ignore_term": True, "fast_retry": True}], tp.task_queue,
                      activity_id=f"s{i}", start_to_close_s=start_to_close, max_attempts=0,
                      initial_interval_s=1) for i in range(s)])
    wait_until(lambda: len(markers(md, "s*.1.start")) == s, 30, "stragglers running")
    pids = [marker_pid(p) for p in markers(md, "s*.1.start")]
    t0 = time.monotonic()
    tp.signal(signal.SIGTERM)
    rc = tp.wait_exit(30)
    t_exit = time.time()
    stop_s = time.monotonic() - t0
    assert rc == 0
    assert 3.5 <= stop_s <= 8, f"the master exited {stop_s:.2f} s after SIGTERM (deadline 4 s)"
    assert re.search(r"outlived the shutdown deadline", tp.log())
    assert re.search(r"failing task of worker 0 .*: Sleep s\d attempt 1: WorkerShutdown", tp.log())
    assert not any(alive(p) for p in pids), "a straggler's command survived the stop"
    # A fresh tprefork gets the next attempts at once, not after start-to-close.
    cfg["temporal"] = {"task_queue": tp.task_queue}
    tprefork(cfg, wait_ready=True)
    wait_until(lambda: len(markers(md, "s*.2.start")) == s, 30, "second attempts")
    delays = [marker_time(p) - t_exit for p in markers(md, "s*.2.start")]
    out = workflow_result(server, h)
    print(f"\nFIGURES stragglers: S={s} killed_at={stop_s:.2f}s (deadline 4 s) next attempt after "
          f"{max(delays):.2f}s (start_to_close {start_to_close}s) lost={sum('ok' not in o for o in out)}")
    assert max(delays) < 10, delays
    assert out == [{"ok": {"attempt": 2, "slept": 60}}] * s, out


# ---- 3. idle stop in both server modes --------------------------------------------------------------

@pytest.mark.parametrize("mode", ["capability", "legacy-cancel", "legacy-wait"])
def test_idle_stop_latency(request, mode, tprefork, tmp_path):
    """With the capability the server completes open polls at once. Without it the drain either
    cancels them at once (poll_drain_wait = 0, the SDKs' choice: a task matched at that instant waits
    for its timeout) or, by default, waits for them (bounded; here a 4 s poll) and runs what they bring."""
    env = request.getfixturevalue("server" if mode == "capability" else "server_legacy")
    md = tmp_path / "markers"
    md.mkdir()
    workers = {"count": 2, "pollers": 2}
    if mode == "legacy-cancel":
        workers["poll_drain_wait"] = 0
    if mode == "legacy-wait":
        workers["poll_timeout"] = 4
    cfg = {"workers": workers, "activities": [sleeper(md)]}
    tp = tprefork(cfg, server=env, wait_ready=True)
    cap = "yes" if mode == "capability" else "no"
    assert f"poll_complete_on_shutdown={cap}" in tp.log()
    t0 = time.monotonic()
    tp.signal(signal.SIGTERM)
    rc = tp.wait_exit(30)
    latency = time.monotonic() - t0
    # Tasks scheduled around the stop are all run by the next tprefork: none was swallowed.
    h = start_workflow(env, [activity_spec("Sleep", [0], tp.task_queue, activity_id=f"i{i}",
                                           start_to_close_s=60) for i in range(4)])
    cfg["temporal"] = {"task_queue": tp.task_queue}
    tprefork(cfg, server=env, wait_ready=True)
    out = workflow_result(env, h, 30)
    print(f"\nFIGURES idle stop ({mode}): latency={latency * 1000:.0f} ms, exit={rc}, "
          f"lost={sum('ok' not in o for o in out)}")
    assert rc == 0
    if mode == "legacy-wait":
        assert 0.5 < latency < 6.0, f"idle stop took {latency:.2f} s with 4 s polls"
        assert "waiting up to 8000 ms for 2 open poll(s)" in tp.log()
        assert "cancelling" not in tp.log(), "the polls should have completed by themselves"
    else:
        assert latency < 1.0, f"idle stop took {latency:.2f} s"
    assert all("ok" in o for o in out), out


# ---- 4. a child killed mid-activity ----------------------------------------------------------------

def test_child_sigkill_respawned_and_task_retried_at_once(server, tprefork, tmp_path):
    md = tmp_path / "markers"
    md.mkdir()
    tp = tprefork({"workers": {"count": 2, "max_concurrent_activities": 1, "pollers": 1},
                   "activities": [sleeper(md)]}, wait_ready=True)
    h = start_workflow(server, [
        activity_spec("Sleep", [8, {"fast_retry": True}], tp.task_queue, activity_id=f"k{i}",
                      start_to_close_s=120, max_attempts=0, initial_interval_s=1) for i in range(2)])
    wait_until(lambda: len(markers(md, "k*.1.start")) == 2, 30, "both activities running")
    victim_marker = markers(md, "k0.1.start")[0]
    command = marker_pid(victim_marker)
    child = ppid_of(command)
    assert child in worker_pids(tp.pid)
    since = tp.log_size()
    t_kill = time.time()
    os.kill(child, signal.SIGKILL)
    tp.wait_log(r"exited|killed by signal 9", since=since, timeout=10)
    tp.wait_log(r"spawned worker \d gen 1", since=since, timeout=10)
    tp.wait_ready(count=1, since=since, timeout=20)
    wait_until(lambda: markers(md, "k0.2.start"), 30, "the killed task's next attempt")
    retry_after = marker_time(markers(md, "k0.2.start")[0]) - t_kill
    out = workflow_result(server, h)
    print(f"\nFIGURES child SIGKILL: respawned, next attempt after {retry_after:.2f}s "
          f"(start_to_close 120 s), lost={sum('ok' not in o for o in out)}")
    assert re.search(r"failing task of worker \d .*: Sleep k0 attempt 1: WorkerCrashed", tp.log())
    assert retry_after < 10
    assert not alive(command), "the dead child's command was left running"
    assert sorted(o["ok"]["attempt"] for o in out) == [1, 2], out


# ---- 5. reload --------------------------------------------------------------------------------------

def test_sighup_while_busy_changes_count_without_interrupting(server, tprefork, tmp_path):
    md = tmp_path / "markers"
    md.mkdir()
    cfg = {"workers": {"count": 1, "max_concurrent_activities": 4, "pollers": 1},
           "activities": [sleeper(md)]}
    tp = tprefork(cfg, wait_ready=True)
    h = start_workflow(server, [activity_spec("Sleep", [4], tp.task_queue, activity_id=f"r{i}", max_attempts=1,
                                              start_to_close_s=60) for i in range(3)])
    wait_until(lambda: len(markers(md, "r*.1.start")) == 3, 30, "activities running")
    old = set(worker_pids(tp.pid))
    # The new configuration: two workers and a new activity type.
    new = dict(cfg)
    new["workers"] = dict(cfg["workers"], count=2)
    new["activities"] = [sleeper(md), exec_activity("Echo", "echo.py")]
    new["temporal"] = {"task_queue": tp.task_queue, "address": tp.config["temporal"]["address"]}
    tp.config_path.write_text(to_libconfig(deep_merge(tp.config, new)))
    since = tp.log_size()
    t0 = time.monotonic()
    tp.signal(signal.SIGHUP)
    peak = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        peak = max(peak, len(worker_pids(tp.pid)))
        if re.search(r"reload: generation 2 ready", tp.log()[since:]) and not (old & set(worker_pids(tp.pid))):
            break
        time.sleep(0.02)
    reload_s = time.monotonic() - t0
    out = workflow_result(server, h)
    assert out == [{"ok": {"attempt": 1, "slept": 4}}] * 3, f"activities interrupted by the reload: {out}"
    now = set(worker_pids(tp.pid))
    assert len(now) == 2 and not (now & old), (old, now)
    assert all("gen 2" in cmdline(p) for p in now)
    assert server.run_workflow([activity_spec("Echo", ["new"], tp.task_queue)]) == [{"ok": "new"}]
    print(f"\nFIGURES reload while busy: interrupted=0 peak_children={peak} (<= 2N = 4) "
          f"reload_time={reload_s:.2f}s")
    assert peak <= 4


def test_sighup_with_broken_config_changes_nothing(server, tprefork):
    tp = tprefork({"workers": {"count": 2}, "activities": [exec_activity("Echo", "echo.py")]}, wait_ready=True)
    before = set(worker_pids(tp.pid))
    text = tp.config_path.read_text()
    tp.config_path.write_text(text + "\nworkers = { count = ; };\n")
    lines = len((text + "\nworkers = { count = ; };\n").splitlines())
    since = tp.log_size()
    tp.signal(signal.SIGHUP)
    m = tp.wait_log(r"reload: (\S+):(\d+): (.*)", since=since, timeout=10)
    tp.wait_log(r"configuration invalid; still running generation 1 unchanged", since=since, timeout=10)
    assert m.group(1) == str(tp.config_path) and int(m.group(2)) == lines, m.group(0)
    assert set(worker_pids(tp.pid)) == before
    assert server.run_workflow([activity_spec("Echo", ["still"], tp.task_queue)]) == [{"ok": "still"}]


# ---- 6. scaling, signal storms, stop during reload --------------------------------------------------

def test_ttin_ttou(server, tprefork):
    tp = tprefork({"workers": {"count": 1}, "activities": [exec_activity("Echo", "echo.py")]}, wait_ready=True)
    since = tp.log_size()
    tp.signal(signal.SIGTTIN)
    tp.wait_ready(count=1, since=since, timeout=20)
    wait_until(lambda: len(worker_pids(tp.pid)) == 2, 10, "two workers")
    since = tp.log_size()
    tp.signal(signal.SIGTTOU)
    tp.wait_log(r"worker 1 gen 1 \(pid \d+\) exited", since=since, timeout=20)
    wait_until(lambda: len(worker_pids(tp.pid)) == 1, 10, "one worker")
    assert server.run_workflow([activity_spec("Echo", [1], tp.task_queue)]) == [{"ok": 1}]


def test_hundred_rapid_sighups(server, tprefork):
    tp = tprefork({"workers": {"count": 2}, "activities": [exec_activity("Echo", "echo.py")]}, wait_ready=True)
    peak = 0
    for _ in range(100):
        tp.signal(signal.SIGHUP)
        peak = max(peak, len(worker_pids(tp.pid)))
    # It settles: the master lives, two workers of the newest generation serve, no zombie is left.
    def settled():
        kids = [p for p in proc_table().values() if p.ppid == tp.pid]
        gens = {cmdline(p.pid).split("gen ")[-1] for p in kids if p.state != "Z"}
        return len(kids) == 2 and all(p.state != "Z" for p in kids) and len(gens) == 1
    wait_until(settled, 60, "two workers of one generation")
    assert tp.running()
    gen = int(re.findall(r"starting generation (\d+)", tp.log())[-1])
    assert server.run_workflow([activity_spec("Echo", ["after"], tp.task_queue)]) == [{"ok": "after"}]
    print(f"\nFIGURES 100 SIGHUPs: master alive, generations={gen}, peak children sampled={peak}")
    assert gen >= 2
    assert tp.stop(30) == 0


def test_sigterm_during_reload(server, tprefork):
    tp = tprefork({"workers": {"count": 2}, "activities": [exec_activity("Echo", "echo.py")]}, wait_ready=True)
    tp.signal(signal.SIGHUP)
    tp.signal(signal.SIGTERM)
    assert tp.wait_exit(20) == 0
    assert not [p for p in proc_table().values() if p.ppid == tp.pid], "a child or zombie was left"


# ---- supervision ------------------------------------------------------------------------------------

def test_crash_loop_is_throttled(server, tprefork):
    # A child that cannot start (unknown user to switch to) exits at once, again and again.
    tp = tprefork({"user": "tprefork-no-such-user", "workers": {"count": 1},
                   "activities": [exec_activity("Echo", "echo.py")]})
    tp.wait_log(r"crashed 4 times in a row; respawning in 800 ms", timeout=20)
    t0 = time.monotonic()
    n0 = len(re.findall(r"spawned worker 0", tp.log()))
    time.sleep(3)  # a window to count respawns in
    n = len(re.findall(r"spawned worker 0", tp.log())) - n0
    print(f"\nFIGURES crash loop: {n} respawns in {time.monotonic() - t0:.1f} s after 4 crashes")
    assert n <= 3, f"{n} respawns in 3 s: the crash loop is not throttled"
    assert tp.running()


def test_unresponsive_child_is_replaced(server, tprefork):
    tp = tprefork({"workers": {"count": 1, "child_timeout": 2}, "activities": [exec_activity("Echo", "echo.py")]},
                  wait_ready=True)
    (child,) = worker_pids(tp.pid)
    since = tp.log_size()
    os.kill(child, signal.SIGSTOP)
    tp.wait_log(rf"worker 0 \(pid {child}\) has not answered for \d+ ms; killing it", since=since, timeout=15)
    tp.wait_ready(count=1, since=since, timeout=20)
    assert child not in worker_pids(tp.pid)
    assert server.run_workflow([activity_spec("Echo", ["ok"], tp.task_queue)]) == [{"ok": "ok"}]


def test_children_ignore_term_int_hup_and_drain_when_master_dies(server, tprefork):
    tp = tprefork({"workers": {"count": 2}, "activities": [exec_activity("Echo", "echo.py")]}, wait_ready=True)
    kids = worker_pids(tp.pid)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        for k in kids:
            os.kill(k, sig)
    with pytest.raises(TimeoutError):
        wait_until(lambda: not all(alive(k) for k in kids), 1.0, "a child dying of TERM/INT/HUP")
    os.kill(tp.pid, signal.SIGKILL)
    tp.wait_exit(5)
    wait_until(lambda: not any(alive(k) for k in kids), 15, "children to drain after the master's death")
    assert re.search(r"lost the master|draining", tp.log())


# ---- process hygiene and titles ---------------------------------------------------------------------

def _fd_inodes(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            pass
    return out


def test_child_inherits_only_allowlisted_fds(server, tprefork):
    tp = tprefork({"workers": {"count": 1}, "activities": [exec_activity("Echo", "echo.py")]}, wait_ready=True)
    m = tp.wait_log(r"inherited fds: ([\d ]+)")
    assert sorted(int(x) for x in m.group(1).split()) == [0, 1, 2, 3]
    (child,) = worker_pids(tp.pid)
    master_fds = _fd_inodes(tp.pid)
    child_fds = _fd_inodes(child)
    # Sockets, pipes and files have an identity (inode or path); anon inodes all read alike.
    shared = {fd: t for fd, t in child_fds.items()
              if fd > 2 and not t.startswith("anon_inode:") and t in set(master_fds.values())}
    assert not shared, f"the child holds the master's objects: {shared}"
    pidfile = tp.config["pidfile"]
    assert pidfile not in child_fds.values()
    assert cmdline(tp.pid).startswith("tprefork: master")
    assert cmdline(child).startswith("tprefork: worker 0 gen 1")
    # The master's coarse timer slack (its timers fire together) is not the child's.
    slack = lambda pid: int(open(f"/proc/{pid}/timerslack_ns").read())
    assert slack(tp.pid) == 25_000_000
    assert slack(child) == 50_000


# ---- pid file and -s ----------------------------------------------------------------------------------

def test_pidfile_second_instance_stale_and_signals(server, tprefork, tmp_path):
    tp = tprefork({"workers": {"count": 1}, "activities": [exec_activity("Echo", "echo.py")]}, wait_ready=True)
    pidfile = Path(tp.config["pidfile"])
    assert pidfile.read_text() == f"{tp.pid}\n"
    second = subprocess.run([tprefork_bin(), "-c", str(tp.config_path)], capture_output=True, text=True,
                            timeout=20, env=clean_env())
    assert second.returncode == 1
    assert f"another tprefork is running (pid {tp.pid}" in second.stderr
    assert tp.running() and pidfile.read_text() == f"{tp.pid}\n"
    # -s reload / -s stop signal the running master.
    since = tp.log_size()
    r = subprocess.run([tprefork_bin(), "-c", str(tp.config_path), "-s", "reload"], timeout=20, env=clean_env())
    assert r.returncode == 0
    tp.wait_log(r"reload: configuration valid", since=since, timeout=10)
    r = subprocess.run([tprefork_bin(), "-c", str(tp.config_path), "-s", "stop"], timeout=20, env=clean_env())
    assert r.returncode == 0
    assert tp.wait_exit(20) == 0
    assert not pidfile.exists(), "the pid file outlived the master"
    r = subprocess.run([tprefork_bin(), "-p", str(pidfile), "-s", "stop"], capture_output=True, text=True,
                       timeout=20, env=clean_env())
    assert r.returncode == 3, r.stderr
    # A stale pid file (no master holds its lock) does not block a start.
    pidfile.write_text("999999\n")
    tp2 = tprefork({"workers": {"count": 1}, "pidfile": str(pidfile),
                    "activities": [exec_activity("Echo", "echo.py")]}, wait_ready=True)
    assert pidfile.read_text() == f"{tp2.pid}\n"


# ---- init script and systemd ---------------------------------------------------------------------------

def test_init_script(server, tprefork, tmp_path):
    cfg_path, cfg = tprefork.write_config({"workers": {"count": 1}, "log": {"level": "info",
                                          "file": str(tmp_path / "daemon.log")},
                                          "activities": [exec_activity("Echo", "echo.py")]},
                                          name="init.conf", address=server.address)
    pidfile = cfg["pidfile"]
    env = dict(clean_env(), DAEMON=tprefork_bin(), CONFIG=str(cfg_path), PIDFILE=pidfile, STOP_TIMEOUT="30")
    script = str(REPO / "etc" / "tprefork.init")

    def run(action: str) -> int:
        return subprocess.run(["sh", script, action], env=env, capture_output=True, text=True, timeout=60).returncode

    assert run("status") == 3
    assert run("start") == 0
    pid = int(Path(pidfile).read_text())
    try:
        assert run("status") == 0
        assert run("start") == 0, "start when running is a success (LSB)"
        wait_until(lambda: "master ready" in Path(tmp_path / "daemon.log").read_text(), 20, "master ready")
        assert run("reload") == 0
        wait_until(lambda: "reload: configuration valid" in Path(tmp_path / "daemon.log").read_text(), 10,
                   "reload logged")
        assert server.run_workflow([activity_spec("Echo", ["d"], cfg["temporal"]["task_queue"])]) == [{"ok": "d"}]
        assert run("stop") == 0
        assert not alive(pid), "stop returned before the master exited"
        assert run("status") == 3
        assert run("bogus") == 2
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_systemd_notifications(server, tprefork, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.2)
    tp = tprefork({"workers": {"count": 1}, "activities": [exec_activity("Echo", "echo.py")]},
                  env={"NOTIFY_SOCKET": sock_path}, wait_ready=True)
    got: list[str] = []

    def drain_until(word: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got.extend(sock.recv(4096).decode().splitlines())
            except socket.timeout:
                pass
            if word in got:
                return
        raise AssertionError(f"no {word} datagram; got {got}")

    drain_until("READY=1")
    tp.signal(signal.SIGHUP)
    drain_until("RELOADING=1")
    got.remove("READY=1")
    drain_until("READY=1")
    tp.signal(signal.SIGTERM)
    drain_until("STOPPING=1")
    assert tp.wait_exit(20) == 0
    sock.close()
    seq = [g for g in got if g in ("READY=1", "RELOADING=1", "STOPPING=1")]
    assert seq == ["RELOADING=1", "READY=1", "STOPPING=1"], seq


# ---- fast stop, log reopening, privileges, restart-only settings ----------------------------------

@pytest.mark.parametrize("how", ["quit", "second_term"])
def test_fast_stop_cancels_and_reports_worker_shutdown(server, tprefork, tmp_path, how):
    md = tmp_path / "markers"
    md.mkdir()
    cfg = {"workers": {"count": 1, "shutdown_timeout": 60, "cancel_grace": 3},
           "activities": [sleeper(md, kill_grace=1)]}
    tp = tprefork(cfg, wait_ready=True)
    h = start_workflow(server, [activity_spec("Sleep", [60, {"fast_retry": True}], tp.task_queue,
                                              activity_id=f"f{i}", start_to_close_s=120, max_attempts=0,
                                              initial_interval_s=1) for i in range(2)])
    wait_until(lambda: len(markers(md, "f*.1.start")) == 2, 30, "activities running")
    t0 = time.monotonic()
    if how == "quit":
        tp.signal(signal.SIGQUIT)
    else:
        tp.signal(signal.SIGTERM)
        tp.wait_log(r"graceful stop", timeout=5)
        tp.signal(signal.SIGTERM)
    rc = tp.wait_exit(20)
    stop_s = time.monotonic() - t0
    print(f"\nFIGURES fast stop ({how}): exit={rc} after {stop_s:.2f}s (cancel_grace 3 s, shutdown_timeout 60 s)")
    assert rc == 0
    assert stop_s < 3.5, f"a fast stop took {stop_s:.2f} s"
    # The worker itself reported each cancelled activity as a retryable WorkerShutdown failure.
    assert len(re.findall(r"Sleep id=f\d attempt=1: failed: WorkerShutdown", tp.log())) == 2, tp.log()
    cfg["temporal"] = {"task_queue": tp.task_queue}
    tprefork(cfg, wait_ready=True)
    assert workflow_result(server, h) == [{"ok": {"attempt": 2, "slept": 60}}] * 2


def test_usr2_reopens_log_files(server, tprefork, tmp_path):
    log = tmp_path / "tp.log"
    tp = tprefork({"workers": {"count": 2}, "log": {"level": "info", "file": str(log)},
                   "activities": [exec_activity("Echo", "echo.py")]})
    wait_until(lambda: log.exists() and "master ready" in log.read_text(), 20, "master ready in the log file")
    rotated = tmp_path / "tp.log.1"
    log.rename(rotated)
    tp.signal(signal.SIGUSR2)
    wait_until(log.exists, 10, "a new log file")
    tp.signal(signal.SIGTERM)
    assert tp.wait_exit(20) == 0
    text = log.read_text()
    assert "master: master exiting" in text
    assert re.search(r"worker [01] gen 1: drained", text), "the children did not reopen their log"
    assert "master exiting" not in rotated.read_text()


def test_children_drop_privileges(server, tprefork):
    import pwd
    nobody = pwd.getpwnam("nobody")
    tp = tprefork({"user": "nobody", "workers": {"count": 1}, "activities": [exec_activity("True", "/bin/true")]},
                  wait_ready=True)
    (child,) = worker_pids(tp.pid)
    status = Path(f"/proc/{child}/status").read_text()
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M).groups()
    gids = re.search(r"^Gid:\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M).groups()
    assert uids == (str(nobody.pw_uid),) * 3, uids
    assert gids == (str(nobody.pw_gid),) * 3, gids
    assert os.stat(f"/proc/{tp.pid}").st_uid == 0, "the master keeps its user"
    assert server.run_workflow([activity_spec("True", [], tp.task_queue)]) == [{"ok": None}]


def test_reload_keeps_restart_only_settings(server, tprefork, tmp_path):
    tp = tprefork({"workers": {"count": 1}, "activities": [exec_activity("Echo", "echo.py")]}, wait_ready=True)
    old_pidfile = tp.config["pidfile"]
    tp.config_path.write_text(to_libconfig(deep_merge(tp.config, {"pidfile": str(tmp_path / "other.pid")})))
    since = tp.log_size()
    tp.signal(signal.SIGHUP)
    tp.wait_log(rf"reload: 'pidfile' changes only with a restart; keeping \"{re.escape(old_pidfile)}\"",
                since=since, timeout=10)
    tp.wait_log(r"generation 2 ready", since=since, timeout=20)
    assert Path(old_pidfile).read_text() == f"{tp.pid}\n"
    assert not (tmp_path / "other.pid").exists()
    tp.signal(signal.SIGTERM)
    assert tp.wait_exit(20) == 0
    assert not Path(old_pidfile).exists()


# ---- status endpoint ------------------------------------------------------------------------------

def http_get(port: int, path: str) -> tuple[str, str]:
    """GET path from the status endpoint on 127.0.0.1:port: (Content-Type, body)."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.headers.get("Content-Type"), r.read().decode()


def test_status_endpoint(server, tprefork, tmp_path):
    import json
    import urllib.error
    from helpers import free_port
    md = tmp_path / "markers"
    md.mkdir()
    port = free_port()
    tp = tprefork({"status": {"listen": f"127.0.0.1:{port}"}, "workers": {"count": 2},
                   "activities": [sleeper(md), exec_activity("Echo", "echo.py")]}, wait_ready=True)
    assert server.run_workflow([activity_spec("Echo", [i], tp.task_queue) for i in range(3)]) == \
        [{"ok": i} for i in range(3)]
    h = start_workflow(server, [activity_spec("Sleep", [3], tp.task_queue, activity_id="busy", max_attempts=1)])
    wait_until(lambda: markers(md, "busy.1.start"), 30, "a running activity")

    def get(path):
        return http_get(port, path)

    # The master learns that the Echo tasks ended from the children's TaskDone, which follows each
    # report's confirmation (read with the next larger answer, 100 ms at most) and waits for the
    # child's next message (50 ms at most), read within 75 ms: wait for the table to settle.
    def settled():
        ctype, body = get("/status")
        st = json.loads(body)
        types = [t["activity_type"] for c in st["children"] for t in c["inflight"]]
        return (ctype, st) if types == ["Sleep"] else None
    ctype, st = wait_until(settled, 5, "the Echo tasks' TaskDone")
    assert ctype == "application/json"
    assert st["state"] == "running" and st["generation"] == 1 and st["workers"] == 2
    assert st["journal"] == {"paused": False, "inflight": 1, "outbox": 0}, st["journal"]
    assert {c["pid"] for c in st["children"]} == set(worker_pids(tp.pid))
    inflight = [t for c in st["children"] for t in c["inflight"]]
    assert [(t["activity_type"], t["activity_id"], t["attempt"]) for t in inflight] == [("Sleep", "busy", 1)]

    def completed():
        _, text = get("/metrics")
        m = re.search(r'^tprefork_activities_total\{outcome="completed"\} (\d+)$', text, re.M)
        return text if m and int(m.group(1)) >= 3 else None
    text = wait_until(completed, 10, "the children's counters (sent every second)")
    assert re.search(r'^temporal_worker_task_slots_used\{worker_type="ActivityWorker"\} 1$', text, re.M), text
    assert re.search(r'^temporal_worker_task_slots_available\{worker_type="ActivityWorker"\} 15$', text, re.M)
    assert re.search(r"^tprefork_workers 2$", text, re.M)
    assert re.search(r"^tprefork_journal_paused 0$", text, re.M)
    with pytest.raises(urllib.error.HTTPError) as e:
        get("/nope")
    assert e.value.code == 404
    assert workflow_result(server, h) == [{"ok": {"attempt": 1, "slept": 3}}]


def test_poll_replaced_while_its_task_runs(server, tprefork, tmp_path):
    """A poll that brought a task is replaced with the child's next write to the server, or within
    5 ms: with a long task and nothing else to write, /status shows the child back at its two polls
    while the task still runs (and at one poll, never none, if the replacement waited for the task's
    report)."""
    import json
    from helpers import free_port
    md = tmp_path / "markers"
    md.mkdir()
    port = free_port()
    tp = tprefork({"status": {"listen": f"127.0.0.1:{port}"},
                   "workers": {"count": 1, "pollers": 2, "child_timeout": 4},  # stats every second
                   "activities": [sleeper(md)]}, wait_ready=True)

    def child():
        return json.loads(http_get(port, "/status")[1])["children"][0]

    h = start_workflow(server, [activity_spec("Sleep", [8], tp.task_queue, activity_id="long", max_attempts=1)])
    wait_until(lambda: markers(md, "long.1.start"), 30, "the running activity")
    time.sleep(2.5)  # the child's stats (every second) are younger than the task now
    c = child()
    assert [t["activity_id"] for t in c["inflight"]] == ["long"]
    assert c["polls"] == 2, c
    assert not markers(md, "long.1.done"), "the task ended before the polls were seen"
    assert workflow_result(server, h) == [{"ok": {"attempt": 1, "slept": 8}}]
