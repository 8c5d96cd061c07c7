#!/usr/bin/env bash
# The benchmark of tprefork against the Temporal Go and Python SDK workers, in one command:
#
#   bench/run.sh            full run (3 repetitions; about 36 minutes on 2 cores)
#   bench/run.sh --quick    one short repetition (under 5 minutes)
#
# It installs and builds what it needs: scripts/setup.sh (the .venv with the Python SDK and the
# Temporal CLI), an optimized tprefork in build-bench/ (scripts/build.sh), the Go SDK worker and the
# load driver (Go modules bench/peers/go and bench/driver, pinned by their go.sum, fetched through the
# Go module proxy) and the no-op C plugin (bench/plugins/bench.c) into build-bench/bench/. Then it runs
# bench/bench.py, which starts its own dev servers on free ports of 127.0.0.1 and writes
# bench/results/<time>.json and .md. Other arguments go to bench.py (see bench/bench.py --help).
#
# Environment:
#   TPREFORK_BIN=PATH     benchmark this tprefork binary instead of building build-bench/
#   BENCH_SKIP_SETUP=1    do not run scripts/setup.sh
set -euo pipefail

root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$root"

step() { printf 'bench: %s\n' "$*"; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

t0=$(date +%s)
[ "${BENCH_SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh

out=$root/build-bench/bench
mkdir -p "$out"

if [ -n "${TPREFORK_BIN:-}" ]; then
	tprefork=$TPREFORK_BIN
else
	TPREFORK_SKIP_SETUP=1 TPREFORK_BUILD_DIR=build-bench scripts/build.sh
	tprefork=$root/build-bench/src/tprefork
fi
[ -x "$tprefork" ] || die "no tprefork binary at $tprefork"

command -v go >/dev/null 2>&1 || die "go not found (needed for the Go SDK worker and the driver)"
step "building the Go SDK worker and the driver ($(go env GOVERSION))"
(cd bench/peers/go && GOFLAGS=-mod=readonly go build -trimpath -o "$out/bench-go-worker" .) ||
	die "cannot build bench/peers/go"
(cd bench/driver && GOFLAGS=-mod=readonly go build -trimpath -o "$out/bench-driver" .) ||
	die "cannot build bench/driver"

# The plugin variant needs the plugin API header and a tprefork that loads plugins.
plugin=
if [ -f include/tprefork/activity.h ]; then
	step "building the no-op plugin"
	cc -std=c11 -O2 -Wall -Wextra -fPIC -shared -I include -o "$out/bench.so" bench/plugins/bench.c ||
		die "cannot build bench/plugins/bench.c"
	check=$out/plugin-check.conf
	cat >"$check" <<-EOF
		temporal = { address = "127.0.0.1:7233"; namespace = "default"; task_queue = "check"; };
		journal = { path = "$out/check-journal.db"; };
		pidfile = "$out/check.pid";
		plugins = ( "$out/bench.so" );
		activities = ( { type = "Noop"; plugin = "bench"; function = "noop"; } );
	EOF
	if "$tprefork" -t -c "$check" >"$out/plugin-check.out" 2>&1; then
		plugin=$out/bench.so
	else
		step "this tprefork does not load the plugin ($(tail -n 1 "$out/plugin-check.out")): plugin variant left out"
	fi
else
	step "include/tprefork/activity.h not present: plugin variant left out"
fi

step "set-up and builds took $(( $(date +%s) - t0 )) s"
exec "$root/.venv/bin/python" "$root/bench/bench.py" --tprefork "$tprefork" --plugin "$plugin" \
	--go-worker "$out/bench-go-worker" --driver "$out/bench-driver" --temporal "$root/.venv/bin/temporal" \
	--command "bench/run.sh${*:+ $*}" "$@"
