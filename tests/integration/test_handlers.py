"""Handlers: the exec protocol and the C plugin API through a real dev server and real Python workflows:
cancellation (and its delivery latency), resuming from heartbeat details, heartbeat throttling, the
failures of a misbehaving command, the command's environment, payload encodings, plugin checks at
-t and at reload, and the example plugins and scripts."""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import statistics
import time
import uuid
from pathlib import Path

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import PauseActivityRequest, UnpauseActivityRequest
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from handler_workflows import HANDLERS_WF_TASK_QUEUE, CancelOne, WithBytes
from helpers import (REPO, activity_spec, deep_merge, exec_activity, proc_table, reap_orphans,
                     to_libconfig, tprefork_bin, wait_until)
from workflows import WORKFLOW_TASK_QUEUE

EXAMPLES = REPO / "examples" / "exec"
HB_TIMEOUT = 2.0                  # heartbeat timeout of the cancellation tests
HB_INTERVAL = 0.8 * HB_TIMEOUT    # the throttle interval it gives


def build_dir() -> Path:
    """The build tree of the tprefork under test (TPREFORK_BIN is BUILD/src/tprefork)."""
    return Path(tprefork_bin()).resolve().parents[1]


def plugin(name: str) -> str:
    """A test plugin (tests/plugins) or, for "example", the example plugin, as built."""
    if name == "example":
        return str(build_dir() / "examples" / "plugins" / "example.so")
    return str(build_dir() / "tests" / "plugins" / f"{name}.so")


def plugin_activity(type: str, plugin_name: str, function: str) -> dict:
    return {"type": type, "plugin": plugin_name, "function": function}


def alive(pid: int) -> bool:
    """Is pid a live process (not a zombie)? Orphans reparented to the harness are reaped first."""
    reap_orphans()
    p = proc_table().get(pid)
    return p is not None and p.state != "Z"


