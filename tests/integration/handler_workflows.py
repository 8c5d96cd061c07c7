"""Workflows of the handler tests (test_handlers.py).

CancelOne starts one activity on tprefork's task queue and waits for it, or for the signal "cancel",
on which it cancels the activity (WAIT_CANCELLATION_COMPLETED: the workflow waits until the worker
has reported the cancellation) and returns the outcome: {"ok": result} or {"error": {...}} as
workflows.RunActivities does (a cancellation shows as cause_type "Cancelled").

WithBytes runs one activity whose arguments may include bytes, which a workflow's JSON input cannot
carry: an argument {"bytes_hex": "..."} becomes those bytes (a binary/plain payload).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError
from temporalio.workflow import ActivityCancellationType

from workflows import describe_activity_error

HANDLERS_WF_TASK_QUEUE = "tprefork-tests-handlers-wf"


@workflow.defn(name="CancelOne")
class CancelOne:
    """Input: {type, args, task_queue, start_to_close_s, heartbeat_timeout_s, max_attempts (default 1),
    activity_id}."""

    def __init__(self) -> None:
        self._cancel = False

    @workflow.signal
    def cancel(self) -> None:
        self._cancel = True

    @workflow.run
    async def run(self, s: dict) -> dict:
        handle = workflow.start_activity(
            s["type"],
            args=list(s.get("args", [])),
            task_queue=s["task_queue"],
            start_to_close_timeout=timedelta(seconds=float(s.get("start_to_close_s", 60))),
            heartbeat_timeout=(timedelta(seconds=float(s["heartbeat_timeout_s"]))
                               if s.get("heartbeat_timeout_s") else None),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1),
                                     maximum_attempts=int(s.get("max_attempts", 1))),
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            activity_id=s.get("activity_id"),
        )
        await workflow.wait_condition(lambda: self._cancel or handle.done())
        if not handle.done():
            handle.cancel()
        try:
            return {"ok": await handle}
        except ActivityError as e:
            return {"error": describe_activity_error(e)}


@workflow.defn(name="WithBytes")
class WithBytes:
    """Input: {type, args, task_queue, max_attempts (default 1)}."""

    @workflow.run
    async def run(self, s: dict) -> dict:
        args = [bytes.fromhex(a["bytes_hex"]) if isinstance(a, dict) and "bytes_hex" in a else a
                for a in s.get("args", [])]
        try:
            return {"ok": await workflow.execute_activity(
                s["type"], args=args, task_queue=s["task_queue"],
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=int(s.get("max_attempts", 1))))}
        except ActivityError as e:
            return {"error": describe_activity_error(e)}
