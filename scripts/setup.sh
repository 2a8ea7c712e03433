#!/usr/bin/env bash
# Installs everything masker needs to build, demo and test on a fresh Debian 12
# machine (run as root). Idempotent: each step checks before it installs.
#
#   - nightly rust-src (the eBPF object is built with -Z build-std=core)
#   - bpf-linker, built against the nightly toolchain's own libLLVM
#   - PostgreSQL 15 server binaries, pgbouncer (benchmark peer), python3-venv
#   - libclang-dev and protobuf-compiler (to build pg_query)
#   - cargo-deb (the Debian package: `cargo xtask package`)
#   - under $MASKER_TOOLS (default /opt/masker-tools), for the packaging
#     tests: promtool (from Debian's prometheus package, extracted: the
#     server is not installed) and kubernetes-validate (PyPI, in a venv)
#   - docker.io (Debian's Docker 20.10: the container tests start a private
#     dockerd) and iproute2 (`ip netns` for the hand-made containers)
#   - the Python client libraries of the tests (psycopg 3, SQLAlchemy), pinned, in a venv
#     outside the checkout (tests/harness/python.rs finds it; it installs
#     nothing itself)
#   - node-pg (Node.js from Debian's nodejs and npm), exactly as
#     tests/harness/node/package-lock.json locks it, outside the checkout
#   - cargo-fuzz (the fuzz targets of fuzz/, `cargo xtask fuzz`)
#
# Source it (`. scripts/setup.sh`) or run it; it exports PATH additions.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

export PATH="$HOME/.cargo/bin:$PATH"

apt_updated=0
apt_update_once() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
}

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  apt_update_once
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

setup_system_packages() {
  if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
    apt_install postgresql-15 postgresql-client-15
  fi
  command -v psql >/dev/null 2>&1 || apt_install postgresql-client-15
  command -v pgbouncer >/dev/null 2>&1 || apt_install pgbouncer
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_install python3-venv
  # pg_query (PostgreSQL's own parser, used for SQL lineage) generates its
  # bindings with bindgen (libclang) and its protobuf types with protoc.
  apt_install libclang-dev protobuf-compiler
  # Container tests: a private dockerd (tests/harness/docker.rs) and
  # hand-made network namespaces (tests/harness/netns.rs). Debian 12 ships
  # Docker 20.10 as docker.io; the tests need 20.10 or later.
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io
  command -v ip >/dev/null 2>&1 || apt_install iproute2
}

setup_nightly() {
  if ! rustup toolchain list | grep -q '^nightly'; then
    log "installing nightly toolchain"
    rustup toolchain install nightly --profile minimal
  fi
  if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    log "adding rust-src to nightly"
    rustup component add rust-src --toolchain nightly
  fi
}

# bpf-linker 0.13 links against an LLVM 22. The nightly toolchain ships exactly
# that as a shared library; llvm-sys wants it under $PREFIX/lib as both
# libLLVM.so and its versioned name. The links live under CARGO_HOME so they
# outlast this checkout.
setup_bpf_linker() {
  if command -v bpf-linker >/dev/null 2>&1 && bpf-linker --version >/dev/null 2>&1; then
    return 0
  fi
  local sysroot llvm_lib major prefix
  sysroot=$(rustc +nightly --print sysroot)
  llvm_lib=$(cd "$sysroot/lib" && ls libLLVM.so.* 2>/dev/null | head -n1)
  [ -n "$llvm_lib" ] || { log "no libLLVM.so.* in $sysroot/lib"; return 1; }
  major=$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
  prefix="${CARGO_HOME:-$HOME/.cargo}/masker-llvm-$major"
  mkdir -p "$prefix/lib"
  ln -sfn "$sysroot/lib/$llvm_lib" "$prefix/lib/libLLVM.so"
  ln -sfn "$sysroot/lib/$llvm_lib" "$prefix/lib/$llvm_lib"
  log "building bpf-linker against $llvm_lib (LLVM $major); takes a few minutes"
  LLVM_PREFIX="$prefix" LD_LIBRARY_PATH="$prefix/lib" \
    cargo install --locked bpf-linker --version '^0.13' --no-default-features --features "llvm-$major"
}

