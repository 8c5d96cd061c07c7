"""The integration-test harness: a real Temporal dev server, an asyncio loop for the Python client and
its workflow worker, tprefork processes with their logs, and process-table helpers.

Helpers synchronise on events (log lines, server answers, process exits) through bounded polling;
they never sleep a fixed time to let something happen.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    GetSystemInfoRequest,
)
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from workflows import WORKFLOW_TASK_QUEUE, RunActivities

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
ACTIVITIES = Path(__file__).resolve().parent / "activities"

# A worker logs an info line with "ready" once its polls are open
# ("... tprefork[1234] info: worker 0: ready ..." or "info: worker 0 gen 1: ready: ..."); group 1 is
# the worker's number. (The master's own lines, "info: master: ...", do not match.)
WORKER_READY_RE = r"info: worker (\d+)\b[^:\n]*: ready\b"
# Sanitizer reports (ASan, LSan, UBSan) in a tprefork log fail the test.
# Reports of valgrind's memcheck (when TPREFORK_BIN is a valgrind wrapper) count the same way.
SANITIZER_RE = (r"(ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|SUMMARY: UndefinedBehaviorSanitizer"
                r"|==\d+== (Invalid (read|write|free)|Conditional jump|Use of uninitialised|Syscall param"
                r"|Mismatched free)|definitely lost in loss record)")

# pids of the Popen objects the harness owns: reap_orphans must not steal their exit status.
_popen_pids: set[int] = set()


def temporal_cli() -> str:
    cli = os.path.abspath(os.environ.get("TEMPORAL_CLI") or REPO / ".venv" / "bin" / "temporal")
    if not os.access(cli, os.X_OK):
        raise RuntimeError(f"Temporal CLI not found at {cli}: run scripts/setup.sh (or set TEMPORAL_CLI)")
    return cli


def tprefork_bin() -> str:
    path = os.path.abspath(os.environ.get("TPREFORK_BIN") or REPO / "build" / "src" / "tprefork")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"tprefork binary not found at {path}: run scripts/build.sh (or set TPREFORK_BIN)")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def wait_until(pred: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll pred until it returns a true value (returned) or raise TimeoutError after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# ---- asyncio loop in a background thread ------------------------------------------------------


class AsyncRunner:
    """One asyncio loop in a daemon thread; synchronous test code runs coroutines on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="asyncio-runner", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"coroutine did not finish within {timeout} s") from None
        except BaseException:
            fut.cancel()
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


# ---- the Temporal dev server ------------------------------------------------------------------


