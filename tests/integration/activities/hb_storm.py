#!/usr/bin/env python3
"""[rate, seconds]: writes `rate` heartbeat records per second to fd 3 for `seconds` seconds
(batches every 10 ms). Result: the number of records written."""
import json
import os
import sys
import time

rate, seconds = json.load(sys.stdin)
rec = os.fdopen(3, "w")
n = 0
t0 = time.monotonic()
while True:
    elapsed = time.monotonic() - t0
    if elapsed >= seconds:
        break
    target = int(rate * elapsed)
    while n < target:
        n += 1
        rec.write('{"heartbeat":{"n":%d}}\n' % n)
    rec.flush()
    time.sleep(0.01)
rec.close()
json.dump(n, sys.stdout)
