#!/usr/bin/env python3
"""Fails (exit EXIT_CODE, default 3, with a line on stderr) until attempt SUCCEED_ON, then returns the
attempt number. SUCCEED_ON=0 (the default): never succeeds. Each attempt appends its number to the
file MARKER, if set, so a test sees how many attempts ran even when the activity failed."""
import json
import os
import sys

attempt = int(os.environ["TEMPORAL_ATTEMPT"])
succeed_on = int(os.environ.get("SUCCEED_ON", "0"))
code = int(os.environ.get("EXIT_CODE", "3"))
marker = os.environ.get("MARKER")
if marker:
    with open(marker, "a") as f:
        f.write(f"{attempt}\n")
if succeed_on and attempt >= succeed_on:
    json.dump(attempt, sys.stdout)
    sys.exit(0)
print("some earlier stderr line", file=sys.stderr)
print(f"flaky-marker: attempt {attempt} fails", file=sys.stderr)
sys.exit(code)
