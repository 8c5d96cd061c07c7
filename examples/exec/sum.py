#!/usr/bin/env python3
"""Sum: adds up its arguments; an argument may be a number or a list of numbers.

tprefork's exec protocol: the arguments arrive on stdin as one JSON array, the result is the JSON
document printed on stdout, and exit status 0 means completed. Anything else that is not a number is
a bad input: reported on fd 3 as a non-retryable error, so Temporal does not retry it.
"""
import json
import os
import sys


def fail(message):
    record = {"error": {"type": "BadInput", "message": message, "non_retryable": True}}
    try:
        with os.fdopen(3, "w") as f:
            f.write(json.dumps(record) + "\n")
    except OSError:
        pass
    print(message, file=sys.stderr)
    sys.exit(2)


def numbers(value):
    if isinstance(value, bool):
        fail(f"not a number: {value!r}")
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v)
    else:
        fail(f"not a number: {value!r}")


total = sum(n for arg in json.load(sys.stdin) for n in numbers(arg))
json.dump(total, sys.stdout)
