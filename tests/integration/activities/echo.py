#!/usr/bin/env python3
"""Echo: one argument comes back unchanged; several come back as the whole array; none: no result."""
import json
import sys

args = json.load(sys.stdin)
if len(args) == 1:
    json.dump(args[0], sys.stdout)
elif args:
    json.dump(args, sys.stdout)
