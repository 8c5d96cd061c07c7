"""Foundation: tprefork runs activities from a real Temporal dev server, called by name from a Python
workflow; failures, retries, unknown types, bulk load, configuration errors, graceful stop."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time

import pytest
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, GetSystemInfoRequest
from temporalio.client import Client

from helpers import activity_spec, check_config, exec_activity, to_libconfig

# ---- the harness itself (no tprefork needed) ------------------------------------------------------


def test_dev_server_answers(server):
    info = server.run(server.client.workflow_service.get_system_info(GetSystemInfoRequest()), 10)
    assert info.server_version, "GetSystemInfo returned no server version"
    ns = server.run(
        server.client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default")), 10)
    assert ns.namespace_info.name == "default"
    assert ns.namespace_info.capabilities.worker_poll_complete_on_shutdown, \
        "the session server must run with frontend.enableCancelWorkerPollsOnShutdown=true"


def test_dev_server_legacy_lacks_poll_shutdown_capability(server_legacy):
    ns = server_legacy.run(
        server_legacy.client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default")),
        10)
    assert not ns.namespace_info.capabilities.worker_poll_complete_on_shutdown


def test_dev_server_restart_keeps_data(dev_server, tmp_path):
    """The start_dev_server variant with a db file: a workflow started before a restart is still there."""
    srv = dev_server(db_file=tmp_path / "temporal.db")
    address = srv.address

    async def start() -> None:
        client = await Client.connect(srv.address)
        await client.start_workflow("NoWorkerForThis", id="survives-restart", task_queue="nobody-polls")

    async def status() -> int:
        client = await Client.connect(srv.address)
        return (await client.get_workflow_handle("survives-restart").describe()).raw_description \
            .workflow_execution_info.status

    asyncio.run(start())
    srv.restart()
    assert srv.address == address and srv.is_running()
    assert asyncio.run(status()) == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING


def test_libconfig_serializer():
    text = to_libconfig({
        "temporal": {"address": "127.0.0.1:1", "task_queue": 'q"\\\n'},
        "workers": {"count": 2, "big": 2**40, "on": True, "ratio": 0.5},
        "skip": None,
        "activities": [{"type": "A", "exec": ["/bin/x", "-y"], "non_retryable_exit_codes": [2, 3]}],
        "plugins": [],
    })
    assert text == (
        'temporal = {\n  address = "127.0.0.1:1";\n  task_queue = "q\\"\\\\\\n";\n};\n'
        'workers = {\n  count = 2;\n  big = 1099511627776L;\n  on = true;\n  ratio = 0.5;\n};\n'
        'activities = (\n  {\n    type = "A";\n    exec = [ "/bin/x", "-y" ];\n'
        '    non_retryable_exit_codes = [ 2, 3 ];\n  }\n);\n'
        'plugins = [ ];\n'
    )


# ---- activities ------------------------------------------------------------------------------------


def test_echo(server, tprefork):
    tp = tprefork({"activities": [exec_activity("Echo", "echo.py")]}, wait_ready=True)
    cases = [
        ["hello, wörld \"quoted\" \\ \n"],
        [{"a": 1, "nested": {"b": [1, 2.5, None, True]}, "s": "x"}],
        [[1, "two", {"three": 3}, []]],
        ["first", {"second": 2}],
        [],
    ]
    out = server.run_workflow([activity_spec("Echo", args, tp.task_queue) for args in cases])
    assert out[0] == {"ok": cases[0][0]}
    assert out[1] == {"ok": cases[1][0]}
    assert out[2] == {"ok": cases[2][0]}
    assert out[3] == {"ok": ["first", {"second": 2}]}, "two arguments: the command gets (and returns) both"
    assert out[4] == {"ok": None}, "empty stdout is no result (None)"


def test_activity_environment(server, tprefork):
    tp = tprefork(
        {"activities": [exec_activity("Env", "env_dump.py", env=["TP_TEST_VAR=hello world"])]},
        env={"TP_NOT_FOR_COMMANDS": "leak"},
        wait_ready=True,
    )
    wf_id = f"env-{tp.task_queue}"
    out = server.run_workflow(
        [activity_spec("Env", ["x", 2], tp.task_queue, activity_id="env-activity-1")], id=wf_id)
    assert "ok" in out[0], out
    seen = out[0]["ok"]
    env = seen["env"]
    assert env.get("TEMPORAL_ACTIVITY_TYPE") == "Env"
    assert env.get("TEMPORAL_ACTIVITY_ID") == "env-activity-1"
    assert env.get("TEMPORAL_WORKFLOW_ID") == wf_id
    assert env.get("TEMPORAL_RUN_ID"), "TEMPORAL_RUN_ID missing"
    assert env.get("TEMPORAL_ATTEMPT") == "1"
    assert env.get("TEMPORAL_TASK_QUEUE") == tp.task_queue
    assert env.get("TEMPORAL_NAMESPACE") == "default"
    assert env.get("TP_TEST_VAR") == "hello world", "configured env addition missing"
    assert "PATH" in env
    assert "TP_NOT_FOR_COMMANDS" not in env, "the command's environment must be an allowlist"
    assert seen["fds"] == [0, 1, 2, 3], f"open fds in the command: {seen['fds']}"
    assert seen["pgid_is_pid"], "the command must lead its own process group"
    assert json.loads(seen["stdin"]) == ["x", 2], "stdin: the arguments as one JSON array"


def test_failure_then_retry_succeeds(server, tprefork, tmp_path):
    marker = tmp_path / "attempts"
    tp = tprefork({"activities": [exec_activity("Flaky", "flaky.py", env=["SUCCEED_ON=3", f"MARKER={marker}"])]},
                  wait_ready=True)
    out = server.run_workflow([activity_spec("Flaky", [], tp.task_queue, max_attempts=0, initial_interval_s=1)])
    assert out == [{"ok": 3}], out
    assert marker.read_text().split() == ["1", "2", "3"]


def test_failure_exhausts_attempts(server, tprefork, tmp_path):
    marker = tmp_path / "attempts"
    tp = tprefork({"activities": [exec_activity("AlwaysFails", "flaky.py", env=["SUCCEED_ON=0", f"MARKER={marker}"])]},
                  wait_ready=True)
    out = server.run_workflow(
        [activity_spec("AlwaysFails", ["x"], tp.task_queue, max_attempts=2, initial_interval_s=1)])
    assert "error" in out[0], out
    err = out[0]["error"]
    assert err["kind"] == "ActivityError"
    assert err["cause_type"] == "ExecFailed", err
    assert re.search(r"\b3\b", err["message"]), f"exit status 3 not in the message: {err['message']!r}"
    assert "flaky-marker: attempt 2 fails" in err["message"], \
        f"the last stderr line is not in the message: {err['message']!r}"
    assert err["non_retryable"] is False
    assert err["retry_state"] == "MAXIMUM_ATTEMPTS_REACHED", err
    assert marker.read_text().split() == ["1", "2"]


def test_error_record_defines_the_failure(server, tprefork, tmp_path):
    marker = tmp_path / "attempts"
    tp = tprefork({"activities": [exec_activity("Bad", "error_record.py", env=[f"MARKER={marker}"])]},
                  wait_ready=True)
    out = server.run_workflow([activity_spec("Bad", [{"k": "v"}], tp.task_queue, max_attempts=0)])
    assert "error" in out[0], out
    err = out[0]["error"]
    assert err["cause_type"] == "BadInput", err
    assert err["message"] == "no good"
    assert err["non_retryable"] is True
    assert err["details"] == [1]
    assert err["retry_state"] == "NON_RETRYABLE_FAILURE", err
    assert marker.read_text().split() == ["1"], "a non-retryable failure must not be retried"


def test_unknown_activity_type_fails_at_once(server, tprefork):
    tp = tprefork({"activities": [exec_activity("Echo", "echo.py")]}, wait_ready=True)
    t0 = time.monotonic()
    out = server.run_workflow([activity_spec("NoSuchType", ["x"], tp.task_queue, max_attempts=0,
                                             start_to_close_s=60)], timeout=60)
    elapsed = time.monotonic() - t0
    assert "error" in out[0], out
    err = out[0]["error"]
    assert err["cause_type"] == "UnknownActivityType", err
    assert err["non_retryable"] is True
    assert "NoSuchType" in err["message"]
    assert err["retry_state"] == "NON_RETRYABLE_FAILURE", err
    assert elapsed < 10, f"an unknown type took {elapsed:.1f} s to fail"


@pytest.mark.slow
def test_bulk_200_activities_4_workflows(server, tprefork):
    tp = tprefork({"workers": {"max_concurrent_activities": 8},
                   "activities": [exec_activity("Echo", "echo.py")]}, wait_ready=True)
    n_wf, per_wf = 4, 50
    args = [[{"wf": w, "i": i, "s": f"value-{w}-{i}"} for i in range(per_wf)] for w in range(n_wf)]
    spec_lists = [[activity_spec("Echo", [a], tp.task_queue, start_to_close_s=60) for a in wf_args]
                  for wf_args in args]
    t0 = time.monotonic()
    outs = server.run_workflows(spec_lists, timeout=180)
    elapsed = time.monotonic() - t0
    assert len(outs) == n_wf
    bad = []
    for w in range(n_wf):
        assert len(outs[w]) == per_wf
        for i in range(per_wf):
            if outs[w][i] != {"ok": args[w][i]}:
                bad.append((w, i, outs[w][i]))
    assert not bad, f"{len(bad)} of {n_wf * per_wf} wrong, first: {bad[:3]}"
    print(f"200 activities in {elapsed:.2f} s")


# ---- configuration ---------------------------------------------------------------------------------


def _line_of(text: str, needle: str) -> int:
    for n, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in the configuration text")


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n{stderr}"
    return lines[0]


def test_config_check_valid(tprefork):
    rc, err, out, path = tprefork.check({"activities": [exec_activity("Echo", "echo.py")]})
    assert rc == 0, f"tprefork -t on a valid file: status {rc}\nstderr: {err}\nstdout: {out}"


def test_config_check_syntax_error(tprefork):
    good = to_libconfig(tprefork.defaults())
    text = good + "workers2 = {\n  count = ;\n};\n"
    rc, err, _, path = tprefork.check(text)
    assert rc == 1, f"status {rc}, stderr: {err}"
    line = _one_error_line(err)
    assert f"{path}:{_line_of(text, 'count = ;')}" in line, line


def test_config_check_invalid_value(tprefork):
    cfg = {"workers": {"pollers": 0}, "activities": [exec_activity("Echo", "echo.py")]}
    path, merged = tprefork.write_config(cfg, name="pollers.conf")
    text = path.read_text()
    rc, err, _, _ = tprefork.check(path)
    assert rc == 1, f"status {rc}, stderr: {err}"
    line = _one_error_line(err)
    assert f"{path}:{_line_of(text, 'pollers = 0;')}" in line, line
    assert "pollers" in line


def test_config_check_missing_command(tprefork, tmp_path):
    missing = str(tmp_path / "no-such-command")
    path, _ = tprefork.write_config({"activities": [{"type": "Gone", "exec": [missing]}]}, name="exec.conf")
    text = path.read_text()
    rc, err, _, _ = tprefork.check(path)
    assert rc == 1, f"status {rc}, stderr: {err}"
    line = _one_error_line(err)
    assert f"{path}:{_line_of(text, missing)}" in line, line
    assert "no-such-command" in line


def test_bad_config_at_start_exits_1(tprefork, tmp_path):
    path, merged = tprefork.write_config(
        {"workers": {"pollers": 0}, "activities": [exec_activity("Echo", "echo.py")]}, name="bad.conf")
    rc, err, _ = check_config(path, args=())  # tprefork -c FILE, no -t
    assert rc == 1, f"status {rc}, stderr: {err}"
    line = _one_error_line(err)
    assert f"{path}:{_line_of(path.read_text(), 'pollers = 0;')}" in line, line
    assert not (tmp_path / "tprefork.pid").exists(), "a bad configuration must create no pid file"
    assert not (tmp_path / "journal.db").exists(), "a bad configuration must create no journal"


# ---- lifecycle ---------------------------------------------------------------------------------------


def test_graceful_stop_when_idle(server, tprefork):
    tp = tprefork({"activities": [exec_activity("Echo", "echo.py")]}, wait_ready=True)
    t0 = time.monotonic()
    tp.signal(signal.SIGTERM)
    rc = tp.wait_exit(timeout=15)
    elapsed = time.monotonic() - t0
    assert rc == 0, f"exit status {rc} after SIGTERM"
    assert elapsed < 10, f"idle graceful stop took {elapsed:.1f} s (shutdown_timeout is 10 s)"
    print(f"idle graceful stop: {elapsed:.2f} s")