async def wait_server_ready(address: str, timeout: float = 30.0, proc: subprocess.Popen | None = None,
                            log_path: Path | None = None) -> None:
    """Retry connect + GetSystemInfo + DescribeNamespace(default) every 100 ms up to timeout."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            client = await asyncio.wait_for(Client.connect(address, namespace="default"), 5)
            await asyncio.wait_for(client.workflow_service.get_system_info(GetSystemInfoRequest()), 5)
            await asyncio.wait_for(
                client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default")), 5
            )
            return
        except Exception as e:  # not ready yet
            last = e
        if proc is not None and proc.poll() is not None:
            log = log_path.read_text(errors="replace") if log_path else ""
            raise RuntimeError(f"dev server exited with status {proc.returncode} during start-up:\n{tail(log)}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"dev server at {address} not ready after {timeout:g} s: {last!r}")
        await asyncio.sleep(0.1)


class DevServer:
    """`temporal server start-dev` as a subprocess in its own session.

    capability: pass --dynamic-config-value frontend.enableCancelWorkerPollsOnShutdown=true (the namespace
    capability worker_poll_complete_on_shutdown). db_file: persist to this SQLite file (survives
    restart()); None keeps the data in memory. port: fixed frontend port (default: a free one).
    """

    def __init__(self, workdir: Path, capability: bool = True, db_file: str | Path | None = None,
                 port: int | None = None, name: str = "temporal") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.capability = capability
        self.db_file = str(db_file) if db_file else None
        self.port = port
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        argv = [temporal_cli(), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
                "--port", str(self.port), "--log-level", "warn"]
        if self.capability:
            argv += ["--dynamic-config-value", "frontend.enableCancelWorkerPollsOnShutdown=true"]
        if self.db_file:
            argv += ["--db-filename", self.db_file]
        return argv

    def start(self, timeout: float = 30.0) -> "DevServer":
        fixed = self.port is not None
        for attempt in range(3):
            if not fixed:
                self.port = free_port()
            with open(self.log_path, "ab") as log:
                log.write(f"--- start {' '.join(self._argv())}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True,
                                             cwd=self.workdir)
            _popen_pids.add(self.proc.pid)
            try:
                asyncio.run(wait_server_ready(self.address, timeout, self.proc, self.log_path))
                return self
            except RuntimeError:
                # Exited during start-up: most likely a port taken meanwhile; try another one.
                self.stop()
                if fixed or attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        kill_session(p.pid)
        if p.poll() is None:
            p.wait(5)
        _popen_pids.discard(p.pid)
        self.proc = None

    def restart(self, timeout: float = 30.0) -> "DevServer":
        """Stop and start again on the same port (and the same db_file, if any)."""
        self.stop()
        return self.start(timeout)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_dev_server(tmpdir: str | Path, capability: bool = True, db_file: str | Path | None = None,
                     port: int | None = None) -> DevServer:
    """Start a dev server (for tests that stop and restart it); the caller stops it."""
    name = "temporal" if capability else "temporal-legacy"
    return DevServer(Path(tmpdir), capability=capability, db_file=db_file, port=port, name=name).start()


class TemporalEnv:
    """A dev server with a connected client and the harness's workflow worker (RunActivities on
    WORKFLOW_TASK_QUEUE), all on one AsyncRunner loop."""

    def __init__(self, server: DevServer, runner: AsyncRunner) -> None:
        self.server = server
        self.runner = runner
        self.client: Client = runner.run(Client.connect(server.address, namespace="default"), 30)
        self._worker: Worker | None = None
        self._worker_task: asyncio.Task | None = None
        runner.run(self._start_worker(), 30)

    async def _start_worker(self) -> None:
        self._worker = Worker(
            self.client,
            task_queue=WORKFLOW_TASK_QUEUE,
            workflows=[RunActivities],
            workflow_runner=UnsandboxedWorkflowRunner(),
        )
        self._worker_task = asyncio.create_task(self._worker.run())

    async def _stop_worker(self) -> None:
        if self._worker is not None:
            await self._worker.shutdown()
        if self._worker_task is not None:
            try:
                await self._worker_task
            except Exception:
                pass

    @property
    def address(self) -> str:
        return self.server.address

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        return self.runner.run(coro, timeout)

    def run_workflow(self, specs: list[dict], id: str | None = None, timeout: float = 60.0) -> list[dict]:
        return self.runner.run(run_workflow(self.client, specs, id=id, timeout=timeout), timeout + 15)

    def run_workflows(self, spec_lists: list[list[dict]], timeout: float = 60.0) -> list[list[dict]]:
        """Several RunActivities workflows concurrently; one outcome list per workflow."""
        async def all_() -> list[list[dict]]:
            return list(await asyncio.gather(*(run_workflow(self.client, s, timeout=timeout)
                                               for s in spec_lists)))
        return self.runner.run(all_(), timeout + 15)

    def close(self) -> None:
        try:
            self.runner.run(self._stop_worker(), 30)
        finally:
            self.server.stop()


# ---- workflows ----------------------------------------------------------------------------------


def activity_spec(type: str, args: Iterable[Any] = (), task_queue: str = "", *, start_to_close_s: float = 30,
                  **opts: Any) -> dict:
    """One spec for RunActivities (see workflows.RunActivities for the keys in opts)."""
    return {"type": type, "args": list(args), "task_queue": task_queue, "start_to_close_s": start_to_close_s,
            **opts}


async def run_workflow(client: Client, specs: list[dict], id: str | None = None, timeout: float = 60.0,
                       task_queue: str = WORKFLOW_TASK_QUEUE) -> list[dict]:
    """Run RunActivities(specs) and return one outcome per spec: {"ok": result} or {"error": {...}}."""
    wf_id = id or f"run-activities-{uuid.uuid4()}"
    return await asyncio.wait_for(
        client.execute_workflow(
            "RunActivities",
            specs,
            id=wf_id,
            task_queue=task_queue,
            execution_timeout=timedelta(seconds=timeout),
        ),
        timeout + 10,
    )


# ---- libconfig --------------------------------------------------------------------------------

_KEY_RE = re.compile(r"^[A-Za-z*][-A-Za-z0-9_*]*$")


def _lc_string(s: str) -> str:
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\f":
            out.append("\\f")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _lc_value(v: Any, indent: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if -(2**31) <= v < 2**31 else f"{v}L"
    if isinstance(v, float):
        r = repr(v)
        return r if any(c in r for c in ".eE") else r + ".0"
    if isinstance(v, str):
        return _lc_string(v)
    if isinstance(v, dict):
        inner = indent + "  "
        body = "".join(f"{inner}{_lc_key(k)} = {_lc_value(x, inner)};\n" for k, x in v.items() if x is not None)
        return "{\n" + body + indent + "}"
    if isinstance(v, (list, tuple)):
        items = list(v)
        if all(isinstance(x, (str, int, float)) for x in items):
            return "[ " + ", ".join(_lc_value(x, indent) for x in items) + " ]" if items else "[ ]"
        inner = indent + "  "
        return "(\n" + ",\n".join(inner + _lc_value(x, inner) for x in items) + "\n" + indent + ")"
    raise TypeError(f"cannot write {type(v).__name__} to libconfig: {v!r}")


def _lc_key(k: str) -> str:
    if not _KEY_RE.match(k):
        raise ValueError(f"not a libconfig setting name: {k!r}")
    return k


def to_libconfig(cfg: dict) -> str:
    """Serialize a dict: str (quoted, escaped), int, float, bool, lists of scalars as arrays
    [ a, b ], lists of groups as lists ( {...}, {...} ), dicts as groups { ... }. None values are left
    out (a way to remove a default)."""
    return "".join(f"{_lc_key(k)} = {_lc_value(v, '')};\n" for k, v in cfg.items() if v is not None)


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# Python activity scripts run with this interpreter (the venv's, i.e. Debian's python3): a python3
# found through PATH may be a slow wrapper (pyenv shims) and would dominate every activity's time.
PYTHON = sys.executable


def exec_activity(type: str, script: str | Path, *args: str, **opts: Any) -> dict:
    """An `activities` entry for a command; a bare script name refers to tests/integration/activities/.
    A .py script runs as [PYTHON, script, args...]."""
    path = Path(script)
    if not path.is_absolute() and "/" not in str(script):
        path = ACTIVITIES / path
    argv = [PYTHON, str(path)] if path.suffix == ".py" else [str(path)]
    return {"type": type, "exec": [*argv, *args], **opts}


# ---- processes ----------------------------------------------------------------------------------


@dataclass
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    comm: str


def proc_table() -> dict[int, ProcInfo]:
    procs: dict[int, ProcInfo] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read().decode(errors="replace")
        except OSError:
            continue
        lpar, rpar = data.find("("), data.rfind(")")
        fields = data[rpar + 2:].split()
        procs[int(name)] = ProcInfo(pid=int(name), ppid=int(fields[1]), pgid=int(fields[2]),
                                    sid=int(fields[3]), state=fields[0], comm=data[lpar + 1:rpar])
    return procs


def descendants(pid: int, table: dict[int, ProcInfo] | None = None) -> list[ProcInfo]:
    """Processes whose ancestry leads to pid (not pid itself)."""
    table = table if table is not None else proc_table()
    children: dict[int, list[int]] = {}
    for p in table.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out, todo = [], list(children.get(pid, []))
    while todo:
        c = todo.pop()
        out.append(table[c])
        todo.extend(children.get(c, []))
    return out


def reap_orphans() -> None:
    """Reap zombies that were reparented to this process (it is a child subreaper, see conftest)."""
    me = os.getpid()
    for p in proc_table().values():
        if p.ppid == me and p.state == "Z" and p.pid not in _popen_pids:
            try:
                os.waitpid(p.pid, os.WNOHANG)
            except ChildProcessError:
                pass


def session_members(sid: int, include_zombies: bool = False) -> list[ProcInfo]:
    reap_orphans()
    return [p for p in proc_table().values()
            if p.sid == sid and (include_zombies or p.state != "Z")]


def kill_session(sid: int) -> None:
    """SIGKILL every process of session sid (its process group and the groups inside it)."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in session_members(sid):
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---- tprefork ------------------------------------------------------------------------------------


