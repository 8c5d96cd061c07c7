#!/usr/bin/env python3
"""[lines]: writes that many lines "flood line K" to stderr at once, then one more 1.2 s later
("flood after pause"), and returns the number written."""
import json
import sys
import time

(n,) = json.load(sys.stdin)
for k in range(1, n + 1):
    print(f"flood line {k}", file=sys.stderr)
sys.stderr.flush()
time.sleep(1.2)
print("flood after pause", file=sys.stderr)
json.dump(n + 1, sys.stdout)
