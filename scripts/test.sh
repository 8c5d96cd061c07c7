#!/usr/bin/env bash
# The test command of tprefork: set-up, build, unit tests (Check), then the integration tests (pytest)
# against a real Temporal dev server with the real Python SDK as the client.
#
#   scripts/test.sh                  everything
#   scripts/test.sh -k echo          arguments go to pytest
#   TPREFORK_SANITIZE=1 scripts/test.sh
#                                    the same suites against an ASan+UBSan build in build-asan/
#   TPREFORK_VALGRIND=1 scripts/test.sh
#                                    unit tests and a subset of the integration tests under valgrind
#
# Exits non-zero if any step or any test failed.
set -uo pipefail

root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$root"

step() { printf 'test: %s\n' "$*"; }

scripts/setup.sh || exit 1

builddir=build
if [ "${TPREFORK_SANITIZE:-0}" = 1 ]; then
	builddir=build-asan
	export TPREFORK_CONFIGURE_FLAGS="${TPREFORK_CONFIGURE_FLAGS:-} --enable-sanitizers"
	# Reports go to stderr, which the harness keeps in each tprefork's log and checks.
	export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:print_summary=1}"
	export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
	step "sanitizer build in $builddir/"
fi
export TPREFORK_BUILD_DIR=$builddir

TPREFORK_SKIP_SETUP=1 scripts/build.sh || { step "FAILED: build"; exit 1; }

failed=()

step "unit tests: make -C $builddir check"
if ! make -C "$builddir" -j"$(nproc)" check; then
	failed+=("unit tests")
	# Show the log of each failing suite (a .trs says :test-result: FAIL or ERROR).
	shown=0
	for trs in "$builddir"/tests/unit/*.trs; do
		[ -f "$trs" ] || continue
		if grep -qE '^:test-result: (FAIL|ERROR|XPASS)' "$trs"; then
			log=${trs%.trs}.log
			printf '\n===== %s =====\n' "$log"
			cat "$log" 2>/dev/null
			shown=1
		fi
	done
	if [ "$shown" -eq 0 ]; then
		for log in "$builddir"/tests/unit/*.log; do
			[ -f "$log" ] || continue
			printf '\n===== %s =====\n' "$log"
			cat "$log"
		done
	fi
fi

export TPREFORK_BIN=$root/$builddir/src/tprefork
if [ "${TPREFORK_VALGRIND:-0}" = 1 ]; then
	# Master, children and their re-executions under memcheck; its reports go to stderr, i.e. into
	# each tprefork's log, where the harness looks for them.
	step "unit tests under valgrind"
	for t in "$builddir"/tests/unit/check_*; do
		case $t in *.o|*.log|*.trs) continue ;; esac
		[ -x "$t" ] || continue
		CK_FORK=no valgrind -q --leak-check=full --errors-for-leak-kinds=definite \
			--error-exitcode=9 "$t" >/dev/null || failed+=("valgrind $(basename "$t")")
	done
	wrapper=$root/$builddir/tprefork-valgrind
	# The re-executed children are traced; the activity commands (interpreters, scripts, system
	# tools) are not.
	printf '#!/bin/sh\nexec valgrind -q --trace-children=yes --trace-children-skip=%s --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite %s "$@"\n' \
		'/usr/*,/bin/*,*/python*,*.py,*.sh' "$TPREFORK_BIN" >"$wrapper"
	chmod +x "$wrapper"
	export TPREFORK_BIN=$wrapper
	# Everything runs several times slower: the default is the subset that exercises every path once.
	# (Not the rlimit test: under valgrind the fd limit belongs to valgrind and setrlimit fails.)
	[ $# -eq 0 ] && set -- -k "(echo or environment or retry or error_record or unknown or graceful or inflight or stragglers or sigkill or broken_config) and not allowlisted"
fi
step "integration tests: pytest tests/integration (TPREFORK_BIN=$TPREFORK_BIN)"
if ! "$root/.venv/bin/python" -m pytest tests/integration -v "$@" </dev/null; then
	failed+=("integration tests")
fi

if [ "${#failed[@]}" -gt 0 ]; then
	step "FAILED: ${failed[*]}"
	exit 1
fi
step "all passed"
