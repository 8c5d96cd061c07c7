"""Sleeps, for lifecycle tests. stdin: [seconds, options] where options may hold
  "ignore_term": true   ignore SIGTERM (a straggler that only SIGKILL ends)
  "fast_retry": true    on attempt 2 and later, return at once
Before sleeping it records its start as MARKER_DIR/<activity id>.<attempt>.start (with the time),
and after finishing MARKER_DIR/<activity id>.<attempt>.done. Result: {"attempt": N, "slept": s}."""
import json
import os
import signal
import sys
import time

args = json.load(sys.stdin)
seconds = float(args[0]) if args else 1.0
opts = args[1] if len(args) > 1 else {}
attempt = int(os.environ["TEMPORAL_ATTEMPT"])
marker_dir = os.environ.get("MARKER_DIR")
name = f"{os.environ['TEMPORAL_ACTIVITY_ID']}.{attempt}"


def mark(what: str) -> None:
    if marker_dir:
        path = os.path.join(marker_dir, f"{name}.{what}")
        with open(path + ".tmp", "w") as f:
            f.write(f"{time.time()} {os.getpid()}\n")
        os.rename(path + ".tmp", path)


if opts.get("ignore_term"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
mark("start")
if not (opts.get("fast_retry") and attempt > 1):
    time.sleep(seconds)
mark("done")
json.dump({"attempt": attempt, "slept": seconds}, sys.stdout)
