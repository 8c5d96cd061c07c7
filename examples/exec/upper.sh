#!/bin/sh
# Upper: returns its first argument, a string, in upper case.
# A non-string argument fails the activity for good: an error record on fd 3 marks it non-retryable.
exec python3 -c '
import json, os, sys
args = json.load(sys.stdin)
if not args or not isinstance(args[0], str):
    rec = {"error": {"type": "BadInput", "message": "Upper takes one string", "non_retryable": True}}
    try:
        with os.fdopen(3, "w") as f:
            f.write(json.dumps(rec) + "\n")
    except OSError:
        pass
    sys.exit(2)
json.dump(args[0].upper(), sys.stdout)
'
