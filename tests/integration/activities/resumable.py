#!/usr/bin/env python3
"""[steps, step_s]: counts steps, heartbeating {"done": n} after each; a retried attempt resumes from
TEMPORAL_HEARTBEAT_DETAILS. MARKER_DIR/<activity id>.<attempt>.pid holds its pid, and
MARKER_DIR/<activity id>.<attempt>.done the last n it heartbeated.
Result: {"attempt": A, "resumed_from": N, "steps": steps}."""
import json
import os
import sys
import time

steps, step_s = json.load(sys.stdin)
marker_dir = os.environ["MARKER_DIR"]
attempt = int(os.environ["TEMPORAL_ATTEMPT"])
base = os.path.join(marker_dir, f"{os.environ['TEMPORAL_ACTIVITY_ID']}.{attempt}")
details = json.loads(os.environ.get("TEMPORAL_HEARTBEAT_DETAILS", "null"))
start = details["done"] if isinstance(details, dict) else 0
with open(base + ".pid", "w") as f:
    f.write(f"{os.getpid()}\n")
rec = os.fdopen(3, "w", buffering=1)
for done in range(start + 1, steps + 1):
    time.sleep(step_s)
    rec.write(json.dumps({"heartbeat": {"done": done}}) + "\n")
    with open(base + ".done.tmp", "w") as f:
        f.write(f"{done}\n")
    os.rename(base + ".done.tmp", base + ".done")
json.dump({"attempt": attempt, "resumed_from": start, "steps": steps}, sys.stdout)