def assert_gone(*pids: int, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = [p for p in pids if alive(p)]
    assert not left, f"processes left behind: {left}"


async def wait_file(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:g} s")
        await asyncio.sleep(0.01)
    return path.read_text()


async def cancel_requested_at(handle) -> float:
    """Server time (Unix s) of the ActivityTaskCancelRequested event of a CancelOne run."""
    async for e in handle.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED:
            return e.event_time.seconds + e.event_time.nanos / 1e9
    raise AssertionError("no ActivityTaskCancelRequested event in the history")


@pytest.fixture(scope="module")
def handlers_wf(server):
    """A Python worker for CancelOne on its own workflow task queue, next to the harness's."""
    state: dict = {}

    async def start() -> None:
        state["worker"] = Worker(server.client, task_queue=HANDLERS_WF_TASK_QUEUE, workflows=[CancelOne, WithBytes],
                                 workflow_runner=UnsandboxedWorkflowRunner())
        state["task"] = asyncio.create_task(state["worker"].run())

    async def stop() -> None:
        await state["worker"].shutdown()
        try:
            await state["task"]
        except Exception:
            pass

    server.run(start(), 30)
    yield server
    server.run(stop(), 30)


def summary(name: str, values: list[float]) -> str:
    return (f"{name}: n={len(values)} median={statistics.median(values) * 1000:.0f} ms "
            f"max={max(values) * 1000:.0f} ms min={min(values) * 1000:.0f} ms")


# ---- cancellation --------------------------------------------------------------------------------------


def _cancel_many(server, q: str, spec_of, started, cancelled_at, n: int) -> list[tuple[dict, float]]:
    """Run n CancelOne workflows at once; each is cancelled once its activity runs (after a delay that
    moves the request across the throttle window). Returns (outcome, latency) per run: latency is
    from the server's ActivityTaskCancelRequested event to the moment the activity saw the
    cancellation (cancelled_at(i))."""
    client = server.client

    async def one(i: int) -> tuple[dict, float]:
        h = await client.start_workflow("CancelOne", spec_of(i), id=f"cancel-{q}-{i}",
                                        task_queue=HANDLERS_WF_TASK_QUEUE)
        await started(i)
        await asyncio.sleep(HB_INTERVAL * i / n)
        await h.signal("cancel")
        out = await asyncio.wait_for(h.result(), 60)
        t_req = await cancel_requested_at(h)
        return out, await cancelled_at(i) - t_req

    async def all_() -> list:
        return list(await asyncio.gather(*(one(i) for i in range(n))))

    return server.run(all_(), 240)


@pytest.mark.slow
def test_exec_cancel_delivers_sigterm_within_a_heartbeat_interval(handlers_wf, tprefork, tmp_path):
    server, n = handlers_wf, 20
    tp = tprefork({"workers": {"max_concurrent_activities": n + 4, "pollers": 4},
                   "activities": [exec_activity("HbUntilTerm", "hb_until_term.py",
                                                env=[f"MARKER_DIR={tmp_path}"])]}, wait_ready=True)

    def spec(i: int) -> dict:
        return {"type": "HbUntilTerm", "task_queue": tp.task_queue, "heartbeat_timeout_s": HB_TIMEOUT,
                "activity_id": f"x{i}"}

    async def started(i: int) -> None:
        await wait_file(tmp_path / f"x{i}.1.start")

    async def term_at(i: int) -> float:
        return float((await wait_file(tmp_path / f"x{i}.1.term", 5)).split()[0])

    results = _cancel_many(server, tp.task_queue, spec, started, term_at, n)
    latencies = []
    for i, (out, latency) in enumerate(results):
        assert "error" in out and out["error"]["cause_type"] == "Cancelled", out
        latencies.append(latency)
        pid = int((tmp_path / f"x{i}.1.start").read_text())
        assert_gone(pid)
    print(summary("exec cancel -> SIGTERM", latencies))
    # The request reaches the worker with the response to the next heartbeat, which goes at the
    # latest one throttle interval after the previous one.
    assert max(latencies) < HB_INTERVAL + 0.4, summary("exec cancel -> SIGTERM", latencies)
    assert min(latencies) >= 0


@pytest.mark.slow
def test_plugin_cancel_sets_the_flag_within_a_heartbeat_interval(handlers_wf, tprefork, tmp_path):
    server, n = handlers_wf, 20
    tp = tprefork({"workers": {"max_concurrent_activities": n + 4, "pollers": 4},
                   "plugins": [plugin("testplug")],
                   "activities": [plugin_activity("WaitCancel", "testplug", "wait_cancel")]}, wait_ready=True)

    def spec(i: int) -> dict:
        return {"type": "WaitCancel", "args": [str(tmp_path / f"p{i}.cancel"), 100, 60000],
                "task_queue": tp.task_queue, "heartbeat_timeout_s": HB_TIMEOUT, "activity_id": f"p{i}"}

    async def started(i: int) -> None:
        await asyncio.to_thread(tp.wait_log, rf"id=p{i} attempt=1: heartbeat 1 sent", 30)

    async def flag_at(i: int) -> float:
        return float((await wait_file(tmp_path / f"p{i}.cancel", 5)).split()[0])

    results = _cancel_many(server, tp.task_queue, spec, started, flag_at, n)
    latencies = [latency for _, latency in results]
    for out, _ in results:
        assert "error" in out and out["error"]["cause_type"] == "Cancelled", out
    print(summary("plugin cancel -> flag seen", latencies))
    assert max(latencies) < HB_INTERVAL + 0.4, summary("plugin cancel -> flag seen", latencies)


def test_cancel_of_a_command_ignoring_sigterm(handlers_wf, tprefork, tmp_path):
    server = handlers_wf
    grace = 2
    tp = tprefork({"activities": [exec_activity("Stubborn", "hb_until_term.py", kill_grace=grace,
                                                env=[f"MARKER_DIR={tmp_path}", "IGNORE_TERM=1"])]},
                  wait_ready=True)
    spec = {"type": "Stubborn", "task_queue": tp.task_queue, "heartbeat_timeout_s": HB_TIMEOUT,
            "activity_id": "stubborn"}

    async def go():
        h = await server.client.start_workflow("CancelOne", spec, id=f"stubborn-{tp.task_queue}",
                                               task_queue=HANDLERS_WF_TASK_QUEUE)
        await wait_file(tmp_path / "stubborn.1.start")
        await h.signal("cancel")
        out = await h.result()
        return out, time.time()

    out, t_result = server.run(go(), 60)
    assert out["error"]["cause_type"] == "Cancelled", out
    t_term = float((tmp_path / "stubborn.1.term").read_text().split()[0])
    waited = t_result - t_term
    # SIGTERM was seen and ignored; SIGKILL followed kill_grace later, then the cancellation report.
    assert grace - 0.1 <= waited < grace + 2.0, f"{waited:.2f} s from SIGTERM to the cancellation report"
    assert_gone(int((tmp_path / "stubborn.1.start").read_text()))
    assert re.search(r"Stubborn id=stubborn attempt=1: cancelled as the server requested", tp.log())


# ---- resuming from heartbeat details ------------------------------------------------------------------


def test_exec_killed_midway_resumes_from_its_last_details(server, tprefork, tmp_path):
    tp = tprefork({"activities": [exec_activity("Resumable", "resumable.py", env=[f"MARKER_DIR={tmp_path}"])]},
                  wait_ready=True)
    spec = activity_spec("Resumable", [12, 0.2], tp.task_queue, heartbeat_timeout_s=5, max_attempts=3,
                         activity_id="res-1")

    async def go():
        h = await server.client.start_workflow("RunActivities", [spec], id=f"res-{tp.task_queue}",
                                               task_queue=WORKFLOW_TASK_QUEUE)
        done = tmp_path / "res-1.1.done"
        while not (done.exists() and int(done.read_text()) >= 4):
            await asyncio.sleep(0.01)
        pid = int((tmp_path / "res-1.1.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed_at = int(done.read_text())
        return await h.result(), killed_at, pid

    out, killed_at, pid = server.run(go(), 90)
    assert "ok" in out[0], out
    r = out[0]["ok"]
    assert r["attempt"] == 2, r
    # Every record written before the kill reached the worker and went with the failure report.
    assert r["resumed_from"] in (killed_at, killed_at + 1), (r, killed_at)
    assert r["resumed_from"] >= 4
    assert re.search(r"Resumable id=res-1 attempt=1: failed: ExecSignaled: command killed by signal 9",
                     tp.log())
    assert_gone(pid)


@pytest.mark.slow
def test_plugin_worker_killed_midway_resumes_from_its_last_details(server, tprefork):
    tp = tprefork({"plugins": [plugin("example")],
                   "activities": [plugin_activity("PluginProgress", "example", "progress")]}, wait_ready=True)
    spec = activity_spec("PluginProgress", [40, 100], tp.task_queue, heartbeat_timeout_s=2, max_attempts=3,
                         activity_id="pres-1")

    async def go():
        h = await server.client.start_workflow("RunActivities", [spec], id=f"pres-{tp.task_queue}",
                                               task_queue=WORKFLOW_TASK_QUEUE)
        await asyncio.to_thread(tp.wait_log, r"PluginProgress id=pres-1 attempt=1: heartbeat 2 sent", 30)
        children = [p for p in tp.descendants() if p.ppid == tp.pid]
        assert len(children) == 1, children
        os.kill(children[0].pid, signal.SIGKILL)  # the worker process, with the plugin thread in it
        return await h.result(), children[0].pid

    out, child = server.run(go(), 90)
    assert "ok" in out[0], out
    r = out[0]["ok"]
    assert r["attempt"] == 2, r
    assert 1 <= r["resumed_from"] < 40, r
    assert not alive(child)


def test_pause_stops_the_command_and_unpause_resumes_it(server, tprefork, tmp_path):
    tp = tprefork({"activities": [exec_activity("Resumable", "resumable.py", env=[f"MARKER_DIR={tmp_path}"])]},
                  wait_ready=True)
    wf_id = f"pause-{tp.task_queue}"
    spec = activity_spec("Resumable", [10, 0.2], tp.task_queue, heartbeat_timeout_s=1, max_attempts=5,
                         activity_id="pause-1")
    svc = server.client.workflow_service

    async def go():
        h = await server.client.start_workflow("RunActivities", [spec], id=wf_id, task_queue=WORKFLOW_TASK_QUEUE)
        done = tmp_path / "pause-1.1.done"
        while not (done.exists() and int(done.read_text()) >= 3):
            await asyncio.sleep(0.01)
        await svc.pause_activity(PauseActivityRequest(
            namespace="default", execution=WorkflowExecution(workflow_id=wf_id), id="pause-1",
            identity="test", reason="testing pause"))
        await asyncio.to_thread(tp.wait_log, r"pause-1 attempt=1: failed: ActivityPause", 10)
        pid = int((tmp_path / "pause-1.1.pid").read_text())
        await svc.unpause_activity(UnpauseActivityRequest(
            namespace="default", execution=WorkflowExecution(workflow_id=wf_id), id="pause-1",
            identity="test"))
        return await h.result(), pid

    out, pid = server.run(go(), 90)
    log = tp.log()
    assert "pause-1 attempt=1: the server requested cancellation (activity paused)" in log
    assert "ok" in out[0], out
    assert out[0]["ok"]["attempt"] >= 2 and out[0]["ok"]["resumed_from"] >= 3, out
    assert_gone(pid)


# ---- timeouts ----------------------------------------------------------------------------------------------


def test_not_found_on_heartbeat_stops_the_command_and_reports_nothing(server, tprefork, tmp_path):
    tp = tprefork({"activities": [exec_activity("HbUntilTerm", "hb_until_term.py",
                                                env=[f"MARKER_DIR={tmp_path}"])]}, wait_ready=True)
    t0 = time.time()
    out = server.run_workflow([activity_spec("HbUntilTerm", [], tp.task_queue, start_to_close_s=2,
                                             heartbeat_timeout_s=1, max_attempts=1, activity_id="nf-1")])
    assert out[0]["error"]["cause_type"] == "Timeout:START_TO_CLOSE", out
    tp.wait_log(r"HbUntilTerm id=nf-1 attempt=1: stopped \(task no longer known to the server\); not reported")
    term = float((tmp_path / "nf-1.1.term").read_text().split()[0])
    # start-to-close (2 s), then at most one throttle interval (0.8 s) to the next heartbeat
    assert term - t0 < 2 + 0.8 + 1.5, f"SIGTERM {term - t0:.2f} s after the start"
    assert "nf-1 attempt=1: failed" not in tp.log() and "nf-1 attempt=1: completed" not in tp.log()
    assert_gone(int((tmp_path / "nf-1.1.start").read_text()))


@pytest.mark.slow
def test_local_deadline_stops_a_silent_command_and_reports_nothing(server, tprefork, tmp_path):
    tp = tprefork({"activities": [exec_activity("Sleeper", "sleeper.py", env=[f"MARKER_DIR={tmp_path}"])]},
                  wait_ready=True)
    t0 = time.monotonic()
    out = server.run_workflow([activity_spec("Sleeper", [60], tp.task_queue, start_to_close_s=2,
                                             max_attempts=1, activity_id="dl-1")])
    assert out[0]["error"]["cause_type"] == "Timeout:START_TO_CLOSE", out
    tp.wait_log(r"Sleeper id=dl-1 attempt=1: stopped \(local deadline passed\); not reported", timeout=15)
    elapsed = time.monotonic() - t0
    assert 6.5 < elapsed < 10, f"stopped {elapsed:.1f} s after the start (start-to-close 2 s + 5 s)"
    pid = int((tmp_path / "dl-1.1.start").read_text().split()[1])
    assert_gone(pid)


# ---- heartbeat throttling ---------------------------------------------------------------------------------


def _hb_counts(tp, type_: str, activity_id: str) -> tuple[int, int]:
    m = tp.wait_log(rf"{type_} id={activity_id} attempt=1: (\d+) heartbeat record\(s\), (\d+) heartbeat RPC\(s\)")
    return int(m.group(1)), int(m.group(2))


@pytest.mark.slow
def test_heartbeat_rpcs_throttled_at_10000_records_per_second(server, tprefork):
    seconds = 5
    tp = tprefork({"plugins": [plugin("testplug")],
                   "activities": [exec_activity("Storm", "hb_storm.py"),
                                  plugin_activity("PluginStorm", "testplug", "hb_storm")]}, wait_ready=True)
    out = server.run_workflow([
        activity_spec("Storm", [10000, seconds], tp.task_queue, heartbeat_timeout_s=HB_TIMEOUT,
                      activity_id="storm-exec"),
        activity_spec("PluginStorm", [10000 * seconds, seconds * 1000], tp.task_queue,
                      heartbeat_timeout_s=HB_TIMEOUT, activity_id="storm-plugin"),
    ])
    assert "ok" in out[0] and out[0]["ok"] >= 9000 * seconds, out
    assert out[1] == {"ok": {"records": 10000 * seconds}}, out
    # first at once, then at most one per throttle interval (the last window may still end with one)
    bound = 1 + math.ceil(seconds / HB_INTERVAL)
    records, rpcs = _hb_counts(tp, "Storm", "storm-exec")
    assert records == out[0]["ok"], (records, out)
    print(f"exec: {records} heartbeat records in {seconds} s -> {rpcs} RecordActivityTaskHeartbeat RPCs")
    assert 2 <= rpcs <= bound, (rpcs, bound)
    precords, prpcs = _hb_counts(tp, "PluginStorm", "storm-plugin")
    print(f"plugin: {10000 * seconds} heartbeat calls ({precords} reached the loop) -> {prpcs} RPCs")
    assert 2 <= prpcs <= bound, (prpcs, bound)


# ---- a misbehaving command ---------------------------------------------------------------------------------


def test_output_over_the_cap_fails_at_once_and_kills_the_command(server, tprefork, tmp_path):
    tp = tprefork({"activities": [exec_activity("Big", "big_output.py", stdout_cap=1000, kill_grace=2,
                                                env=[f"MARKER_DIR={tmp_path}"])]}, wait_ready=True)
    t0 = time.monotonic()
    out = server.run_workflow([activity_spec("Big", [1_000_000], tp.task_queue, max_attempts=0,
                                             activity_id="big-1")])
    elapsed = time.monotonic() - t0
    err = out[0]["error"]
    assert err["cause_type"] == "OutputTooLarge" and err["non_retryable"] is True, err
    assert "more than 1000 bytes" in err["message"], err
    assert elapsed < 5, f"{elapsed:.1f} s"
    assert_gone(int((tmp_path / "big-1.pid").read_text()))


@pytest.mark.parametrize("exit_code", [1, 0])
def test_grandchild_holding_the_pipes_is_killed_after_the_grace(server, tprefork, tmp_path, exit_code):
    grace = 2
    tp = tprefork({"activities": [exec_activity("Leaver", "grandchild.sh", kill_grace=grace,
                                                env=[f"MARKER_DIR={tmp_path}", f"EXIT={exit_code}"])]},
                  wait_ready=True)
    t0 = time.monotonic()
    out = server.run_workflow([activity_spec("Leaver", [], tp.task_queue, max_attempts=1,
                                             activity_id="leaver-1")])
    elapsed = time.monotonic() - t0
    if exit_code:
        err = out[0]["error"]
        assert err["cause_type"] == "ExecFailed", err
        assert "status 1" in err["message"] and "grandchild: leaving" in err["message"], err
    else:
        assert out[0] == {"ok": None}, out
    assert grace - 0.2 < elapsed < grace + 3, f"{elapsed:.1f} s"
    leader, grandchild = (int(x) for x in (tmp_path / "leaver-1.pids").read_text().split())
    assert_gone(leader, grandchild)


def test_command_killed_by_a_signal_fails_retryably_naming_it(server, tprefork, tmp_path):
    tp = tprefork({"activities": [exec_activity("Segv", "self_signal.py", env=[f"MARKER_DIR={tmp_path}"])]},
                  wait_ready=True)
    out = server.run_workflow([activity_spec("Segv", [], tp.task_queue, max_attempts=2, initial_interval_s=0.5,
                                             activity_id="segv-1")])
    err = out[0]["error"]
    assert err["cause_type"] == "ExecSignaled", err
    assert "signal 11 (Segmentation fault)" in err["message"], err
    assert err["non_retryable"] is False
    assert err["retry_state"] == "MAXIMUM_ATTEMPTS_REACHED", err
    assert_gone(*(int((tmp_path / f"segv-1.{a}.pid").read_text()) for a in (1, 2)))


def test_spawn_failure_names_the_step(server, tprefork, tmp_path):
    missing = tmp_path / "no-such-dir"
    tp = tprefork({"activities": [exec_activity("Cwd", "echo.py", cwd=str(missing))]}, wait_ready=True)
    out = server.run_workflow([activity_spec("Cwd", [1], tp.task_queue, max_attempts=1)])
    err = out[0]["error"]
    assert err["cause_type"] == "ExecSpawnFailed" and err["non_retryable"] is False, err
    assert err["message"].endswith(": chdir: No such file or directory"), err


def test_stderr_is_logged_capped_and_rate_limited(server, tprefork):
    tp = tprefork({"activities": [exec_activity("Flood", "stderr_flood.py")]}, wait_ready=True)
    out = server.run_workflow([activity_spec("Flood", [1000], tp.task_queue, activity_id="flood-1")])
    assert out == [{"ok": 1001}], out
    log = tp.log()
    logged = [int(k) for k in re.findall(r"Flood id=flood-1 attempt=1: flood line (\d+)$", log, re.M)]
    assert logged == list(range(1, 21)), logged  # the burst
    assert "Flood id=flood-1 attempt=1: flood after pause" in log  # the rate refilled
    assert re.search(r"flood-1 attempt=1: 980 line\(s\) of output not logged \(rate limit: 20 lines, "
                     r"then 5 per second\)", log)


# ---- what a command sees ---------------------------------------------------------------------------------------

ALLOWLIST = {"PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "LC_MESSAGES", "TZ",
             "TMPDIR", "USER", "LOGNAME", "SHELL"}
TEMPORAL_VARS = {"TEMPORAL_ACTIVITY_TYPE", "TEMPORAL_ACTIVITY_ID", "TEMPORAL_WORKFLOW_ID", "TEMPORAL_RUN_ID",
                 "TEMPORAL_WORKFLOW_TYPE", "TEMPORAL_ATTEMPT", "TEMPORAL_TASK_QUEUE", "TEMPORAL_NAMESPACE",
                 "TEMPORAL_DEADLINE", "TEMPORAL_HEARTBEAT_TIMEOUT", "TEMPORAL_HEARTBEAT_DETAILS"}


def test_command_sees_only_fds_0_to_3_and_the_allowlisted_environment(server, tprefork, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    tp = tprefork({"activities": [exec_activity("Env", "env_limits.py", env=["EXTRA_SETTING=1"], cwd=str(workdir),
                                                rlimit_nofile=64, rlimit_cpu=100)]},
                  env={"MY_SECRET": "s3cret", "TZ": "UTC", "PYTHONPATH": "/nowhere"}, wait_ready=True)
    out = server.run_workflow([activity_spec("Env", [], tp.task_queue, heartbeat_timeout_s=7, activity_id="env-1")])
    seen = out[0]["ok"]
    env = seen["env"]
    extra = set(env) - ALLOWLIST - TEMPORAL_VARS - {"EXTRA_SETTING"}
    assert not extra, f"variables outside the allowlist: {sorted(extra)}"
    assert "MY_SECRET" not in env and "PYTHONPATH" not in env
    assert env["TZ"] == "UTC" and env["EXTRA_SETTING"] == "1"
    assert env["TEMPORAL_HEARTBEAT_TIMEOUT"] == "7.000"
    assert float(env["TEMPORAL_DEADLINE"]) > time.time()
    assert "TEMPORAL_HEARTBEAT_DETAILS" not in env, "no details on a first attempt"
    assert seen["fds"] == [0, 1, 2, 3], seen["fds"]
    assert all(seen["fd_targets"][str(fd)].startswith("pipe:") for fd in (0, 1, 2, 3)), seen["fd_targets"]
    assert seen["cwd"] == str(workdir)
    assert seen["nofile"] == [64, 64] and seen["cpu"] == [100, 105]
    assert seen["pgid_is_pid"]
    assert int(seen["sigblk"], 16) == 0, f"blocked signals inherited: {seen['sigblk']}"


def test_payload_encodings(handlers_wf, tprefork):
    server = handlers_wf
    tp = tprefork({"plugins": [plugin("testplug")],
                   "activities": [exec_activity("Echo", "echo.py"),
                                  plugin_activity("Payloads", "testplug", "payloads")]}, wait_ready=True)
    q = tp.task_queue

    async def with_bytes(type_: str, args: list) -> dict:
        return await server.client.execute_workflow(
            "WithBytes", {"type": type_, "args": args, "task_queue": q}, id=f"bytes-{uuid.uuid4()}",
            task_queue=HANDLERS_WF_TASK_QUEUE)

    async def go() -> list:
        return [await with_bytes("Echo", ["text", {"k": [1, None]}, None]),
                await with_bytes("Echo", [{"bytes_hex": "0072617720627974657300"}]),
                await with_bytes("Payloads", [{"bytes_hex": "726177"}, "s", None])]

    out = server.run(go(), 60)
    assert out[0] == {"ok": ["text", {"k": [1, None]}, None]}, "json/plain verbatim, binary/null as null"
    err = out[1]["error"]
    assert err["cause_type"] == "UnsupportedEncoding" and err["non_retryable"] is True, err
    assert 'encoding "binary/plain"' in err["message"], err
    assert out[2] == {"ok": [{"encoding": "binary/plain", "len": 3, "text": "raw"},
                             {"encoding": "json/plain", "len": 3, "text": '"s"'},
                             {"encoding": "binary/null", "len": 0, "text": ""}, True]}, out[2]


# ---- plugins: checks ---------------------------------------------------------------------------------------------


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    return lines[0]


@pytest.mark.parametrize("name,needle", [
    ("bad_abi", "refused: built for plugin ABI version 999; this tprefork supports version 1"),
    ("bad_signature", "refused: build signature \"tprefork-activity/1 ptr=4"),
    ("no_symbol", "refused: no symbol 'tprefork_plugin'"),
    ("crash_on_load", "refused: crashed while loading: signal 11"),
])
def test_bad_plugin_refused_by_config_check(tprefork, name, needle):
    rc, err, _, path = tprefork.check({"plugins": [plugin(name)],
                                       "activities": [plugin_activity("X", name, "nothing")]}, name=f"{name}.conf")
    assert rc == 1, err
    line = _one_line(err)
    assert line.startswith(f"{path}:") and f"plugin '{plugin(name)}' {needle}" in line, line


def test_missing_plugin_function_refused_by_config_check(tprefork):
    rc, err, _, path = tprefork.check({"plugins": [plugin("example")],
                                       "activities": [plugin_activity("X", "example", "nope")]}, name="fn.conf")
    assert rc == 1, err
    line = _one_line(err)
    text = path.read_text().splitlines()
    lineno = next(i for i, ln in enumerate(text, 1) if '"nope"' in ln)
    assert line == (f"{path}:{lineno}: activity 'X': plugin 'example' has no function 'nope' "
                    "(it has: echo, progress, primes, fail)"), line


def test_bad_plugin_refused_at_reload_and_the_master_keeps_running(server, tprefork):
    good = {"plugins": [plugin("example")], "activities": [plugin_activity("PluginEcho", "example", "echo")]}
    tp = tprefork(good, wait_ready=True)
    assert server.run_workflow([activity_spec("PluginEcho", ["one"], tp.task_queue)]) == [{"ok": "one"}]
    for bad, needle in (("bad_abi", "built for plugin ABI version 999"), ("crash_on_load", "crashed while loading")):
        since = tp.log_size()
        cfg = deep_merge(tp.config, {"plugins": [plugin("example"), plugin(bad)]})
        tp.config_path.write_text(to_libconfig(cfg))
        tp.signal(signal.SIGHUP)
        tp.wait_log(rf"reload: .*plugin '{re.escape(plugin(bad))}' refused: {needle}", since=since)
        tp.wait_log(r"reload: configuration invalid; still running generation \d+ unchanged", since=since)
        assert tp.running()
    assert server.run_workflow([activity_spec("PluginEcho", ["two"], tp.task_queue)]) == [{"ok": "two"}]


# ---- plugins: runs -------------------------------------------------------------------------------------------------


def test_plugin_failure_info_and_api(server, tprefork):
    tp = tprefork({"plugins": [plugin("testplug")],
                   "activities": [plugin_activity("Fail", "testplug", "fail_typed"),
                                  plugin_activity("Info", "testplug", "info"),
                                  plugin_activity("Checks", "testplug", "api_checks")]}, wait_ready=True)
    q = tp.task_queue
    wf_id = f"info-{uuid.uuid4()}"
    out = server.run_workflow([
        activity_spec("Fail", ["MyError", "it broke", True, [1, {"k": "v"}]], q, max_attempts=0),
        activity_spec("Info", [], q, heartbeat_timeout_s=9, activity_id="info-1"),
        activity_spec("Checks", [], q),
    ], id=wf_id)
    err = out[0]["error"]
    assert (err["cause_type"], err["message"], err["non_retryable"], err["details"]) == \
        ("MyError", "it broke", True, [1, {"k": "v"}]), err
    assert err["retry_state"] == "NON_RETRYABLE_FAILURE"
    info = out[1]["ok"]
    assert (info["activity_type"], info["activity_id"], info["workflow_id"], info["task_queue"],
            info["namespace"], info["attempt"], info["heartbeat_timeout_ms"], info["heartbeat_details"]) == \
        ("Info", "info-1", wf_id, q, "default", 1, 9000, None), info
    assert info["workflow_type"] == "RunActivities" and info["workflow_run_id"]
    assert info["deadline_ms"] > time.time() * 1000
    assert out[2] == {"ok": 1}
    assert "Checks id=" in tp.log() and "result_again=-3" in tp.log()


def test_cpu_bound_plugin_leaves_the_loop_free(server, tprefork):
    tp = tprefork({"plugins": [plugin("example")],
                   "activities": [plugin_activity("PluginPrimes", "example", "primes"),
                                  plugin_activity("PluginEcho", "example", "echo")]}, wait_ready=True)
    q = tp.task_queue

    async def go():
        primes = asyncio.create_task(server.client.execute_workflow(
            "RunActivities", [activity_spec("PluginPrimes", [2_000_000], q, activity_id="primes-1")],
            id=f"primes-{q}", task_queue=WORKFLOW_TASK_QUEUE))
        await asyncio.to_thread(tp.wait_log, r"PluginPrimes id=primes-1 attempt=1: heartbeat 1 sent", 30)
        t0 = time.monotonic()
        echoes = await server.client.execute_workflow(
            "RunActivities", [activity_spec("PluginEcho", [i], q) for i in range(5)],
            id=f"echoes-{q}", task_queue=WORKFLOW_TASK_QUEUE)
        echo_s = time.monotonic() - t0
        primes_done_early = primes.done()
        return echoes, echo_s, primes_done_early, await primes

    echoes, echo_s, primes_done_early, primes = server.run(go(), 120)
    assert echoes == [{"ok": i} for i in range(5)]
    assert not primes_done_early, "the CPU-bound activity ended before the echoes: the test proves nothing"
    assert primes == [{"ok": 148933}], primes
    print(f"5 echo activities took {echo_s:.2f} s while primes ran")


def inline_activity(type: str, plugin_name: str, function: str) -> dict:
    return {**plugin_activity(type, plugin_name, function), "inline": True}


def worker_child(tp) -> int:
    children = [p for p in tp.descendants() if p.ppid == tp.pid]
    assert len(children) == 1, children
    return children[0].pid


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_inline_plugin_activity_runs_on_the_loop_thread(server, tprefork):
    tp = tprefork({"plugins": [plugin("example")],
                   "activities": [inline_activity("InlineEcho", "example", "echo"),
                                  inline_activity("InlineFail", "example", "fail"),
                                  plugin_activity("PoolEcho", "example", "echo")]}, wait_ready=True)
    q = tp.task_queue
    child = worker_child(tp)
    threads = threads_of(child)
    out = server.run_workflow([
        activity_spec("InlineEcho", [{"a": [1, "b"]}, "ignored"], q),
        activity_spec("InlineEcho", [], q),
        activity_spec("InlineFail", ["boom", True], q, max_attempts=0),
    ])
    assert out[0] == {"ok": {"a": [1, "b"]}}
    assert out[1] == {"ok": None}
    e = out[2]["error"]
    assert (e["cause_type"], e["message"], e["non_retryable"], e["details"]) == \
        ("ExampleError", "boom", True, [{"input": ["boom", True]}]), e
    # Inline runs made no pool thread; a pool run makes one, which then idles for 30 s.
    assert threads_of(child) == threads
    assert server.run_workflow([activity_spec("PoolEcho", ["pool"], q)]) == [{"ok": "pool"}]
    assert threads_of(child) == threads + 1
    assert worker_child(tp) == child


def test_inline_plugin_worker_stays_healthy_after_many_runs(server, tprefork):
    n = 200
    tp = tprefork({"plugins": [plugin("example")],
                   "activities": [inline_activity("InlineEcho", "example", "echo")]}, wait_ready=True)
    q = tp.task_queue
    child = worker_child(tp)
    t0 = time.monotonic()
    out = server.run_workflow([activity_spec("InlineEcho", [{"i": i, "s": "x" * (i % 7)}], q) for i in range(n)],
                              timeout=120)
    took = time.monotonic() - t0
    assert out == [{"ok": {"i": i, "s": "x" * (i % 7)}} for i in range(n)]
    print(f"{n} inline echo activities took {took:.2f} s")
    # The same child serves on (no crash, no replacement), polls and reports as before.
    assert worker_child(tp) == child
    assert len(re.findall(r"InlineEcho id=\S+ attempt=1: completed", tp.log())) == n
    assert server.run_workflow([activity_spec("InlineEcho", ["again"], q)]) == [{"ok": "again"}]
    assert worker_child(tp) == child and tp.running()


def test_inline_taken_up_at_reload(server, tprefork):
    tp = tprefork({"plugins": [plugin("example")],
                   "activities": [plugin_activity("Echo", "example", "echo")]}, wait_ready=True)
    q = tp.task_queue
    since = tp.log_size()
    tp.config_path.write_text(to_libconfig(deep_merge(tp.config, {
        "activities": [inline_activity("Echo", "example", "echo")]})))
    tp.signal(signal.SIGHUP)
    tp.wait_log(r"reload: configuration valid", since=since)
    tp.wait_ready(since=since)
    wait_until(lambda: len([p for p in tp.descendants() if p.ppid == tp.pid]) == 1, 30,
               "the old generation to exit")
    child = worker_child(tp)
    threads = threads_of(child)
    assert server.run_workflow([activity_spec("Echo", [i], q) for i in range(5)]) == [{"ok": i} for i in range(5)]
    assert threads_of(child) == threads  # the new generation runs it inline: no pool thread


def test_inline_refused_on_exec_activities_by_config_check(tprefork):
    rc, err, _, path = tprefork.check({"activities": [{**exec_activity("X", "/bin/cat"), "inline": True}]},
                                      name="inline.conf")
    assert rc == 1, err
    line = _one_line(err)
    lineno = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if "inline =" in ln)
    assert line == f"{path}:{lineno}: activity 'X': 'inline' applies to plugin activities only", line
    rc, err, out, _ = tprefork.check({"plugins": [plugin("example")],
                                      "activities": [inline_activity("X", "example", "echo")]}, name="ok.conf")
    assert rc == 0, err
    assert "configuration ok" in out, out


# ---- examples -------------------------------------------------------------------------------------------------


def test_example_plugin_activities(server, tprefork):
    tp = tprefork({"plugins": [plugin("example")],
                   "activities": [plugin_activity("PluginEcho", "example", "echo"),
                                  plugin_activity("PluginProgress", "example", "progress"),
                                  plugin_activity("PluginPrimes", "example", "primes"),
                                  plugin_activity("PluginFail", "example", "fail")]}, wait_ready=True)
    q = tp.task_queue
    out = server.run_workflow([
        activity_spec("PluginEcho", [{"a": [1, "b"]}, "ignored"], q),
        activity_spec("PluginEcho", [], q),
        activity_spec("PluginProgress", [5, 50], q, heartbeat_timeout_s=2),
        activity_spec("PluginPrimes", [100000], q),
        activity_spec("PluginFail", ["boom", True], q, max_attempts=0),
        activity_spec("PluginFail", ["again", False], q, max_attempts=2, initial_interval_s=0.5),
    ])
    assert out[0] == {"ok": {"a": [1, "b"]}}
    assert out[1] == {"ok": None}
    assert out[2] == {"ok": {"steps": 5, "resumed_from": 0, "attempt": 1}}
    assert out[3] == {"ok": 9592}
    e = out[4]["error"]
    assert (e["cause_type"], e["message"], e["non_retryable"], e["details"]) == \
        ("ExampleError", "boom", True, [{"input": ["boom", True]}]), e
    e = out[5]["error"]
    assert (e["cause_type"], e["non_retryable"], e["retry_state"]) == \
        ("ExampleError", False, "MAXIMUM_ATTEMPTS_REACHED"), e


def test_example_exec_scripts(server, tprefork):
    tp = tprefork({"activities": [
        {"type": "Progress", "exec": [str(EXAMPLES / "progress.py")]},
        {"type": "Countdown", "exec": [str(EXAMPLES / "countdown.sh")]},
        {"type": "Fail", "exec": [str(EXAMPLES / "fail.sh")]},
    ]}, wait_ready=True)
    q = tp.task_queue
    out = server.run_workflow([
        activity_spec("Progress", [3, 0.1], q, heartbeat_timeout_s=2),
        activity_spec("Countdown", [2], q, heartbeat_timeout_s=5),
        activity_spec("Countdown", ["x"], q, max_attempts=0),
        activity_spec("Fail", [True], q, max_attempts=0),
    ])
    assert out[0] == {"ok": {"steps": 3, "resumed_from": 0, "attempt": 1}}
    assert out[1] == {"ok": 2}
    assert out[2]["error"]["cause_type"] == "BadInput" and out[2]["error"]["non_retryable"] is True
    e = out[3]["error"]
    assert (e["cause_type"], e["non_retryable"], e["details"]) == ("ExampleError", True, [{"args": [True]}]), e


def _kill_command(tp, script: str) -> None:
    """SIGKILL the process of tprefork's session that runs script (the leader of its group)."""
    for p in tp.descendants():
        try:
            cmd = Path(f"/proc/{p.pid}/cmdline").read_bytes()
        except OSError:
            continue
        if script.encode() in cmd and p.pgid == p.pid:
            os.kill(p.pid, signal.SIGKILL)
            return
    raise AssertionError(f"no process runs {script}")


def test_example_scripts_resume_after_a_retry(server, tprefork):
    """progress.py and countdown.sh: killed mid-way, the next attempt starts from the last details."""
    tp = tprefork({"activities": [
        {"type": "Progress", "exec": [str(EXAMPLES / "progress.py")]},
        {"type": "Countdown", "exec": [str(EXAMPLES / "countdown.sh")]},
    ]}, wait_ready=True)
    q = tp.task_queue

    async def go():
        h = await server.client.start_workflow("RunActivities", [
            activity_spec("Progress", [40, 0.1], q, heartbeat_timeout_s=2, max_attempts=3, activity_id="ex-p"),
            activity_spec("Countdown", [8], q, heartbeat_timeout_s=2, max_attempts=3, activity_id="ex-c"),
        ], id=f"ex-resume-{q}", task_queue=WORKFLOW_TASK_QUEUE)
        # The second heartbeat goes at the end of the first throttle window (1.6 s): by then each
        # has recorded progress that its next attempt must start from.
        for aid, script in (("ex-p", "progress.py"), ("ex-c", "countdown.sh")):
            await asyncio.to_thread(tp.wait_log, rf"id={aid} attempt=1: heartbeat 2 sent", 30)
            _kill_command(tp, script)
        return await h.result()

    out = server.run(go(), 120)
    p, c = out[0]["ok"], out[1]["ok"]
    assert p["attempt"] == 2 and p["resumed_from"] >= 10, p
    assert 1 <= c <= 7, f"the second attempt counted {c} of 8 seconds"
