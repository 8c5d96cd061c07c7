"""What the master's SQLite journal costs: the same load run against tprefork with the journal on
(journal.synchronous = full, the default) and off (journal.enabled = false), alternating in one run.

    .venv/bin/python bench/journal_cost.py [--activities 2000] [--rounds 3] [--workers 2] [--slots 16]
                                           [--sync full|normal|off] [--journal-dir DIR] [--bin PATH]

One in-memory dev server and the integration harness's workflow worker (tests/integration/helpers.py)
for the whole run; each round starts a fresh tprefork per mode (order alternating) on its own task
queue, runs `--activities` exec activities (/bin/cat: the input array back) as 20 concurrent
RunActivities workflows, and measures (the rate is bounded by the Python workflow side of the harness
and varies from round to round; the CPU figures are the stable ones):

  activities/s     activities completed / wall time from the first workflow start to the last result
  tree CPU / 1000  utime+stime (+cutime+cstime: the reaped activity commands) of the master and its
                   workers over the load, from /proc/<pid>/stat, per 1000 activities
  master CPU/1000  the master alone (it is the only process that touches the journal)
  master writes    write(2) calls and bytes of the master per 1000 activities (/proc/<pid>/io)

The medians over the rounds are printed as a table and one FIGURES line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from helpers import (AsyncRunner, DevServer, TemporalEnv, clean_env, proc_table,  # noqa: E402
                     to_libconfig, wait_until)
from workflows import WORKFLOW_TASK_QUEUE  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int, children: bool) -> float:
    """utime+stime (and cutime+cstime when children) of pid, in seconds; 0 if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    f = data[data.rfind(")") + 2:].split()
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / CLK_TCK


