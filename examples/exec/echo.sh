#!/bin/sh
# Echo: returns its first argument unchanged.
# tprefork's exec protocol: the activity's arguments arrive on stdin as one JSON array; the result is
# the one JSON document printed on stdout; exit status 0 means completed.
exec python3 -c '
import json, sys
args = json.load(sys.stdin)
if args:
    json.dump(args[0], sys.stdout)
'