# The Python packages the tests use, exactly these versions (pip installs
# nothing else: --no-deps). tests/harness/python.rs holds the same list and
# fails, naming this script, when the venv does not have it.
MASKER_TEST_PY_PACKAGES="psycopg==3.2.13 psycopg-binary==3.2.13 typing_extensions==4.16.0 SQLAlchemy==2.1.9"
masker_test_venv() { printf '%s' "${MASKER_TEST_VENV:-${HOME:-/root}/.cache/masker/test-venv}"; }

setup_test_clients() {
  local venv stamp
  venv=$(masker_test_venv)
  stamp="$venv/.masker-packages"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$MASKER_TEST_PY_PACKAGES" ]; then
    return 0
  fi
  log "creating the test clients' venv $venv ($MASKER_TEST_PY_PACKAGES)"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # one word per package
  "$venv/bin/pip" install -q --disable-pip-version-check --no-input --no-deps $MASKER_TEST_PY_PACKAGES
  "$venv/bin/python" -c 'import psycopg, sqlalchemy; print("psycopg", psycopg.__version__, "SQLAlchemy", sqlalchemy.__version__)' >&2
  printf '%s' "$MASKER_TEST_PY_PACKAGES" >"$stamp"
}

# node-pg for the tests (tests/harness/node.rs), exactly the versions of the
# lockfile next to it (`npm ci`), outside the checkout; the harness compares
# the installed copy of the lockfile with the checked-in one.
masker_test_node_dir() { printf '%s' "${MASKER_TEST_NODE_DIR:-${HOME:-/root}/.cache/masker/test-node}"; }

setup_node_clients() {
  local dir src
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  dir=$(masker_test_node_dir)
  src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/harness/node"
  if cmp -s "$src/package-lock.json" "$dir/package-lock.json" && [ -f "$dir/node_modules/pg/package.json" ]; then
    return 0
  fi
  log "installing node-pg into $dir (npm ci from tests/harness/node/package-lock.json)"
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$src/package.json" "$src/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
  (cd "$dir" && node -e 'console.error("node-pg", require("pg/package.json").version)')
}

# cargo-fuzz builds the fuzz targets of fuzz/ with the nightly toolchain
# (sanitizers, libFuzzer); `cargo xtask fuzz` runs them.
CARGO_FUZZ_VERSION=0.13.1
setup_cargo_fuzz() {
  if cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
    return 0
  fi
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
}

# cargo-deb builds the Debian package; pinned (xtask/src/package.rs names
# the same version).
CARGO_DEB_VERSION=3.8.0
setup_cargo_deb() {
  if cargo deb --version 2>/dev/null | grep -q " $CARGO_DEB_VERSION\$"; then
    return 0
  fi
  log "installing cargo-deb $CARGO_DEB_VERSION"
  cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION"
}

export MASKER_TOOLS="${MASKER_TOOLS:-/opt/masker-tools}"

# promtool checks and unit-tests packaging/prometheus/. Debian ships it in
# the prometheus package with the server; only promtool is extracted, so no
# Prometheus service is installed or started. Pinned to the 2.42 line
# (bookworm); Debian security revisions of it are accepted.
PROMTOOL_SERIES=2.42.
setup_promtool() {
  local bin="$MASKER_TOOLS/bin/promtool"
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "version $PROMTOOL_SERIES"; then
    return 0
  fi
  apt_update_once
  local tmp version
  tmp=$(mktemp -d)
  log "extracting promtool from Debian's prometheus package"
  (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root prometheus >/dev/null)
  version=$(dpkg-deb -f "$tmp"/prometheus_*.deb Version)
  case "$version" in
    "$PROMTOOL_SERIES"*) ;;
    *) log "prometheus $version is not the pinned $PROMTOOL_SERIES* series"; rm -rf "$tmp"; return 1 ;;
  esac
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  install -D -m 0755 "$tmp/x/usr/bin/promtool" "$bin"
  rm -rf "$tmp"
}

# kubernetes-validate ships the Kubernetes JSON schemas (no network needed
# to validate packaging/kubernetes/).
KUBERNETES_VALIDATE_VERSION=1.37.0
setup_kubernetes_validate() {
  local venv="$MASKER_TOOLS/venv"
  if "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
    return 0
  fi
  log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
}

setup_packaging_tools() {
  setup_cargo_deb
  setup_promtool
  setup_kubernetes_validate
}

setup_all() {
  setup_system_packages
  setup_nightly
  setup_bpf_linker
  setup_test_clients
  setup_node_clients
  setup_cargo_fuzz
  setup_packaging_tools
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  setup_all
fi
