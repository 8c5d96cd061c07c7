"""The Python SDK peer of the benchmark: an activity-only worker with a no-op activity ("Noop") and a
sleeping one ("Sleep", for the shutdown measurements).

    worker.py --address 127.0.0.1:7233 --task-queue Q [--slots 100 --pollers 8 --stop-timeout 10]
    worker.py --address 127.0.0.1:7233 --task-queue Q --defaults

--defaults leaves every worker option at the SDK's default (5 pollers, 100 slots, graceful shutdown
timeout 0). SIGTERM or SIGINT shuts the worker down (the SDK installs no handler of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from datetime import timedelta

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import PollerBehaviorSimpleMaximum, Worker


@activity.defn(name="Noop")
async def noop() -> None:
    return None


@activity.defn(name="Sleep")
async def sleep(ms: int = 2000) -> None:
    await asyncio.sleep((ms if ms > 0 else 2000) / 1000)


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", default="127.0.0.1:7233")
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--task-queue", required=True)
    ap.add_argument("--slots", type=int, default=100)
    ap.add_argument("--pollers", type=int, default=8)
    ap.add_argument("--stop-timeout", type=float, default=10.0)
    ap.add_argument("--defaults", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    client = await Client.connect(a.address, namespace=a.namespace)
    kw: dict = {}
    if not a.defaults:
        kw = dict(max_concurrent_activities=a.slots,
                  activity_task_poller_behavior=PollerBehaviorSimpleMaximum(maximum=a.pollers),
                  graceful_shutdown_timeout=timedelta(seconds=a.stop_timeout))
    worker = Worker(client, task_queue=a.task_queue, activities=[noop, sleep], **kw)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    run = asyncio.create_task(worker.run())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([run, stopped], return_when=asyncio.FIRST_COMPLETED)
    if not run.done():
        await worker.shutdown()
    await run
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