def io_counters(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            k, v = line.split(":")
            out[k] = int(v)
    except OSError:
        pass
    return out


def tree(master: int) -> list[int]:
    return [p.pid for p in proc_table().values() if p.ppid == master and p.state != "Z"]


def snapshot(master: int) -> dict[str, float]:
    kids = tree(master)
    io = io_counters(master)
    return {"master": cpu_s(master, False),
            "tree": cpu_s(master, False) + sum(cpu_s(k, True) for k in kids),
            "syscw": io.get("syscw", 0), "wchar": io.get("wchar", 0)}


def start_tprefork(workdir: Path, cfg: dict, binary: str) -> subprocess.Popen:
    path = workdir / "tprefork.conf"
    path.write_text(to_libconfig(cfg))
    log = open(workdir / "tprefork.log", "ab")
    return subprocess.Popen([binary, "-c", str(path)], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, env=clean_env(), cwd=workdir)


def wait_ready(workdir: Path, workers: int, timeout: float = 30) -> None:
    def ready() -> bool:
        text = (workdir / "tprefork.log").read_text(errors="replace")
        return text.count(": ready: ") >= workers
    wait_until(ready, timeout, "tprefork ready")


async def run_load(env: TemporalEnv, task_queue: str, n: int, nwf: int) -> float:
    per = n // nwf
    specs = [{"type": "Cat", "args": [i], "task_queue": task_queue, "start_to_close_s": 60,
              "max_attempts": 1} for i in range(per)]
    t0 = time.monotonic()
    handles = [await env.client.start_workflow("RunActivities", specs, id=f"jcost-{uuid.uuid4()}",
                                               task_queue=WORKFLOW_TASK_QUEUE,
                                               execution_timeout=timedelta(seconds=600))
               for _ in range(nwf)]
    results = await asyncio.gather(*(h.result() for h in handles))
    wall = time.monotonic() - t0
    bad = sum(1 for r in results for o in r if "ok" not in o)
    if bad:
        raise RuntimeError(f"{bad} activities failed")
    return wall


def one(env: TemporalEnv, args, mode: str, rnd: int, base: Path) -> dict[str, float]:
    workdir = base / f"{mode}-{rnd}"
    workdir.mkdir(parents=True)
    jdir = Path(args.journal_dir) if args.journal_dir else workdir
    tq = f"jcost-{mode}-{rnd}-{uuid.uuid4().hex[:6]}"
    cfg = {
        "temporal": {"address": env.address, "namespace": "default", "task_queue": tq},
        "workers": {"count": args.workers, "max_concurrent_activities": args.slots, "pollers": 4},
        "log": {"level": "info"},
        "journal": {"path": str(jdir / f"journal-{mode}-{rnd}.db"), "enabled": mode == "on",
                    "synchronous": args.sync},
        "pidfile": str(workdir / "tprefork.pid"),
        "activities": [{"type": "Cat", "exec": ["/bin/cat"]}],
    }
    p = start_tprefork(workdir, cfg, args.bin)
    try:
        wait_ready(workdir, args.workers)
        # Warm-up: connections open, first fork/exec paid.
        env.run(run_load(env, tq, 40, 4), 120)
        before = snapshot(p.pid)
        wall = env.run(run_load(env, tq, args.activities, 20), 600)
        after = snapshot(p.pid)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(60)
    k = args.activities / 1000
    return {"rate": args.activities / wall,
            "tree_ms": (after["tree"] - before["tree"]) * 1000 / k,
            "master_ms": (after["master"] - before["master"]) * 1000 / k,
            "syscw": (after["syscw"] - before["syscw"]) / k,
            "wkib": (after["wchar"] - before["wchar"]) / 1024 / k}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--activities", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--sync", default="full", choices=["full", "normal", "off"])
    ap.add_argument("--journal-dir", default=None, help="where the journal files go (default: the run's temp dir)")
    ap.add_argument("--bin", default=os.environ.get("TPREFORK_BIN") or str(REPO / "build" / "src" / "tprefork"))
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tprefork-journal-cost-"))
    runner = AsyncRunner()
    srv = DevServer(base / "server").start()
    env = TemporalEnv(srv, runner)
    res: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    try:
        for rnd in range(args.rounds):
            for mode in (("on", "off") if rnd % 2 == 0 else ("off", "on")):
                r = one(env, args, mode, rnd, base)
                res[mode].append(r)
                print(f"round {rnd} journal {mode:3}: {r['rate']:7.1f} act/s  tree {r['tree_ms']:7.1f} ms/1000  "
                      f"master {r['master_ms']:6.1f} ms/1000  master writes {r['syscw']:6.0f}/1000 "
                      f"({r['wkib']:.0f} KiB/1000)", flush=True)
    finally:
        env.close()
        runner.close()
    fs = subprocess.run(["stat", "-f", "-c", "%T", args.journal_dir or str(base)], capture_output=True,
                        text=True).stdout.strip()
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in res.items()}
    print(f"\n{args.activities} exec activities x {args.rounds} rounds, {args.workers} workers x {args.slots} "
          f"slots, synchronous={args.sync}, journal on {fs}; medians:\n")
    print("| journal | activities/s (min-max) | tree CPU ms / 1000 | master CPU ms / 1000 | "
          "master write(2) / 1000 |")
    print("|---|---|---|---|---|")
    for m in ("on", "off"):
        rates = [r["rate"] for r in res[m]]
        print(f"| {m} | {med[m]['rate']:.1f} ({min(rates):.0f}-{max(rates):.0f}) | {med[m]['tree_ms']:.0f} | "
              f"{med[m]['master_ms']:.0f} | {med[m]['syscw']:.0f} |")
    d_rate = (med["on"]["rate"] / med["off"]["rate"] - 1) * 100
    d_cpu = med["on"]["tree_ms"] - med["off"]["tree_ms"]
    print(f"\nFIGURES journal cost: on {med['on']['rate']:.1f} act/s vs off {med['off']['rate']:.1f} act/s "
          f"({d_rate:+.1f} %); tree CPU {med['on']['tree_ms']:.0f} vs {med['off']['tree_ms']:.0f} ms/1000 "
          f"({d_cpu:+.0f} ms/1000); master CPU {med['on']['master_ms']:.0f} vs {med['off']['master_ms']:.0f} "
          f"ms/1000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
