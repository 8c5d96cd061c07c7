#!/usr/bin/env bash
# Run tprefork locally: set-up, build, a Temporal dev server on 127.0.0.1:7233 (unless one already
# listens there), then tprefork in the foreground with etc/tprefork-dev.conf.
#
# Ctrl-C or SIGTERM go to tprefork (graceful stop). The dev server this script started is stopped once
# tprefork has exited. Its data live in run/temporal.db, so workflows survive a restart; its log is
# run/temporal.log. Try it from another terminal with: .venv/bin/python scripts/demo.py
#
# Extra arguments go to tprefork (e.g. scripts/run.sh -n 4).
set -euo pipefail

root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$root"

step() { printf 'run: %s\n' "$*"; }
die() { printf 'run: error: %s\n' "$*" >&2; exit 1; }

scripts/setup.sh
TPREFORK_SKIP_SETUP=1 scripts/build.sh
builddir=${TPREFORK_BUILD_DIR:-build}
case $builddir in /*) ;; *) builddir=$root/$builddir ;; esac

HOST=127.0.0.1
PORT=7233
ADDR=$HOST:$PORT
TEMPORAL=$root/.venv/bin/temporal
mkdir -p run

listening() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }
alive() { local st; st=$(ps -o stat= -p "$1") && [ "${st#Z}" = "$st" ]; }   # a zombie is gone too
serving() { "$TEMPORAL" operator cluster health --address "$ADDR" 2>/dev/null | grep -q SERVING; }

server_pid=
if listening; then
	step "a server already listens on $ADDR: using it"
else
	step "starting the Temporal dev server on $ADDR (data: run/temporal.db, log: run/temporal.log)"
	# Its own session, and not a child of this shell (which becomes tprefork): a Ctrl-C in this
	# terminal must reach tprefork only, which still needs the server while it drains, and tprefork
	# must not inherit a child it does not know.
	rm -f run/temporal.pid
	setsid -f bash -c 'echo $$ >run/temporal.pid; exec "$@"' temporal-dev \
		"$TEMPORAL" server start-dev --headless --ip "$HOST" --port "$PORT" \
		--db-filename run/temporal.db \
		--dynamic-config-value frontend.enableCancelWorkerPollsOnShutdown=true \
		--log-level warn </dev/null >>run/temporal.log 2>&1
	for _ in $(seq 1 50); do [ -s run/temporal.pid ] && break; sleep 0.1; done
	server_pid=$(cat run/temporal.pid 2>/dev/null) || die "the dev server did not start (log: run/temporal.log)"
fi

# Wait for the frontend to answer SERVING (bounded: 60 s).
for _ in $(seq 1 300); do
	serving && break
	if [ -n "$server_pid" ] && ! alive "$server_pid"; then
		tail -n 20 run/temporal.log >&2
		die "the dev server exited during start-up (log: run/temporal.log)"
	fi
	sleep 0.2
done
if ! serving; then
	[ -z "$server_pid" ] || kill -TERM "$server_pid" 2>/dev/null || true
	die "no Temporal server answering on $ADDR after 60 s"
fi
step "Temporal server ready on $ADDR"

if [ -n "$server_pid" ]; then
	# After the exec below, tprefork has this shell's pid. A watcher in its own session stops the dev
	# server once that pid is gone.
	setsid -f bash -c '
		main=$1 srv=$2 pidfile=$3
		alive() { st=$(ps -o stat= -p "$1") && [ "${st#Z}" = "$st" ]; }   # a zombie is gone too
		while alive "$main"; do sleep 0.5; done
		kill -TERM "$srv" 2>/dev/null
		for _ in $(seq 1 100); do alive "$srv" || break; sleep 0.1; done
		! alive "$srv" || kill -KILL "$srv" 2>/dev/null
		rm -f "$pidfile"
	' run-watch "$$" "$server_pid" "$root/run/temporal.pid" </dev/null >/dev/null 2>&1
fi

step "starting tprefork -c etc/tprefork-dev.conf $*"
exec "$builddir/src/tprefork" -c etc/tprefork-dev.conf "$@"
