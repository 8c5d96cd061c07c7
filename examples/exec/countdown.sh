#!/bin/sh
# Countdown: counts down from N to 0, one step per second, in plain POSIX shell (no JSON library).
#
# Arguments: [N] (stdin: the JSON array, e.g. [5]). Each second it records its progress on fd 3 as
# {"heartbeat": {"left": K}}; a retried attempt resumes from TEMPORAL_HEARTBEAT_DETAILS. A SIGTERM
# (cancellation) ends it at once with status 143. Result (stdout): the number of seconds counted by
# this attempt.
set -eu

trap 'exit 143' TERM

args=$(cat)
n=$(printf '%s' "$args" | tr -dc '0-9')
case $n in ''|*[!0-9]*)
	printf '{"error": {"type": "BadInput", "message": "countdown takes one number", "non_retryable": true}}\n' >&3
	exit 2 ;;
esac

left=$n
# Resume: TEMPORAL_HEARTBEAT_DETAILS is {"left":K} when an earlier attempt recorded progress.
if [ -n "${TEMPORAL_HEARTBEAT_DETAILS:-}" ]; then
	left=$(printf '%s' "$TEMPORAL_HEARTBEAT_DETAILS" | sed -n 's/.*"left": *\([0-9][0-9]*\).*/\1/p')
	left=${left:-$n}
fi

counted=0
while [ "$left" -gt 0 ]; do
	sleep 1 &
	wait $!   # a trapped signal interrupts wait, not a foreground sleep
	left=$((left - 1))
	counted=$((counted + 1))
	printf '{"heartbeat": {"left": %d}}\n' "$left" >&3
done
printf '%d\n' "$counted"
