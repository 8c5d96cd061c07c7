"""The side-by-side benchmark of tprefork and the Temporal Go and Python SDK workers.

Run it through bench/run.sh, which builds what it needs and passes its arguments here:

    bench/run.sh [--quick] [--reps N] [--workers a,b,...] [--phases p,q] [--out FILE] ...
    bench.py --resummarize RESULT.json     recompute the summary and the table of a saved run

A fresh dev server for every throughput and latency run, one per repetition and server mode for the
stops (in-memory SQLite, rate limits raised, one task-queue partition), one load driver (bench/driver,
standalone activities started with StartActivityExecution), and one worker under test at a time, on a
task queue of its own. Each throughput and latency run first waits for the machine to be idle. Workers,
in an order rotated every repetition:

    tprefork-plugin   tprefork, 2 children x 50 slots x 4 polls, no-op C plugin (bench/plugins/bench.c)
    tprefork-plugin-inline
                      the plugin variant with the function run on the child's loop thread
                      (activities: inline = true; docs/handlers.md "Inline functions"; not in
                      --quick unless named)
    tprefork-exec     the same with a no-op command (/bin/true)
    tprefork-plugin-nojournal
                      the plugin variant with journal.enabled = false (throughput phase only; not in
                      --quick unless named)
    go                Go SDK worker (bench/peers/go), 100 slots, 8 pollers
    python            Python SDK worker (bench/peers/python), 100 slots, 8 pollers
    go-defaults       the Go SDK worker at its defaults (throughput phase, first repetition only)
    python-defaults   the Python SDK worker at its defaults (likewise)

Phases (methodology: ../shared/docs/benchmark.md of the project's shared notes):

  1. throughput  closed loop (about 100 activities outstanding) for warm-up + window; over the window:
                 completed activities/s (visibility count), worker-tree CPU per 1000 activities (sum of
                 utime+stime+cutime+cstime of every process of the tree, /proc/<pid>/stat), server and
                 driver CPU per 1000, memory (VmRSS, VmHWM, Pss of every process) idle and under load,
                 activities lost (started but not completed once the load stops).
  2. latency     open loop at a fixed rate (half the lowest maximum throughput among the parity
                 workers of phase 1); schedule-to-start = last_started_time - schedule_time of every
                 measured activity (DescribeActivityExecution), p50/p99.
  3. shutdown    SIGTERM-to-exit latency, idle and with 20 two-second activities in flight, against a
                 server without and with frontend.enableCancelWorkerPollsOnShutdown=true; lost
                 activities.

Ratios tprefork / peer: for throughput, CPU and schedule-to-start the median of the per-repetition
ratios; for memory and stop latency the ratio of the medians. Writes bench/results/<UTC time>[-quick].json
(every measurement, the machine, the versions) and a Markdown table next to it, and prints the table.
Environment: BENCH_TPREFORK_LOG_LEVEL (tprefork's log level, default warn; logs stay in the work
directory), BENCH_EXTRA_DYNAMIC_CONFIG (more KEY=VALUE settings for the dev servers).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    CountActivityExecutionsRequest,
    DescribeNamespaceRequest,
    DescribeTaskQueueRequest,
    GetSystemInfoRequest,
)
from temporalio.client import Client

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

TOTAL_SLOTS = 100
TOTAL_POLLS = 8
TP_CHILDREN = 2
STOP_TIMEOUT_S = 10
SLEEP_MS = 2000
INFLIGHT_K = 20


def log(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---- /proc ----------------------------------------------------------------------------------------


def read_stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, cpu ticks incl. reaped children, comm) of pid, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    l, r = data.find("("), data.rfind(")")
    f = data[r + 2:].split()
    # fields 14-17: utime stime cutime cstime. cutime/cstime hold the processes this one reaped
    # (the exec variant's commands), so the sum over the live tree counts every process once.
    ticks = int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return int(f[1]), ticks, data[l + 1:r]


def proc_tree(root: int) -> list[int]:
    """root and every live descendant."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = read_stat(int(name))
        if st:
            children.setdefault(st[0], []).append(int(name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu_s(root: int) -> float:
    return sum(tree_cpu_by_pid(root).values())


def tree_cpu_by_pid(root: int) -> dict[int, float]:
    out = {}
    for pid in proc_tree(root):
        st = read_stat(pid)
        if st:
            out[pid] = st[1] / HZ
    return out


async def wait_quiet(limit_cores: float, max_wait: float) -> dict[str, float]:
    """Wait (at most max_wait s) until the whole machine is nearly idle: other users' load spoils a
    measurement. Returns the wait and the last busy reading (cores)."""
    t0 = time.monotonic()
    while True:
        b0 = cpu_busy_s()
        await asyncio.sleep(1.0)
        busy = cpu_busy_s() - b0
        if busy <= limit_cores or time.monotonic() - t0 >= max_wait:
            return {"waited_s": round(time.monotonic() - t0, 1), "busy_cores": round(busy, 2)}


def cpu_busy_s() -> float:
    """Busy CPU seconds of the whole machine (all cores) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / HZ


def proc_mem(pid: int) -> dict[str, Any] | None:
    m: dict[str, Any] = {"pid": pid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k == "Name":
                    m["comm"] = v.strip()
                elif k in ("VmRSS", "VmHWM"):
                    m[k.lower() + "_kb"] = int(v.split()[0])
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    m["pss_kb"] = int(line.split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            m["cmd"] = f.read().split(b"\0")[0].decode(errors="replace").rsplit("/", 1)[-1]
    except OSError:
        return None
    return m if "vmrss_kb" in m else None


def tree_mem(root: int) -> dict[str, Any]:
    procs = [m for m in (proc_mem(p) for p in proc_tree(root)) if m]
    for m in procs:
        m["role"] = "root" if m["pid"] == root else "child"
    return {
        "procs": procs,
        "rss_kb": sum(m.get("vmrss_kb", 0) for m in procs),
        "pss_kb": sum(m.get("pss_kb", 0) for m in procs),
    }


# ---- the dev server ------------------------------------------------------------------------------

TUNING = [*[kv for kv in os.environ.get("BENCH_EXTRA_DYNAMIC_CONFIG", "").split() if kv],
    "frontend.rps=100000",
    "frontend.namespaceRPS=100000",
    "frontend.namespaceRPS.visibility=100000",
    "matching.rps=100000",
    "history.rps=100000",
    "matching.persistenceMaxQPS=100000",
    "matching.numTaskqueueReadPartitions=1",
    "matching.numTaskqueueWritePartitions=1",
]


class Server:
    def __init__(self, cli: str, workdir: Path, capability: bool) -> None:
        self.cli, self.workdir, self.capability = cli, workdir, capability
        self.proc: subprocess.Popen | None = None
        self.port = self.metrics_port = 0
        self.client: Client | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        a = [self.cli, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(self.port),
             "--metrics-port", str(self.metrics_port), "--log-level", "warn"]
        for kv in TUNING + (["frontend.enableCancelWorkerPollsOnShutdown=true"] if self.capability else []):
            a += ["--dynamic-config-value", kv]
        return a

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self.port, self.metrics_port = free_port(), free_port()
            logf = open(self.workdir / "temporal.log", "ab")
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True, cwd=self.workdir)
            logf.close()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    c = await asyncio.wait_for(Client.connect(self.address, namespace="default"), 5)
                    await asyncio.wait_for(c.workflow_service.get_system_info(GetSystemInfoRequest()), 5)
                    await asyncio.wait_for(c.workflow_service.describe_namespace(
                        DescribeNamespaceRequest(namespace="default")), 5)
                    self.client = c
                    return
                except Exception:
                    await asyncio.sleep(0.2)
            self.stop()
        raise RuntimeError(f"the dev server did not start (log: {self.workdir / 'temporal.log'})")

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None

    def metrics(self) -> dict[str, float]:
        """Counters of the server's Prometheus endpoint the report uses: requests by operation
        (frontend and persistence) and the total persistence and visibility-store latency."""
        out: dict[str, float] = {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
                text = r.read().decode(errors="replace")
        except OSError:
            return out
        rx = re.compile(r'^(service_requests|persistence_requests|persistence_latency_sum|'
                        r'visibility_persistence_latency_sum|'
                        r'service_errors_resource_exhausted)\{([^}]*)\} ([0-9.eE+-]+)$')
        for line in text.splitlines():
            m = rx.match(line)
            if not m:
                continue
            name, labels, v = m.groups()
            op = re.search(r'operation="([^"]*)"', labels)
            key = f"{name}:{op.group(1) if op else ''}"
            if name == "service_requests" and 'service_name="frontend"' not in labels:
                continue
            out[key] = out.get(key, 0.0) + float(v)
        return out

    async def count(self, query: str) -> int:
        r = await self.client.workflow_service.count_activity_executions(
            CountActivityExecutionsRequest(namespace="default", query=query))
        return r.count

    async def pollers(self, tq: str) -> set[str]:
        r = await self.client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
            namespace="default", task_queue=TaskQueue(name=tq),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY))
        return {p.identity for p in r.pollers}


# ---- workers under test --------------------------------------------------------------------------


@dataclass
class Spec:
    name: str
    kind: str               # tprefork | go | python
    variant: str = ""       # plugin | exec (tprefork)
    defaults: bool = False
    identities: int = 1     # pollers (distinct identities) that mean "ready"
    journal: bool = True    # tprefork: the master's journal (default on, synchronous = full)
    inline: bool = False    # tprefork plugin: run the function on the loop thread
    in_quick: bool = True   # part of --quick unless named
    extra: bool = False     # a variant for the throughput phase only


SPECS = {
    "tprefork-plugin": Spec("tprefork-plugin", "tprefork", "plugin", identities=TP_CHILDREN),
    "tprefork-plugin-inline": Spec("tprefork-plugin-inline", "tprefork", "plugin", identities=TP_CHILDREN,
                                   inline=True, in_quick=False),
    "tprefork-exec": Spec("tprefork-exec", "tprefork", "exec", identities=TP_CHILDREN),
    "tprefork-plugin-nojournal": Spec("tprefork-plugin-nojournal", "tprefork", "plugin", identities=TP_CHILDREN,
                                      journal=False, extra=True),
    "go": Spec("go", "go"),
    "python": Spec("python", "python"),
    "go-defaults": Spec("go-defaults", "go", defaults=True),
    "python-defaults": Spec("python-defaults", "python", defaults=True),
}


@dataclass
class Tools:
    tprefork: str
    plugin: str | None
    go_worker: str
    driver: str
    python: str
    cli: str


def tprefork_config(spec: Spec, tools: Tools, address: str, tq: str, wd: Path) -> str:
    if spec.variant == "plugin":
        plugins = f'plugins = ( "{tools.plugin}" );\n'
        acts = (f'  {{ type = "Noop"; plugin = "bench"; function = "noop";{" inline = true;" if spec.inline else ""} }},\n'
                '  { type = "Sleep"; plugin = "bench"; function = "sleep"; }\n')
    else:
        plugins = ""
        acts = ('  { type = "Noop"; exec = [ "/bin/true" ]; },\n'
                f'  {{ type = "Sleep"; exec = [ "/bin/sleep", "{SLEEP_MS / 1000:g}" ]; }}\n')
    return (f'temporal = {{ address = "{address}"; namespace = "default"; task_queue = "{tq}"; }};\n'
            f"workers = {{ count = {TP_CHILDREN}; max_concurrent_activities = {TOTAL_SLOTS // TP_CHILDREN}; "
            f"pollers = {TOTAL_POLLS // TP_CHILDREN}; shutdown_timeout = {STOP_TIMEOUT_S}; cancel_grace = 2; }};\n"
            f'log = {{ level = "{os.environ.get("BENCH_TPREFORK_LOG_LEVEL", "warn")}"; }};\n'
            f'journal = {{ path = "{wd}/journal.db";{"" if spec.journal else " enabled = false;"} }};\n'
            f'pidfile = "{wd}/tprefork.pid";\n'
            f"{plugins}activities = (\n{acts});\n")


class Worker:
    def __init__(self, spec: Spec, tools: Tools, server: Server, wd: Path) -> None:
        self.spec, self.server, self.wd = spec, server, wd
        self.tq = f"{spec.name}-{uuid.uuid4().hex[:10]}"
        wd.mkdir(parents=True, exist_ok=True)
        if spec.kind == "tprefork":
            conf = wd / "tprefork.conf"
            conf.write_text(tprefork_config(spec, tools, server.address, self.tq, wd))
            argv = [tools.tprefork, "-c", str(conf)]
        elif spec.kind == "go":
            argv = [tools.go_worker, "-address", server.address, "-task-queue", self.tq]
            argv += ["-defaults"] if spec.defaults else [
                "-slots", str(TOTAL_SLOTS), "-pollers", str(TOTAL_POLLS), "-stop-timeout", f"{STOP_TIMEOUT_S}s"]
        else:
            argv = [tools.python, str(BENCH / "peers" / "python" / "worker.py"), "--address", server.address,
                    "--task-queue", self.tq]
            argv += ["--defaults"] if spec.defaults else [
                "--slots", str(TOTAL_SLOTS), "--pollers", str(TOTAL_POLLS), "--stop-timeout", str(STOP_TIMEOUT_S)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
        self.logf = open(wd / "worker.log", "ab")
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=wd, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_ready(self, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited ({self.proc.returncode}) during start-up; "
                                   f"log: {self.wd / 'worker.log'}")
            try:
                if len(await self.server.pollers(self.tq)) >= self.spec.identities:
                    return time.monotonic() - self.t_start
            except Exception:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.spec.name} not polling after {timeout:g} s; log: {self.wd / 'worker.log'}")

    def stop(self, timeout: float = 30) -> dict[str, Any]:
        """SIGTERM and wait: the seconds to exit (None if it had to be killed) and the exit status."""
        t0 = time.monotonic()
        sent = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
            took: float | None = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            took, rc = None, None
        try:
            os.killpg(self.pid, signal.SIGKILL)   # anything left of its session
        except ProcessLookupError:
            pass
        if rc is None:
            rc = self.proc.wait(10)
        self.logf.close()
        return {"exit_s": took, "status": rc, "sigterm_utc": sent}


def driver_argv(tools: Tools, server: Server, mode: str, tq: str, prefix: str, *extra: str) -> list[str]:
    return [tools.driver, mode, "-address", server.address, "-task-queue", tq, "-prefix", prefix, *extra]


def run_driver(argv: list[str], timeout: float) -> dict[str, Any]:
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"driver failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- phases ----------------------------------------------------------------------------------------


@dataclass
class Params:
    reps: int
    idle_s: float
    warmup_s: float
    window_s: float
    s2s_warmup_s: float
    s2s_window_s: float
    inflight: int
    shutdown_idle_reps: int
    shutdown_inflight_reps: int
    quiet_cores: float = 0.35
    quiet_wait_s: float = 60


def snapshot(w: Worker, server: Server, driver_pid: int | None) -> dict[str, Any]:
    by_pid = tree_cpu_by_pid(w.pid)
    return {"t": time.monotonic(), "worker": sum(by_pid.values()), "worker_by_pid": by_pid,
            "server": tree_cpu_s(server.proc.pid),
            "driver": tree_cpu_s(driver_pid) if driver_pid else 0.0, "busy": cpu_busy_s()}


def cpu_by_role(w: Worker, s1: dict[str, Any], s2: dict[str, Any], n: int) -> dict[str, float]:
    """Worker CPU per 1000 activities of the root process and of its other processes (for tprefork:
    the master, and the children with the commands they reaped)."""
    root = s2["worker_by_pid"].get(w.pid, 0.0) - s1["worker_by_pid"].get(w.pid, 0.0)
    total = s2["worker"] - s1["worker"]
    return {"root_per_1k": root / n * 1000, "others_per_1k": (total - root) / n * 1000} if n > 0 else {}


async def phase_throughput(spec: Spec, tools: Tools, server: Server, wd: Path, p: Params) -> dict[str, Any]:
    quiet = await wait_quiet(p.quiet_cores, p.quiet_wait_s)
    w = Worker(spec, tools, server, wd)
    res: dict[str, Any] = {"phase": "throughput", "worker": spec.name, "task_queue": w.tq, "quiet": quiet}
    drv = None
    try:
        res["ready_s"] = await w.wait_ready()
        await asyncio.sleep(1.0)
        i0, t_i0 = tree_cpu_s(w.pid), time.monotonic()
        await asyncio.sleep(max(0.0, p.idle_s - 1.0))
        res["idle_cpu_cores"] = (tree_cpu_s(w.pid) - i0) / (time.monotonic() - t_i0)
        res["mem_idle"] = tree_mem(w.pid)
        prefix = f"t{uuid.uuid4().hex[:8]}"
        total = p.warmup_s + p.window_s
        drv = subprocess.Popen(driver_argv(tools, server, "closed", w.tq, prefix, "-inflight", str(p.inflight),
                                           "-duration", f"{total + 1:g}s"),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        q_done = f'TaskQueue = "{w.tq}" AND ExecutionStatus = "Completed"'
        await asyncio.sleep(p.warmup_s)
        m1 = server.metrics()
        s1 = snapshot(w, server, drv.pid)
        c1 = await server.count(q_done)
        peak = {"rss_kb": 0, "pss_kb": 0}
        while time.monotonic() < t0 + total:
            mem = tree_mem(w.pid)
            peak = {k: max(peak[k], mem[k]) for k in peak}
            await asyncio.sleep(min(2.0, max(0.05, t0 + total - time.monotonic())))
        s2 = snapshot(w, server, drv.pid)
        c2 = await server.count(q_done)
        m2 = server.metrics()
        mem = tree_mem(w.pid)
        res["mem_load"] = {**mem, "rss_kb_max": max(peak["rss_kb"], mem["rss_kb"]),
                           "pss_kb_max": max(peak["pss_kb"], mem["pss_kb"])}
        out, err = drv.communicate(timeout=60)
        d = json.loads(out.strip().splitlines()[-1]) if drv.returncode == 0 and out.strip() else {"error": err[-500:]}
        drv = None
        res["driver"] = d
        started = int(d.get("started", 0))
        # Drain: every activity the driver started must complete (bounded).
        deadline = time.monotonic() + 60
        done = await server.count(q_done)
        while done < started and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            done = await server.count(q_done)
        res["started"], res["completed"] = started, done
        res["lost"] = started - done
        res["not_completed_by_status"] = {
            s: await server.count(f'TaskQueue = "{w.tq}" AND ExecutionStatus = "{s}"')
            for s in ("Running", "Failed", "TimedOut", "Canceled", "Terminated")}
        dt_ = s2["t"] - s1["t"]
        n = c2 - c1
        res["window"] = {"seconds": dt_, "completed": n}
        res["throughput"] = n / dt_ if dt_ > 0 else None
        res["worker_cpu_by_role"] = cpu_by_role(w, s1, s2, n)
        for k in ("worker", "server", "driver"):
            res[f"{k}_cpu_s"] = s2[k] - s1[k]
            res[f"{k}_cpu_per_1k"] = (s2[k] - s1[k]) / n * 1000 if n > 0 else None
        other = (s2["busy"] - s1["busy"]) - sum(s2[k] - s1[k] for k in ("worker", "server", "driver"))
        res["other_cpu_cores"] = other / dt_ if dt_ > 0 else None
        res["machine_busy_cores"] = (s2["busy"] - s1["busy"]) / dt_ if dt_ > 0 else None
        # The CPU-bound ceiling (benchmark.md section 4, "physical limit"): the throughput a worker
        # costing nothing would reach if the server had every core that the driver and other users of
        # the machine leave (the server's CPU per activity as measured).
        if n > 0 and res["server_cpu_s"] > 0:
            free = NCPU - max(0.0, res["other_cpu_cores"] or 0.0) - res["driver_cpu_s"] / dt_
            res["ceiling_cpu"] = free / (res["server_cpu_s"] / n)
        else:
            res["ceiling_cpu"] = None
        if m1 and m2 and n > 0:
            delta = {k: m2.get(k, 0) - m1.get(k, 0) for k in m2}
            res["server_rpcs_per_activity"] = {
                k.split(":", 1)[1]: round(v / n, 3) for k, v in sorted(delta.items())
                if k.startswith("service_requests:") and v / n >= 0.01}
            res["persistence_s_per_activity"] = sum(
                v for k, v in delta.items() if k.startswith("persistence_latency_sum:")) / n
            # The dev server keeps its persistence and its visibility store in one in-memory SQLite
            # database behind one connection (one datastore; the sqlite plugin's MaxOpenConns 1), so
            # every store operation waits for that connection. The operations in the store layer on
            # average over the window (Little: total latency / time) show whether it is saturated:
            # at or above 1 it always has work queued, whatever the worker.
            store = sum(v for k, v in delta.items() if k.startswith(
                ("persistence_latency_sum:", "visibility_persistence_latency_sum:")))
            res["store_ops_in_flight"] = store / dt_ if dt_ > 0 else None
            res["resource_exhausted"] = sum(v for k, v in delta.items()
                                            if k.startswith("service_errors_resource_exhausted"))
    finally:
        if drv is not None:
            drv.kill()
            drv.wait()
        res["stop_after_load"] = w.stop()
    return res


async def phase_latency(spec: Spec, tools: Tools, server: Server, wd: Path, p: Params, rate: float) -> dict[str, Any]:
    quiet = await wait_quiet(p.quiet_cores, p.quiet_wait_s)
    w = Worker(spec, tools, server, wd)
    res: dict[str, Any] = {"phase": "latency", "worker": spec.name, "task_queue": w.tq, "rate": rate,
                           "quiet": quiet}
    try:
        res["ready_s"] = await w.wait_ready()
        await asyncio.sleep(min(p.idle_s, 2))
        s1 = snapshot(w, server, None)
        d = await asyncio.to_thread(run_driver, driver_argv(
            tools, server, "open", w.tq, f"l{uuid.uuid4().hex[:8]}", "-rate", f"{rate:.3f}",
            "-duration", f"{p.s2s_warmup_s + p.s2s_window_s:g}s", "-warmup", f"{p.s2s_warmup_s:g}s"),
            p.s2s_warmup_s + p.s2s_window_s + 180)
        s2 = snapshot(w, server, None)
        res["driver"] = d
        res["s2s_ms"] = d.get("s2s_ms")
        c = d.get("counts") or {}
        res["lost"] = int(d.get("started", 0)) - int(c.get("Completed", 0))
        n = int(c.get("Completed", 0))
        res["worker_cpu_per_1k"] = (s2["worker"] - s1["worker"]) / n * 1000 if n else None
    finally:
        res["stop_after_load"] = w.stop()
    return res


async def phase_shutdown(spec: Spec, tools: Tools, server: Server, wd: Path, inflight: bool) -> dict[str, Any]:
    w = Worker(spec, tools, server, wd)
    res: dict[str, Any] = {"phase": "shutdown", "worker": spec.name, "task_queue": w.tq,
                           "server_mode": "capability" if server.capability else "legacy",
                           "inflight": INFLIGHT_K if inflight else 0}
    try:
        res["ready_s"] = await w.wait_ready()
        await asyncio.sleep(1.0)   # every poll open
        prefix = f"s{uuid.uuid4().hex[:8]}"
        if inflight:
            d = await asyncio.to_thread(run_driver, driver_argv(
                tools, server, "start", w.tq, prefix, "-type", "Sleep", "-input", str(SLEEP_MS),
                "-n", str(INFLIGHT_K), "-wait-started", "-timeout", "20s"), 60)
            res["start"] = d
    finally:
        st = w.stop()
    res.update(st)
    if inflight:
        v = await asyncio.to_thread(run_driver, driver_argv(
            tools, server, "verify", w.tq, prefix, "-n", str(INFLIGHT_K), "-timeout", "5s"), 60)
        res["statuses"] = v.get("statuses", {})
        res["not_completed"] = v.get("not_completed") or []
        res["lost"] = INFLIGHT_K - int(res["statuses"].get("Completed", 0))
    else:
        res["lost"] = 0
    return res


# ---- summary ---------------------------------------------------------------------------------------


def mem_roles(mem: dict[str, Any], spec: Spec) -> dict[str, Any]:
    procs = mem.get("procs", [])
    out: dict[str, Any] = {"tree_rss_mib": mem["rss_kb"] / 1024, "tree_pss_mib": mem["pss_kb"] / 1024,
                           "procs": len(procs)}
    if spec.kind == "tprefork":
        kids = [m for m in procs if m["role"] == "child" and m.get("cmd", "").startswith("tprefork")]
        root = [m for m in procs if m["role"] == "root"]
        if kids:
            out["child_rss_mib"] = max(m["vmrss_kb"] for m in kids) / 1024
            out["child_hwm_mib"] = max(m.get("vmhwm_kb", 0) for m in kids) / 1024
        if root:
            out["master_rss_mib"] = root[0]["vmrss_kb"] / 1024
            out["master_hwm_mib"] = root[0].get("vmhwm_kb", 0) / 1024
    out["max_proc_rss_mib"] = max((m["vmrss_kb"] for m in procs), default=0) / 1024
    out["max_proc_hwm_mib"] = max((m.get("vmhwm_kb", 0) for m in procs), default=0) / 1024
    return out


def summarize(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    s: dict[str, dict[str, Any]] = {}
    for name in names:
        spec = SPECS[name]
        tr = [r for r in runs if r["worker"] == name and r["phase"] == "throughput" and "throughput" in r]
        la = [r for r in runs if r["worker"] == name and r["phase"] == "latency" and r.get("s2s_ms")]
        sh = [r for r in runs if r["worker"] == name and r["phase"] == "shutdown"]
        x: dict[str, Any] = {"runs": len(tr)}
        if tr:
            x["throughput"] = median([r["throughput"] for r in tr])
            x["throughput_min"] = min(r["throughput"] for r in tr)
            x["throughput_max"] = max(r["throughput"] for r in tr)
            for k in ("worker", "server", "driver"):
                x[f"{k}_cpu_per_1k"] = median([r[f"{k}_cpu_per_1k"] for r in tr])
            x["ceiling_cpu"] = median([r.get("ceiling_cpu") for r in tr])
            x["throughput_of_ceiling"] = median([r["throughput"] / r["ceiling_cpu"] for r in tr
                                                 if r.get("ceiling_cpu")])
            x["other_cpu_cores"] = median([r.get("other_cpu_cores") for r in tr])
            x["store_ops_in_flight"] = median([r.get("store_ops_in_flight") for r in tr])
            x["idle_cpu_pct"] = median([100 * r["idle_cpu_cores"] for r in tr if "idle_cpu_cores" in r])
            roles = [r["worker_cpu_by_role"] for r in tr if r.get("worker_cpu_by_role")]
            if roles and spec.kind == "tprefork":
                x["root_cpu_per_1k"] = median([q["root_per_1k"] for q in roles])
                x["others_cpu_per_1k"] = median([q["others_per_1k"] for q in roles])
            idle = [mem_roles(r["mem_idle"], spec) for r in tr if "mem_idle" in r]
            load = [mem_roles(r["mem_load"], spec) for r in tr if "mem_load" in r]
            for k in ("tree_rss_mib", "tree_pss_mib", "child_rss_mib", "master_rss_mib", "max_proc_rss_mib"):
                if idle and k in idle[0]:
                    x[f"idle_{k}"] = median([m[k] for m in idle])
            for r in tr:
                r.setdefault("mem_load", {}).setdefault("pss_kb_max", r["mem_load"].get("pss_kb", 0))
            if load:
                x["load_tree_pss_mib"] = median([r["mem_load"]["pss_kb_max"] / 1024 for r in tr])
                x["load_tree_rss_mib"] = median([r["mem_load"]["rss_kb_max"] / 1024 for r in tr])
                x["peak_proc_hwm_mib"] = max(m["max_proc_hwm_mib"] for m in load)
                if "child_hwm_mib" in load[0]:
                    x["peak_child_hwm_mib"] = max(m["child_hwm_mib"] for m in load)
                    x["peak_master_hwm_mib"] = max(m["master_hwm_mib"] for m in load)
            x["rpcs_per_activity"] = tr[-1].get("server_rpcs_per_activity")
        if la:
            x["s2s_rate"] = la[0]["rate"]
            x["s2s_p50_ms"] = median([r["s2s_ms"]["p50"] for r in la])
            x["s2s_p99_ms"] = median([r["s2s_ms"]["p99"] for r in la])
            x["s2s_max_ms"] = max(r["s2s_ms"]["max"] for r in la)
        for mode in ("legacy", "capability"):
            for kind, inflight in (("idle", False), ("inflight", True)):
                xs = [r for r in sh if r["server_mode"] == mode and bool(r["inflight"]) == inflight]
                if xs:
                    ex = [r["exit_s"] for r in xs if r["exit_s"] is not None]
                    x[f"stop_{kind}_{mode}_ms"] = median([e * 1000 for e in ex]) if ex else None
                    x[f"stop_{kind}_{mode}_max_ms"] = max(e * 1000 for e in ex) if ex else None
                    x[f"stop_{kind}_{mode}_killed"] = sum(1 for r in xs if r["exit_s"] is None)
        mine = [r for r in runs if r["worker"] == name]
        x["lost"] = sum(int(r.get("lost") or 0) for r in mine)
        x["lost_load"] = sum(int(r.get("lost") or 0) for r in mine if r["phase"] != "shutdown")
        for mode in ("legacy", "capability"):
            ms = [r for r in sh if r["server_mode"] == mode]
            if ms:
                x[f"lost_stop_{mode}"] = sum(int(r.get("lost") or 0) for r in ms)
                x[f"stops_{mode}"] = len(ms)
        x["started"] = sum(int(r.get("started") or 0) for r in mine)
        ex = [r["exit_s"] for r in sh if r.get("exit_s") is not None]
        if sh:
            x["stop_slowest_ms"] = max(ex) * 1000 if ex else None
            x["stops_killed"] = sum(1 for r in sh if r.get("exit_s") is None)
        s[name] = x
    return s


# Metrics measured in every repetition: their tprefork / peer ratios are taken per repetition (same
# machine state, benchmark.md section 4) and then the median of those; the others use the medians.
PAIRED = {"throughput": ("throughput", "throughput"),
          "worker_cpu_per_1k": ("throughput", "worker_cpu_per_1k"),
          "server_cpu_per_1k": ("throughput", "server_cpu_per_1k"),
          "s2s_p50_ms": ("latency", "p50"), "s2s_p99_ms": ("latency", "p99")}


def paired_ratio(runs: list[dict[str, Any]], a: str, b: str, key: str) -> float | None:
    phase, field = PAIRED[key]

    def val(r: dict[str, Any]) -> Any:
        return (r.get("s2s_ms") or {}).get(field) if phase == "latency" else r.get(field)

    per: list[float] = []
    for rep in sorted({r.get("rep") for r in runs if r["phase"] == phase}):
        va = [val(r) for r in runs if r["phase"] == phase and r.get("rep") == rep and r["worker"] == a]
        vb = [val(r) for r in runs if r["phase"] == phase and r.get("rep") == rep and r["worker"] == b]
        if va and vb and isinstance(va[0], (int, float)) and isinstance(vb[0], (int, float)) and vb[0]:
            per.append(va[0] / vb[0])
    return median(per) if per else None


def ratio(summary: dict[str, dict[str, Any]], runs: list[dict[str, Any]], a: str, b: str, key: str) -> float | None:
    if key in PAIRED:
        v = paired_ratio(runs, a, b, key)
        if v is not None:
            return v
    x, y = summary.get(a, {}).get(key), summary.get(b, {}).get(key)
    if key == "idle_child_rss_mib":
        y = summary.get(b, {}).get("idle_max_proc_rss_mib")
    return x / y if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y else None


ROWS = [
    ("throughput", "throughput (activities/s)", "{:.1f}"),
    ("worker_cpu_per_1k", "worker-tree CPU s / 1000 activities", "{:.3f}"),
    ("root_cpu_per_1k", "  tprefork master / 1000", "{:.3f}"),
    ("others_cpu_per_1k", "  tprefork children / 1000", "{:.3f}"),
    ("server_cpu_per_1k", "server CPU s / 1000 activities", "{:.2f}"),
    ("throughput_of_ceiling", "throughput / CPU-bound server ceiling", "{:.2f}"),
    ("store_ops_in_flight", "server store operations in flight (one SQLite connection)", "{:.1f}"),
    ("other_cpu_cores", "other users' load in the window (cores)", "{:.2f}"),
    ("idle_child_rss_mib", "idle RSS of one tprefork child (MiB)", "{:.1f}"),
    ("idle_max_proc_rss_mib", "idle RSS, largest process (MiB)", "{:.1f}"),
    ("idle_tree_pss_mib", "idle PSS, whole tree (MiB)", "{:.1f}"),
    ("load_tree_pss_mib", "PSS under load, whole tree (MiB)", "{:.1f}"),
    ("peak_proc_hwm_mib", "peak RSS (VmHWM), largest process (MiB)", "{:.1f}"),
    ("s2s_p50_ms", "schedule-to-start p50 (ms)", "{:.1f}"),
    ("s2s_p99_ms", "schedule-to-start p99 (ms)", "{:.1f}"),
    ("stop_idle_legacy_ms", "SIGTERM->exit idle, legacy server (ms)", "{:.0f}"),
    ("stop_idle_capability_ms", "SIGTERM->exit idle, capability server (ms)", "{:.0f}"),
    ("stop_inflight_legacy_ms", "SIGTERM->exit, 20 x 2 s in flight, legacy (ms)", "{:.0f}"),
    ("stop_inflight_capability_ms", "SIGTERM->exit, 20 x 2 s in flight, capability (ms)", "{:.0f}"),
    ("stop_slowest_ms", "slowest stop of all (ms)", "{:.0f}"),
    ("lost_load", "activities lost: throughput + latency phases", "{:d}"),
    ("lost_stop_legacy", "activities lost: stops, legacy server", "{:d}"),
    ("lost_stop_capability", "activities lost: stops, capability server", "{:d}"),
]


def fmt(v: Any, f: str) -> str:
    if v is None:
        return "-"
    try:
        return f.format(v)
    except (ValueError, TypeError):
        return str(v)


def headline(summary: dict[str, dict[str, Any]]) -> list[str]:
    """The tprefork variants the ratios and targets are given for."""
    tps = [n for n in ("tprefork-plugin", "tprefork-plugin-inline") if n in summary]
    return tps or (["tprefork-exec"] if "tprefork-exec" in summary else [])


def table(summary: dict[str, dict[str, Any]], names: list[str], runs: list[dict[str, Any]]) -> str:
    pairs = [(tp, peer) for tp in headline(summary) for peer in ("go", "python")]
    cols = names + [f"{tp} / {peer}" for tp, peer in pairs]
    lines = ["| metric | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for key, label, f in ROWS:
        row = [fmt(summary.get(n, {}).get(key), f) for n in names]
        for tp, peer in pairs:
            v = ratio(summary, runs, tp, peer, key) if not key.startswith(("lost", "stops", "other")) else None
            row.append(f"{v:.3f}" if v is not None else "-")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def targets(summary: dict[str, dict[str, Any]], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for tpn in headline(summary) for t in targets_of(summary, runs, tpn)]


def targets_of(summary: dict[str, dict[str, Any]], runs: list[dict[str, Any]], tpn: str) -> list[dict[str, Any]]:
    tp = summary.get(tpn, {})
    out = []

    def add(name: str, value: Any, limit: Any, ok: bool | None) -> None:
        out.append({"target": f"{name} ({tpn})", "value": value, "limit": limit, "met": ok})

    def r(key: str, peer: str) -> float | None:
        return ratio(summary, runs, tpn, peer, key)

    cg, cp = r("worker_cpu_per_1k", "go"), r("worker_cpu_per_1k", "python")
    add("worker CPU/1k <= 0.2 x Go", cg, 0.2, cg is not None and cg <= 0.2)
    add("worker CPU/1k <= 0.05 x Python", cp, 0.05, cp is not None and cp <= 0.05)
    tg = r("throughput", "go")
    add("throughput >= Go", tg, 1.0, tg is not None and tg >= 1.0)
    tc = tp.get("throughput_of_ceiling")
    add("throughput >= 0.9 x server-bound ceiling (CPU)", tc, 0.9, tc is not None and tc >= 0.9)
    rg = r("idle_child_rss_mib", "go")
    add("idle RSS of one child <= 0.25 x Go RSS", rg, 0.25, rg is not None and rg <= 0.25)
    gr = summary.get("go", {}).get("idle_max_proc_rss_mib")
    pg = tp.get("idle_tree_pss_mib") / gr if tp.get("idle_tree_pss_mib") and gr else None
    add("tree PSS (2 children) <= Go RSS", pg, 1.0, pg is not None and pg <= 1.0)
    sg = r("s2s_p99_ms", "go")
    add("s2s p99 at half load <= Go", sg, 1.0, sg is not None and sg <= 1.0)
    st = tp.get("stop_idle_capability_ms")
    add("idle stop with the server capability <= 100 ms", st, 100, st is not None and st <= 100)
    # tprefork's own: the SDK workers' losses are in the table, not a target of ours.
    lost = sum(v.get("lost", 0) for n, v in summary.items() if n.startswith("tprefork"))
    add("activities lost == 0 (every tprefork variant, every phase)", lost, 0, lost == 0)
    return out


# ---- machine and versions ---------------------------------------------------------------------------


def cmd_out(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info(tools: Tools) -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    gov = ""
    try:
        gov = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        gov = "n/a"
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    import temporalio
    gomod = (BENCH / "peers" / "go" / "go.mod").read_text()
    m = re.search(r"go\.temporal\.io/sdk (v[0-9.]+)", gomod)
    return {
        "machine": {"cpu": cpu, "nproc": NCPU, "mem_gib": round(mem_kb / 1024 / 1024, 1),
                    "kernel": platform.release(), "governor": gov, "loadavg_at_start": load},
        "versions": {
            "tprefork": cmd_out(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
            "tprefork_binary": tools.tprefork,
            "temporal_cli": cmd_out([tools.cli, "--version"]),
            "go_sdk": m.group(1) if m else "",
            "python_sdk": temporalio.__version__,
            "go": cmd_out(["go", "version"]),
            "python": platform.python_version(),
            "cc": cmd_out(["cc", "--version"]).splitlines()[0] if cmd_out(["cc", "--version"]) else "",
        },
    }


# ---- main -------------------------------------------------------------------------------------------


async def amain(a: argparse.Namespace) -> int:
    tools = Tools(tprefork=a.tprefork, plugin=a.plugin or None, go_worker=a.go_worker, driver=a.driver,
                  python=sys.executable, cli=a.temporal)
    names = [n.strip() for n in a.workers.split(",") if n.strip()] or [
        n for n in SPECS if not (a.quick and (SPECS[n].extra or not SPECS[n].in_quick))]
    for n in names:
        if n not in SPECS:
            raise SystemExit(f"unknown worker {n!r} (known: {', '.join(SPECS)})")
    if not tools.plugin:
        for nm in [nm for nm in names if SPECS[nm].variant == "plugin"]:
            log(f"no plugin build: {nm} left out")
            names.remove(nm)
    parity = [n for n in names if not SPECS[n].defaults and not SPECS[n].extra]
    extras = [n for n in names if SPECS[n].extra]
    defaults = [n for n in names if SPECS[n].defaults]
    if a.quick:
        p = Params(reps=a.reps or 1, idle_s=2, warmup_s=3, window_s=7, s2s_warmup_s=2, s2s_window_s=6,
                   inflight=100, shutdown_idle_reps=1, shutdown_inflight_reps=1, quiet_wait_s=5)
    else:
        p = Params(reps=a.reps or 3, idle_s=10, warmup_s=10, window_s=30, s2s_warmup_s=5, s2s_window_s=30,
                   inflight=100, shutdown_idle_reps=2, shutdown_inflight_reps=1)
    if a.inflight:
        p.inflight = a.inflight
    if a.window:
        p.window_s = p.s2s_window_s = a.window
    if a.warmup:
        p.warmup_s = a.warmup
    phases = set(x.strip() for x in a.phases.split(","))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(a.out) if a.out else BENCH / "results" / f"{stamp}{'-quick' if a.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(a.workdir or f"/tmp/tprefork-bench-{stamp}")
    t_begin = time.monotonic()
    info = machine_info(tools)
    log(f"{info['machine']['cpu']} x{NCPU}, {info['versions']['temporal_cli']}; workers: {', '.join(names)}; "
        f"{p.reps} repetition(s){' (quick)' if a.quick else ''}; work dir {work}")
    runs: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"command": " ".join(a.argv0), "quick": a.quick, "params": p.__dict__, **info,
                           "config": {"total_slots": TOTAL_SLOTS, "total_polls": TOTAL_POLLS,
                                      "tprefork_children": TP_CHILDREN, "stop_timeout_s": STOP_TIMEOUT_S,
                                      "server_tuning": TUNING, "workload": "standalone activities "
                                      "(StartActivityExecution), no input, start-to-close 60 s, 1 attempt"},
                           "runs": runs}

    def save() -> None:
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        tmp.replace(out)

    def order(rep: int, xs: list[str]) -> list[str]:
        k = rep % len(xs) if xs else 0
        return xs[k:] + xs[:k]

    n = 0

    async def with_server(tag: str, capability: bool, body) -> None:
        srv = Server(tools.cli, work / f"server-{tag}", capability=capability)
        await srv.start()
        try:
            await body(srv)
        finally:
            srv.stop()

    def record(r: dict[str, Any], rep: int) -> dict[str, Any]:
        r["rep"] = rep
        runs.append(r)
        save()
        return r

    # Phase 1: throughput, each run against a fresh server (identical server state for every worker).
    if "throughput" in phases:
        for rep in range(p.reps):
            for name in order(rep, parity + extras) + (defaults if rep == 0 else []):
                n += 1
                k = n

                async def body(srv: Server, name: str = name, k: int = k, rep: int = rep) -> None:
                    r = record(await phase_throughput(SPECS[name], tools, srv, work / f"r{k:03d}-{name}", p), rep)
                    log(f"throughput rep {rep} {name}: {fmt(r.get('throughput'), '{:.1f}')}/s, worker CPU "
                        f"{fmt(r.get('worker_cpu_per_1k'), '{:.3f}')} s/1k, server "
                        f"{fmt(r.get('server_cpu_per_1k'), '{:.2f}')} s/1k, other load "
                        f"{fmt(r.get('other_cpu_cores'), '{:.2f}')} cores, lost {r.get('lost')}")

                await with_server(f"t{k:03d}", False, body)

    summ = summarize(runs, names)
    maxes = [summ[nm]["throughput"] for nm in parity if summ.get(nm, {}).get("throughput")]
    rate = a.rate or (0.5 * min(maxes) if maxes else 20.0)
    doc["s2s_rate"] = rate

    # Phase 2: schedule-to-start at a fixed offered load, each run against a fresh server.
    if "latency" in phases:
        log(f"latency phase at {rate:.1f} activities/s (half the lowest maximum)")
        for rep in range(p.reps):
            for name in order(rep, parity):
                n += 1
                k = n

                async def body(srv: Server, name: str = name, k: int = k, rep: int = rep) -> None:
                    r = record(await phase_latency(SPECS[name], tools, srv, work / f"r{k:03d}-{name}", p, rate), rep)
                    s = r.get("s2s_ms") or {}
                    log(f"latency rep {rep} {name}: s2s p50 {fmt(s.get('p50'), '{:.1f}')} ms, p99 "
                        f"{fmt(s.get('p99'), '{:.1f}')} ms, lost {r.get('lost')}")

                await with_server(f"l{k:03d}", True, body)

    # Phase 3: stops, idle and with activities in flight, against one server per mode and repetition.
    if "shutdown" in phases:
        for rep in range(p.reps):
            for capability in (False, True):
                mode = "capability" if capability else "legacy"

                async def body(srv: Server, rep: int = rep, mode: str = mode) -> None:
                    nonlocal n
                    for name in order(rep, parity):
                        for inflight, cnt in ((False, p.shutdown_idle_reps), (True, p.shutdown_inflight_reps)):
                            for _ in range(cnt):
                                n += 1
                                r = record(await phase_shutdown(SPECS[name], tools, srv,
                                                                work / f"r{n:03d}-{name}", inflight), rep)
                                log(f"stop {mode} {'in flight' if inflight else 'idle'} {name}: "
                                    f"{fmt(r['exit_s'] and r['exit_s'] * 1000, '{:.0f}')} ms, lost {r['lost']}")

                await with_server(f"s{rep}-{mode}", capability, body)

    doc["duration_s"] = time.monotonic() - t_begin
    finish(doc, names, out)
    log(f"done in {doc['duration_s']:.0f} s; results: {out} and {out.with_suffix('.md')}")
    return 0


def finish(doc: dict[str, Any], names: list[str], out: Path) -> None:
    """Summary, ratios, targets and the Markdown table of a run; written into out (.json and .md)."""
    runs = doc["runs"]
    summ = summarize(runs, names)
    doc["summary"] = summ
    doc["targets"] = targets(summ, runs)
    doc["table"] = table(summ, names, runs)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(out)
    m, v = doc["machine"], doc["versions"]
    title = out.stem
    out.with_suffix(".md").write_text(
        f"# Benchmark {title}{' (quick)' if doc.get('quick') else ''}\n\n`{doc['command']}`\n\n"
        f"{m['cpu']} x{m['nproc']}, {m['mem_gib']} GiB, kernel {m['kernel']}; {v['temporal_cli']}; "
        f"Go SDK {v['go_sdk']}; Python SDK {v['python_sdk']}; tprefork {v['tprefork']}\n\n"
        f"{doc['table']}\n\nTargets:\n\n" +
        "\n".join(f"- {t['target']}: {fmt(t['value'], '{:.3f}')} -> {'met' if t['met'] else 'MISSED'}"
                  for t in doc["targets"]) + "\n")
    print()
    print(doc["table"])
    print()
    for t in doc["targets"]:
        print(f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {fmt(t['value'], '{:.3f}')}")


def resummarize(path: str) -> int:
    """Recompute the summary, ratios, targets and table of a saved result (the runs are kept)."""
    out = Path(path)
    doc = json.loads(out.read_text())
    seen = {r["worker"] for r in doc["runs"]}
    finish(doc, [n for n in SPECS if n in seen], out)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short windows, one repetition (under 5 minutes)")
    ap.add_argument("--reps", type=int, default=0, help="repetitions (default 3; quick: 1)")
    ap.add_argument("--workers", default="", help="comma-separated (default: all; quick: all but the "
                    "throughput-only variants and tprefork-plugin-inline)")
    ap.add_argument("--rate", type=float, default=0, help="latency phase rate (default: half the lowest max)")
    ap.add_argument("--inflight", type=int, default=0, help="throughput phase: activities kept outstanding")
    ap.add_argument("--window", type=float, default=0, help="throughput and latency measurement window, s")
    ap.add_argument("--warmup", type=float, default=0, help="throughput warm-up, s")
    ap.add_argument("--phases", default="throughput,latency,shutdown", help="phases to run")
    ap.add_argument("--out", help="result file (default bench/results/<time>.json)")
    ap.add_argument("--workdir", help="logs and configurations (default /tmp/tprefork-bench-<time>)")
    ap.add_argument("--resummarize", metavar="RESULT.json", help="only recompute the summary of a saved result")
    ap.add_argument("--tprefork")
    ap.add_argument("--plugin", default="")
    ap.add_argument("--go-worker")
    ap.add_argument("--driver")
    ap.add_argument("--temporal")
    ap.add_argument("--command", default="", help="the command line to record")
    a = ap.parse_args()
    if a.resummarize:
        return resummarize(a.resummarize)
    if not (a.tprefork and a.go_worker and a.driver and a.temporal):
        ap.error("--tprefork, --go-worker, --driver and --temporal are required (bench/run.sh passes them)")
    a.argv0 = [a.command] if a.command else sys.argv
    return asyncio.run(amain(a))


if __name__ == "__main__":
    sys.exit(main())
