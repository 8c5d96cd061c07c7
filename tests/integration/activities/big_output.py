#!/usr/bin/env python3
"""[bytes]: writes that many bytes to stdout (then sleeps, so only the cap can end it early).
MARKER_DIR/<activity id>.pid holds its pid."""
import json
import os
import sys
import time

(n,) = json.load(sys.stdin)
with open(os.path.join(os.environ["MARKER_DIR"], os.environ["TEMPORAL_ACTIVITY_ID"] + ".pid"), "w") as f:
    f.write(f"{os.getpid()}\n")
chunk = b"x" * 65536
out = sys.stdout.buffer
while n > 0:
    out.write(chunk[: min(n, len(chunk))])
    n -= min(n, len(chunk))
out.flush()
time.sleep(60)
