#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# Run as root on a Linux host with cgroup v2 and BPF: the interception tests
# load real eBPF programs into real cgroups. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
setup_all

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "build"
cargo build --workspace --bins

step "tests"
cargo test --workspace --no-fail-fast

step "fuzz smoke: every target from the committed seeds, 15 s each"
cargo xtask fuzz --seconds 15
