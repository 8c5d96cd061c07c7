#!/bin/sh
# Fail: fails on purpose with a typed error, in plain POSIX shell.
#
# The failure is described by one {"error": {...}} record on fd 3 (type, message, non_retryable,
# details) followed by a non-zero exit status; the workflow sees an ApplicationError of that type.
# Arguments: [non_retryable] (true or false; default false).
args=$(cat)
case $args in *true*) nr=true ;; *) nr=false ;; esac
printf '{"error": {"type": "ExampleError", "message": "fail.sh failed on purpose", "non_retryable": %s, "details": [{"args": %s}]}}\n' \
	"$nr" "$args" >&3
echo "fail.sh: failing with ExampleError" >&2
exit 1
