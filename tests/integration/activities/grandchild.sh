#!/bin/sh
# Leaves a background process (same process group) holding stdout, stderr and fd 3, writes its pid
# and its own to MARKER_DIR/<activity id>.pids, then exits with EXIT (default 1).
sleep 60 &
echo "$$ $!" > "$MARKER_DIR/$TEMPORAL_ACTIVITY_ID.pids"
echo "grandchild: leaving $! behind" >&2
exit "${EXIT:-1}"
