#!/usr/bin/env python3
"""Heartbeats {"beat": n} on fd 3 every HB_EVERY seconds (default 0.1) until SIGTERM, for at most
MAX_S seconds (default 120; then it returns "timeout").

MARKER_DIR/<activity id>.<attempt>.start holds "<pid>" once the first heartbeat is written;
MARKER_DIR/<activity id>.<attempt>.term holds "<unix time> <pid>" when SIGTERM arrives.
IGNORE_TERM=1: SIGTERM is recorded but otherwise ignored (a straggler only SIGKILL ends)."""
import json
import os
import signal
import sys
import time

marker_dir = os.environ["MARKER_DIR"]
name = f"{os.environ['TEMPORAL_ACTIVITY_ID']}.{os.environ['TEMPORAL_ATTEMPT']}"
every = float(os.environ.get("HB_EVERY", "0.1"))
ignore = os.environ.get("IGNORE_TERM") == "1"


def write(what: str, text: str) -> None:
    path = os.path.join(marker_dir, f"{name}.{what}")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def on_term(signo, frame):
    write("term", f"{time.time():.6f} {os.getpid()}\n")
    if not ignore:
        os._exit(143)


signal.signal(signal.SIGTERM, on_term)
rec = os.fdopen(3, "w", buffering=1)
deadline = time.monotonic() + float(os.environ.get("MAX_S", "120"))
n = 0
while time.monotonic() < deadline:
    rec.write(json.dumps({"heartbeat": {"beat": n}}) + "\n")
    if n == 0:
        write("start", f"{os.getpid()}\n")
    n += 1
    time.sleep(every)
json.dump("timeout", sys.stdout)