class Tprefork:
    """A running `tprefork -c FILE` in its own session, stdout+stderr appended to workdir/tprefork.log."""

    def __init__(self, config_path: Path, workdir: Path, task_queue: str | None, args: Iterable[str] = (),
                 env: dict[str, str] | None = None, config: dict | None = None,
                 wrap: Iterable[str] = ()) -> None:
        self.config_path = Path(config_path)
        self.workdir = Path(workdir)
        self.task_queue = task_queue
        self.config = config
        self.log_path = self.workdir / "tprefork.log"
        # wrap: a command that execs its arguments (e.g. unshare ... sh -c '...; exec "$@"'), so that
        # the process started is still the master.
        self.argv = [*wrap, tprefork_bin(), "-c", str(self.config_path), *args]
        full_env = clean_env()
        full_env.update(env or {})
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd=self.workdir, env=full_env)
        _popen_pids.add(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session: the leader of its own session and group

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_for_log(self, check: Callable[[str], T], what: str, timeout: float = 30.0, since: int = 0) -> T:
        """Poll the log (from byte offset `since`) until check(text) returns a true value (returned).
        Raises with the log's tail on timeout, or when tprefork exits first."""
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.running()
            try:
                with open(self.log_path, "rb") as f:
                    f.seek(since)
                    text = f.read().decode(errors="replace")
            except FileNotFoundError:
                text = ""
            v = check(text)
            if v:
                return v
            if exited:
                raise AssertionError(f"tprefork exited (status {self.returncode}) before logging {what}; "
                                     f"log tail:\n{tail(self.log())}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what} in the tprefork log; "
                                     f"log tail:\n{tail(self.log())}")
            time.sleep(0.05)

    def wait_log(self, pattern: str, timeout: float = 30.0, count: int = 1, since: int = 0) -> re.Match:
        """Wait until the log (from byte offset `since`) holds `count` matches of the regex; return the
        last of them."""
        rx = re.compile(pattern)

        def check(text: str) -> re.Match | None:
            matches = list(rx.finditer(text))
            return matches[count - 1] if len(matches) >= count else None

        return self.wait_for_log(check, f"{count} x /{pattern}/", timeout, since)

    def wait_ready(self, timeout: float = 30.0, count: int | None = None, since: int = 0) -> set[str]:
        """Wait until `count` distinct workers (default: workers.count of the configuration, else 1)
        have logged their "ready" line; return the worker numbers seen."""
        if count is None:
            count = 1
            if self.config and isinstance(self.config.get("workers"), dict):
                count = int(self.config["workers"].get("count", 1) or 1)
        rx = re.compile(WORKER_READY_RE)

        def check(text: str) -> set[str] | None:
            seen = {m.group(1) for m in rx.finditer(text)}
            return seen if len(seen) >= count else None

        return self.wait_for_log(check, f"{count} worker(s) ready (/{WORKER_READY_RE}/)", timeout, since)

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"tprefork did not exit within {timeout:g} s; log tail:\n{tail(self.log())}") from None

    def stop(self, timeout: float = 15.0) -> int:
        if self.running():
            self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def descendants(self) -> list[ProcInfo]:
        return descendants(self.proc.pid)

    def session_members(self) -> list[ProcInfo]:
        return session_members(self.proc.pid)

    def teardown(self, term_timeout: float = 15.0) -> list[str]:
        """Stop it (SIGTERM, then SIGKILL of the whole session) and return problems found:
        processes of its session left behind, sanitizer reports in its log."""
        problems: list[str] = []
        if self.running():
            try:
                self.signal(signal.SIGTERM)
                self.proc.wait(term_timeout)
            except subprocess.TimeoutExpired:
                problems.append(f"tprefork {self.pid} still running {term_timeout:g} s after SIGTERM: killed")
            except ProcessLookupError:
                pass
        if self.running():
            kill_session(self.pid)
            self.proc.wait(10)
        # The leader is gone: whatever is left of its session escaped the stop.
        # (bounded: a process being killed may need a moment to become a zombie)
        deadline = time.monotonic() + 2.0
        left = self.session_members()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self.session_members()
        if left:
            problems.append("processes of tprefork's session left behind: "
                            + ", ".join(f"{p.pid} ({p.comm}, state {p.state})" for p in left))
            kill_session(self.pid)
        _popen_pids.discard(self.proc.pid)
        m = re.search(SANITIZER_RE, self.log())
        if m:
            problems.append(f"sanitizer report in {self.log_path}: {m.group(0)}")
        return problems


