#!/usr/bin/env bash
# scripts/test.sh — runs every Ingot test; the command the README names, and what CI (.ci/run) runs.
#
#   1. installs the test peers if missing (scripts/install-test-peers.sh: Python grpcio + grpcurl in a venv)
#      and sources their env file: INGOT_PEER_PYTHON, INGOT_PEER_GRPCURL are exported to the tests
#   2. checks the syntax of the peer scripts (bash -n, py_compile)
#   3. cargo build --workspace --bins [--locked]   (the integration tests start target/debug/ingot-region etc.)
#   4. cargo test --workspace [--locked] [ARGS...] -- --test-threads=2
# --locked is used when Cargo.lock exists. Extra arguments go to `cargo test` before `--`
# (e.g. `scripts/test.sh -p ingot-tests`). Exits non-zero if any step fails; prints the wall time of each step.
#
# Plain `cargo test`, not cargo-nextest: nextest would be one more download and build (minutes on 2 cores) for
# no gain here; cargo test's closing "test result:" lines are what CI reads.
#
# Peers and CI: with CI=true (set by CI) a failing peer install fails the run, and INGOT_REQUIRE_PEERS=1 is
# exported so that tests needing a peer fail (instead of skipping) when it is missing. Outside CI a failing
# install only warns, and peer tests may skip. Knobs: INGOT_PEERS_HOME (see install-test-peers.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PEERS_HOME=${INGOT_PEERS_HOME:-$HOME/.cache/ingot-peers}
export INGOT_PEERS_HOME=$PEERS_HOME
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
if [ "${CI:-}" = true ]; then export INGOT_REQUIRE_PEERS=1; fi

T_ALL=$(date +%s)
TIMES=()
# step NAME CMD...: runs CMD, prints its wall time; returns CMD's exit code.
step() {
  local name=$1 t0 rc=0
  shift
  echo "==> $name: $*"
  t0=$(date +%s)
  "$@" || rc=$?
  local dt=$(( $(date +%s) - t0 ))
  TIMES+=("$(printf '%-34s %5d s  rc=%d' "$name" "$dt" "$rc")")
  echo "<== $name: ${dt} s (exit $rc)"
  return "$rc"
}
summary() {
  echo "---- step times (total $(( $(date +%s) - T_ALL )) s)"
  local l
  for l in "${TIMES[@]}"; do echo "   $l"; done
}
trap summary EXIT

# 1. peers
if step "install test peers" bash scripts/install-test-peers.sh; then
  # shellcheck source=/dev/null
  source "$PEERS_HOME/env"
  export INGOT_PEER_PYTHON INGOT_PEER_GRPCURL
  echo "    INGOT_PEER_PYTHON=$INGOT_PEER_PYTHON"
  echo "    INGOT_PEER_GRPCURL=$INGOT_PEER_GRPCURL"
elif [ "${CI:-}" = true ]; then
  echo "test.sh: installing the test peers failed, and CI=true: failing" >&2
  exit 1
else
  echo "test.sh: WARNING: test peers not installed; tests that need them may skip" >&2
fi

# 2. peer scripts' syntax (cheap; catches a broken peer before a long build)
check_peer_scripts() {
  # (runs under `step`, i.e. with errexit off: count failures explicitly)
  local f py=${INGOT_PEER_PYTHON:-python3} bad=0
  for f in scripts/*.sh tests/peers/*.sh bench/etcd/*.sh .ci/run; do
    if [ -f "$f" ] && ! bash -n "$f"; then echo "syntax error: $f"; bad=$((bad + 1)); fi
  done
  for f in tests/peers/*.py; do
    if [ -f "$f" ] && ! "$py" -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$f"; then
      echo "syntax error: $f"; bad=$((bad + 1))
    fi
  done
  [ "$bad" -eq 0 ]
}
step "peer scripts syntax" check_peer_scripts

# 3-4. cargo
LOCKED=()
[ -f Cargo.lock ] && LOCKED=(--locked)
step "cargo build --workspace --bins" cargo build --workspace --bins "${LOCKED[@]}"
step "cargo test --workspace" cargo test --workspace "${LOCKED[@]}" "$@" -- --test-threads=2
