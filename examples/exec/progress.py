#!/usr/bin/env python3
"""Progress: a long activity that heartbeats its progress and resumes from it after a retry.

Arguments: [steps, step_seconds]. Each step sleeps step_seconds (the "work") and then records
{"heartbeat": {"done": N}} on fd 3. tprefork sends the newest details with each (throttled) heartbeat;
when an attempt fails or its worker dies, the next attempt finds them in TEMPORAL_HEARTBEAT_DETAILS
and starts from there. On SIGTERM (a cancellation, or the worker shutting down) it stops at once.

Result: {"steps": steps, "resumed_from": N, "attempt": A}.
"""
import json
import os
import signal
import sys
import time


def main():
    steps, step_seconds = json.load(sys.stdin)
    details = json.loads(os.environ.get("TEMPORAL_HEARTBEAT_DETAILS", "null"))
    start = details.get("done", 0) if isinstance(details, dict) else 0
    # Exit on SIGTERM with the conventional status; tprefork reports the cancellation itself.
    signal.signal(signal.SIGTERM, lambda signo, frame: sys.exit(128 + signo))
    records = os.fdopen(3, "w", buffering=1)
    for done in range(start + 1, steps + 1):
        time.sleep(step_seconds)
        records.write(json.dumps({"heartbeat": {"done": done}}) + "\n")
    json.dump({"steps": steps, "resumed_from": start,
               "attempt": int(os.environ["TEMPORAL_ATTEMPT"])}, sys.stdout)


main()