def clean_env() -> dict[str, str]:
    """The harness's environment without Temporal's client variables (tprefork honours TEMPORAL_ADDRESS,
    TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*: a developer's shell must not redirect tests)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}


def check_config(config_path: str | Path, timeout: float = 30.0, env: dict[str, str] | None = None,
                 args: Iterable[str] = ("-t",), cwd: str | Path | None = None) -> tuple[int, str, str]:
    """Run `tprefork -t -c FILE` (in cwd, default the file's directory); return (returncode, stderr,
    stdout)."""
    full_env = clean_env()
    full_env.update(env or {})
    r = subprocess.run([tprefork_bin(), *args, "-c", str(config_path)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout, env=full_env,
                       cwd=cwd or Path(config_path).parent)
    return r.returncode, r.stderr, r.stdout


def unique_task_queue(test_name: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", test_name).strip("-")[:40]
    return f"tp-{base}-{uuid.uuid4().hex[:8]}"


class TprefFactory:
    """The `tprefork` fixture: tp = tprefork(config_dict_or_text, args=[...], env={...})."""

    def __init__(self, workdir: Path, test_name: str, get_server: Callable[[], Any]) -> None:
        self.workdir = Path(workdir)
        self.test_name = test_name
        self._get_server = get_server
        self.handles: list[Tprefork] = []
        self._n = 0

    def defaults(self, address: str | None = None, task_queue: str | None = None,
                 subdir: Path | None = None) -> dict:
        d = subdir or self.workdir
        return {
            "temporal": {
                "address": address or "127.0.0.1:7233",
                "namespace": "default",
                "task_queue": task_queue or unique_task_queue(self.test_name),
            },
            "workers": {
                "count": 1,
                "max_concurrent_activities": 8,
                "pollers": 2,
                "shutdown_timeout": 10,
                "cancel_grace": 2,
            },
            "log": {"level": "debug"},
            "journal": {"path": str(d / "journal.db")},
            "pidfile": str(d / "tprefork.pid"),
        }

    def _subdir(self) -> Path:
        self._n += 1
        d = self.workdir if self._n == 1 else self.workdir / f"tprefork-{self._n}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write_config(self, config: dict | str | None = None, name: str = "tprefork.conf",
                     address: str | None = None, subdir: Path | None = None) -> tuple[Path, dict | None]:
        """Write a configuration file: a dict is merged over defaults(); a str is written verbatim."""
        d = subdir or self.workdir
        path = d / name
        if isinstance(config, str):
            path.write_text(config)
            return path, None
        merged = deep_merge(self.defaults(address=address, subdir=d), config or {})
        path.write_text(to_libconfig(merged))
        return path, merged

    def __call__(self, config: dict | str | None = None, args: Iterable[str] = (),
                 env: dict[str, str] | None = None, server: Any = None, wait_ready: bool = False,
                 ready_timeout: float = 30.0, wrap: Iterable[str] = ()) -> Tprefork:
        d = self._subdir()
        address = None
        if not isinstance(config, str):
            explicit = (config or {}).get("temporal", {}).get("address")
            if explicit is None:
                address = (server or self._get_server()).address
        path, merged = self.write_config(config, address=address, subdir=d)
        tq = merged["temporal"]["task_queue"] if merged else None
        tp = Tprefork(path, d, tq, args=args, env=env, config=merged, wrap=wrap)
        self.handles.append(tp)
        if wait_ready:
            tp.wait_ready(ready_timeout)
        return tp

    def check(self, config: dict | str | Path, name: str = "check.conf") -> tuple[int, str, str, Path]:
        """tprefork -t on a config (dict, text, or an existing path): (returncode, stderr, stdout, path)."""
        if isinstance(config, Path):
            path = config
        else:
            path, _ = self.write_config(config, name=name)
        rc, err, out = check_config(path)
        return rc, err, out, path

    def teardown(self) -> list[str]:
        problems: list[str] = []
        for tp in self.handles:
            problems += tp.teardown()
        return problems
