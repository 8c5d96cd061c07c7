#!/usr/bin/env bash
# Build tprefork out of tree: the binary is build/src/tprefork.
#
# Environment:
#   TPREFORK_SKIP_SETUP=1       do not run scripts/setup.sh first
#   TPREFORK_BUILD_DIR=DIR      build directory relative to the repository (default: build)
#   TPREFORK_CONFIGURE_FLAGS    extra flags for configure (e.g. --enable-sanitizers)
set -euo pipefail

root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$root"

step() { printf 'build: %s\n' "$*"; }
die() { printf 'build: error: %s\n' "$*" >&2; exit 1; }

[ "${TPREFORK_SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh

builddir=${TPREFORK_BUILD_DIR:-build}
flags="--enable-werror ${TPREFORK_CONFIGURE_FLAGS:-}"
flags=$(printf '%s' "$flags" | tr -s ' ' | sed 's/ *$//')

# An in-tree configure leaves config.status behind and then refuses every out-of-tree build.
[ ! -f config.status ] || die "the source tree has been configured (config.status exists): run 'make distclean' in $root, then build again"

if [ ! -x configure ] || [ ! -f Makefile.in ] || [ configure.ac -nt configure ] || [ Makefile.am -nt Makefile.in ]; then
	step "autoreconf -fi"
	log=$(mktemp "${TMPDIR:-/tmp}/tprefork-autoreconf.XXXXXX")
	autoreconf -fi >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; die "autoreconf failed"; }
	rm -f "$log"
fi

mkdir -p "$builddir"
stamp=$builddir/.configure-flags
if [ ! -f "$builddir/Makefile" ] || [ ! -f "$builddir/config.status" ] ||
	[ configure -nt "$builddir/config.status" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$flags" ]; then
	step "configure $flags (in $builddir/)"
	rm -f "$stamp"
	# shellcheck disable=SC2086 # the flags are words
	(cd "$builddir" && "$root/configure" $flags >configure.out 2>&1) || {
		tail -n 30 "$builddir/configure.out" >&2
		die "configure failed (full output: $builddir/configure.out, $builddir/config.log)"
	}
	printf '%s' "$flags" >"$stamp"
fi

step "make -j$(nproc) (in $builddir/)"
make -C "$builddir" -j"$(nproc)" || die "make failed"
[ -x "$builddir/src/tprefork" ] || die "$builddir/src/tprefork was not built"
step "built $builddir/src/tprefork"
