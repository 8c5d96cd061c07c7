#!/usr/bin/env python3
"""Call tprefork's example activities from a Temporal workflow.

Start the dev server and tprefork with `scripts/run.sh` in one terminal, then in another:

    .venv/bin/python scripts/demo.py [--address 127.0.0.1:7233] [--text "hello"]

This process runs the workflow (on its own worker, task queue "tprefork-demo"); the workflow calls the
activities Echo, Sum and Upper by name on task queue "tprefork", where tprefork runs them as the commands
in examples/exec/.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

DEMO_TASK_QUEUE = "tprefork-demo"
ACTIVITY_TASK_QUEUE = "tprefork"


@workflow.defn(name="TpreforkDemo")
class TpreforkDemo:
    @workflow.run
    async def run(self, text: str) -> dict:
        opts = dict(
            task_queue=ACTIVITY_TASK_QUEUE,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        echo, total, upper = await asyncio.gather(
            workflow.execute_activity("Echo", text, **opts),
            workflow.execute_activity("Sum", args=[1, 2, [3, 4.5]], **opts),
            workflow.execute_activity("Upper", text, **opts),
        )
        return {"Echo": echo, "Sum": total, "Upper": upper}


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--address", default="127.0.0.1:7233")
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--text", default="hello from tprefork")
    ap.add_argument("--timeout", type=float, default=60, help="seconds to wait for the workflow")
    a = ap.parse_args()

    try:
        client = await Client.connect(a.address, namespace=a.namespace)
    except Exception as e:
        print(f"cannot connect to Temporal at {a.address}: {e}\nis scripts/run.sh running?", file=sys.stderr)
        return 1

    async with Worker(client, task_queue=DEMO_TASK_QUEUE, workflows=[TpreforkDemo],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        try:
            result = await client.execute_workflow(
                "TpreforkDemo", a.text, id=f"tprefork-demo-{uuid.uuid4()}", task_queue=DEMO_TASK_QUEUE,
                execution_timeout=timedelta(seconds=a.timeout))
        except Exception as e:
            print(f"workflow failed: {e!r} (cause: {e.__cause__!r})\n"
                  f"is tprefork running and polling task queue {ACTIVITY_TASK_QUEUE!r}?", file=sys.stderr)
            return 1
    for name, value in result.items():
        print(f"{name:6} -> {value!r}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
