#!/usr/bin/env python3
"""Returns what the command sees: its environment, its open file descriptors, its working directory,
and the stdin it got."""
import json
import os
import sys

stdin = sys.stdin.read()
fds = []
for fd in range(256):
    try:
        os.fstat(fd)
    except OSError:
        continue
    fds.append(fd)
json.dump({"env": dict(os.environ), "fds": fds, "cwd": os.getcwd(), "stdin": stdin,
           "pgid_is_pid": os.getpgid(0) == os.getpid()}, sys.stdout)
