#!/usr/bin/env python3
"""Kills itself with the signal SIGNO (default 11, SIGSEGV) after writing its pid to
MARKER_DIR/<activity id>.<attempt>.pid."""
import os
import signal

signo = int(os.environ.get("SIGNO", "11"))
with open(os.path.join(os.environ["MARKER_DIR"],
                       f"{os.environ['TEMPORAL_ACTIVITY_ID']}.{os.environ['TEMPORAL_ATTEMPT']}.pid"), "w") as f:
    f.write(f"{os.getpid()}\n")
signal.signal(signo, signal.SIG_DFL)
os.kill(os.getpid(), signo)
