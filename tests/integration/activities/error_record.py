#!/usr/bin/env python3
"""Writes an error record on fd 3 and exits 1. Each attempt appends its number to the file MARKER."""
import json
import os
import sys

marker = os.environ.get("MARKER")
if marker:
    with open(marker, "a") as f:
        f.write(os.environ.get("TEMPORAL_ATTEMPT", "?") + "\n")
record = {"error": {"type": "BadInput", "message": "no good", "non_retryable": True, "details": [1]}}
with os.fdopen(3, "w") as f:
    f.write(json.dumps(record) + "\n")
print("error_record: failing with BadInput", file=sys.stderr)
sys.exit(1)
