"""Workflows the integration tests run on the Python workflow worker of the harness.

RunActivities calls activities by name on tprefork's task queue, all specs concurrently, and returns
one outcome per spec, so a test sees exactly what a Temporal workflow sees: the result, or the failure
(ActivityError and its cause) with type, message, non_retryable flag and details.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    FailureError,
    TimeoutError,
)

WORKFLOW_TASK_QUEUE = "tprefork-tests-wf"


def _seconds(value: Any) -> timedelta | None:
    return None if value is None else timedelta(seconds=float(value))


def describe_failure(exc: BaseException | None) -> dict | None:
    """A JSON-able description of a failure and of its causes."""
    if exc is None:
        return None
    d: dict[str, Any] = {"kind": type(exc).__name__, "message": getattr(exc, "message", str(exc))}
    if isinstance(exc, ApplicationError):
        d.update(type=exc.type, non_retryable=exc.non_retryable, details=list(exc.details))
    elif isinstance(exc, TimeoutError):
        d.update(
            timeout_type=exc.type.name if exc.type is not None else None,
            last_heartbeat_details=list(exc.last_heartbeat_details),
        )
    elif isinstance(exc, CancelledError):
        d.update(details=list(exc.details))
    if isinstance(exc, FailureError) and exc.cause is not None:
        d["cause"] = describe_failure(exc.cause)
    return d


def describe_activity_error(e: ActivityError) -> dict:
    """{"kind": "ActivityError", "cause_type": ..., "message": ..., "non_retryable": ..., "details": [...],
    "retry_state": ..., "cause": {full description of the cause chain}}.

    cause_type/message/non_retryable/details are the cause's when it is an ApplicationError; for a
    TimeoutError cause_type is "Timeout:<TIMEOUT_TYPE>", for a CancelledError "Cancelled".
    """
    cause = e.cause
    out: dict[str, Any] = {
        "kind": "ActivityError",
        "activity_type": e.activity_type,
        "activity_id": e.activity_id,
        "identity": e.identity,
        "retry_state": e.retry_state.name if e.retry_state is not None else None,
        "cause_type": None,
        "message": None,
        "non_retryable": None,
        "details": [],
        "cause": describe_failure(cause),
    }
    if isinstance(cause, ApplicationError):
        out.update(
            cause_type=cause.type,
            message=cause.message,
            non_retryable=cause.non_retryable,
            details=list(cause.details),
        )
    elif isinstance(cause, TimeoutError):
        out.update(
            cause_type="Timeout:" + (cause.type.name if cause.type is not None else "UNKNOWN"),
            message=cause.message,
        )
    elif isinstance(cause, CancelledError):
        out.update(cause_type="Cancelled", message=cause.message, details=list(cause.details))
    elif cause is not None:
        out.update(cause_type=type(cause).__name__, message=str(cause))
    return out


@workflow.defn(name="RunActivities")
class RunActivities:
    """Input: a list of specs, each a dict:
    type, args (list), task_queue, start_to_close_s (default 30 unless schedule_to_close_s is given),
    schedule_to_close_s (opt),
    heartbeat_timeout_s (opt), max_attempts (opt, 0 = unlimited), initial_interval_s (opt, default 1),
    backoff_coefficient (opt, default 2), maximum_interval_s (opt), non_retryable_error_types (opt),
    activity_id (opt).
    Output: per spec {"ok": result} or {"error": describe_activity_error(...)}.
    """

    @workflow.run
    async def run(self, specs: list[dict]) -> list[dict]:
        return list(await asyncio.gather(*(self._one(s) for s in specs)))

    async def _one(self, s: dict) -> dict:
        retry = RetryPolicy(
            initial_interval=_seconds(s.get("initial_interval_s", 1)),
            backoff_coefficient=float(s.get("backoff_coefficient", 2.0)),
            maximum_interval=_seconds(s.get("maximum_interval_s")),
            maximum_attempts=int(s.get("max_attempts", 0)),
            non_retryable_error_types=s.get("non_retryable_error_types"),
        )
        try:
            result = await workflow.execute_activity(
                s["type"],
                args=list(s.get("args", [])),
                task_queue=s["task_queue"],
                start_to_close_timeout=_seconds(
                    s.get("start_to_close_s", None if "schedule_to_close_s" in s else 30)
                ),
                schedule_to_close_timeout=_seconds(s.get("schedule_to_close_s")),
                heartbeat_timeout=_seconds(s.get("heartbeat_timeout_s")),
                retry_policy=retry,
                activity_id=s.get("activity_id"),
            )
        except ActivityError as e:
            return {"error": describe_activity_error(e)}
        return {"ok": result}
