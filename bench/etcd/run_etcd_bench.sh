#!/usr/bin/env bash
# run_etcd_bench.sh — the side-by-side peer for ingot-bench: a 3-member etcd 3.4 cluster (Debian etcd-server) on
# 127.0.0.1 with mutual TLS on both client and peer URLs (own CA made with openssl), measured with etcd's own
# `benchmark put` tool and a leader-kill failover probe. WAL fsync stays on (etcd cannot turn it off safely).
#
#   1. installs etcd-server etcd-client openssl if missing; builds etcd's benchmark tool if missing
#      (build_etcd_benchmark.sh; ~1 min on 2 cores incl. apt) and the Python grpcio venv if missing
#      (scripts/install-test-peers.sh)
#   2. starts 3 members, waits until every endpoint is healthy
#   3. `benchmark put --clients=64 --conns=16 --val-size=256 --key-size=8 --sequential-keys --total=20000
#      --key-space-size=$KEY_SPACE` over mTLS, BENCH_RUNS times; reports the median Requests/sec and 99% latency
#   4. FAILOVER_ROUNDS times: finds the leader (etcdctl endpoint status), SIGKILLs it from a long-lived mTLS client
#      (etcd_failover_probe.py: a put every 10 ms over all endpoints, many in flight) and times the first
#      acknowledged put; restarts the killed member and waits for health. Reports the median.
# Last lines (machine-readable): ETCD_TLS_PUTS_PER_S=…  ETCD_TLS_P99_MS=…  ETCD_FAILOVER_MS=…  ETCD_FAILOVER_P99_MS=…
#
# Knobs (env): ETCD_PORT_BASE (42300: member i uses BASE+10i client, BASE+10i+1 peer), BENCH_RUNS (3),
#   FAILOVER_ROUNDS (3), TOTAL (20000), KEY_SPACE (= TOTAL: distinct keys; 1 = etcd's default, one key rewritten),
#   ETCD_HEARTBEAT_MS (100) / ETCD_ELECTION_MS (1000): etcd's defaults; Ingot's are 100 / 600..1200,
#   ETCD_BENCHMARK (path of the benchmark binary), INGOT_PEERS_HOME.
# Traffic: 127.0.0.1 only. Every wait is bounded; stops only the processes it started (by PID); removes its dir.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS_HOME=${INGOT_PEERS_HOME:-$HOME/.cache/ingot-peers}
BENCH=${ETCD_BENCHMARK:-$PEERS_HOME/etcd-benchmark}
BASE=${ETCD_PORT_BASE:-42300}
BENCH_RUNS=${BENCH_RUNS:-3}
FAILOVER_ROUNDS=${FAILOVER_ROUNDS:-3}
TOTAL=${TOTAL:-20000}
KEY_SPACE=${KEY_SPACE:-$TOTAL}
HB=${ETCD_HEARTBEAT_MS:-100}
ELECTION=${ETCD_ELECTION_MS:-1000}
export DEBIAN_FRONTEND=noninteractive
ms_now() { echo $(( $(date +%s%N) / 1000000 )); }
log() { echo "etcd-bench: $*"; }

# ---- 1. install what is missing
missing=()
for p in etcd-server etcd-client openssl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "running: apt-get update; apt-get install -y --no-install-recommends ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's etcd-server package enables a system etcd on 127.0.0.1:2379; it is not ours: leave it alone.
if ! [ -x "$BENCH" ]; then
  t=$(ms_now)
  bash "$HERE/build_etcd_benchmark.sh" "$BENCH"
  log "benchmark tool built in $(( ($(ms_now) - t) / 1000 )) s"
fi
if ! [ -f "$PEERS_HOME/env" ]; then bash "$ROOT/scripts/install-test-peers.sh"; fi
# shellcheck source=/dev/null
source "$PEERS_HOME/env"
PY=$INGOT_PEER_PYTHON
log "$(etcd --version | head -1), $(etcdctl version | head -1), benchmark: $BENCH"

# ---- 2. certificates and cluster
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ingot-etcd-bench.XXXXXX")
declare -A PID=()
cleanup() {
  local n p
  for n in "${!PID[@]}"; do kill "${PID[$n]}" 2>/dev/null || true; done
  for n in "${!PID[@]}"; do
    p=${PID[$n]}
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for i in 1 2 3; do
  for port in $((BASE + 10 * i)) $((BASE + 10 * i + 1)); do
    if ss -Hltn "sport = :$port" | grep -q .; then log "port $port is in use; set ETCD_PORT_BASE"; exit 1; fi
  done
done
C=$WORK/tls
mkdir -p "$C"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=etcd-bench-ca" \
  -keyout "$C/ca.key" -out "$C/ca.crt" 2>/dev/null
leaf() { # name cn eku
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$C/$1.key" -out "$C/$1.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=%s\n' "$3" >"$C/$1.ext"
  openssl x509 -req -in "$C/$1.csr" -CA "$C/ca.crt" -CAkey "$C/ca.key" -CAcreateserial -days 2 \
    -extfile "$C/$1.ext" -out "$C/$1.crt" 2>/dev/null
}
for i in 1 2 3; do leaf "m$i" "m$i" serverAuth,clientAuth; done
leaf client bench-client clientAuth
TLS=(--cacert "$C/ca.crt" --cert "$C/client.crt" --key "$C/client.key")

CLUSTER="" EPS=""
for i in 1 2 3; do
  CLUSTER+="${CLUSTER:+,}m$i=https://127.0.0.1:$((BASE + 10 * i + 1))"
  EPS+="${EPS:+,}127.0.0.1:$((BASE + 10 * i))"
done
start_member() { # i
  local i=$1 cu pu
  cu=https://127.0.0.1:$((BASE + 10 * i)) pu=https://127.0.0.1:$((BASE + 10 * i + 1))
  etcd --name "m$i" --data-dir "$WORK/m$i" \
    --listen-client-urls "$cu" --advertise-client-urls "$cu" \
    --listen-peer-urls "$pu" --initial-advertise-peer-urls "$pu" \
    --initial-cluster "$CLUSTER" --initial-cluster-token ingot-etcd-bench --initial-cluster-state new \
    --cert-file "$C/m$i.crt" --key-file "$C/m$i.key" --client-cert-auth --trusted-ca-file "$C/ca.crt" \
    --peer-cert-file "$C/m$i.crt" --peer-key-file "$C/m$i.key" --peer-client-cert-auth \
    --peer-trusted-ca-file "$C/ca.crt" \
    --heartbeat-interval "$HB" --election-timeout "$ELECTION" \
    --logger zap --log-level warn >>"$WORK/m$i.log" 2>&1 &
  PID[m$i]=$!
}
wait_healthy() { # endpoints timeout_s
  local t_end=$(( $(date +%s) + $2 ))
  for _ in $(seq 600); do
    etcdctl --endpoints="$1" "${TLS[@]}" --command-timeout=2s endpoint health >/dev/null 2>&1 && return 0
    [ "$(date +%s)" -ge "$t_end" ] && break
    sleep 0.1
  done
  log "cluster not healthy after $2 s ($1)"; tail -5 "$WORK"/m*.log; return 1
}
t=$(ms_now)
for i in 1 2 3; do start_member "$i"; done
wait_healthy "$EPS" 60
log "3 members healthy (mTLS client+peer) after $(( $(ms_now) - t )) ms; endpoints $EPS"
etcdctl --endpoints="$EPS" "${TLS[@]}" endpoint status -w table

# ---- 3. etcd's benchmark put over mTLS
median() { sort -g | awk '{v[NR]=$1} END{if (NR==0) exit 1; if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
RPS=() P99=()
for r in $(seq "$BENCH_RUNS"); do
  out=$WORK/bench.$r.txt
  timeout 300 "$BENCH" --endpoints="$EPS" "${TLS[@]}" --clients=64 --conns=16 put --val-size=256 --key-size=8 \
    --sequential-keys --key-space-size="$KEY_SPACE" --total="$TOTAL" >"$out" 2>&1 ||
    { log "benchmark run $r failed:"; tail -5 "$out"; exit 1; }
  rps=$(tr '\r' '\n' <"$out" | awk '/Requests\/sec:/{print $2}' | tail -1)
  p99=$(tr '\r' '\n' <"$out" | awk '$1=="99%" && $2=="in" {printf "%.2f", $3*1000}' | tail -1)
  avg=$(tr '\r' '\n' <"$out" | awk '$1=="Average:" {printf "%.2f", $2*1000}' | tail -1)
  if [ -z "$rps" ] || [ -z "$p99" ]; then
    log "cannot parse benchmark output:"; tr '\r' '\n' <"$out" | tail -30; exit 1
  fi
  log "benchmark put run $r/$BENCH_RUNS: $rps req/s, avg $avg ms, p99 $p99 ms (64 clients, 16 conns, $TOTAL puts, 256 B, key space $KEY_SPACE)"
  RPS+=("$rps") P99+=("$p99")
done
PUTS=$(printf '%s\n' "${RPS[@]}" | median | awk '{printf "%.0f", $1}')
PUTS_P99=$(printf '%s\n' "${P99[@]}" | median)

# ---- 4. leader failover, FAILOVER_ROUNDS times
leader_member() { # prints m1|m2|m3
  etcdctl --endpoints="$EPS" "${TLS[@]}" --command-timeout=2s endpoint status -w json 2>/dev/null | "$PY" -c '
import json, sys
base = int(sys.argv[1])
for s in json.load(sys.stdin):
    st = s["Status"]
    if st["leader"] == st["header"]["member_id"]:
        print("m%d" % ((int(s["Endpoint"].rsplit(":", 1)[1]) - base) // 10)); break' "$BASE"
}
FO=()
for r in $(seq "$FAILOVER_ROUNDS"); do
  L=""
  for _ in $(seq 50); do L=$(leader_member || true); [ -n "$L" ] && break; sleep 0.2; done
  [ -n "$L" ] || { log "no leader found"; exit 1; }
  res=$(timeout 60 "$PY" "$HERE/etcd_failover_probe.py" --endpoints "$EPS" --ca "$C/ca.crt" --cert "$C/client.crt" \
    --key "$C/client.key" --kill-pid "${PID[$L]}" --max-seconds 30) || { log "failover probe failed: $res"; exit 1; }
  wait "${PID[$L]}" 2>/dev/null || true
  unset "PID[$L]"
  ms=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["failover_ms"])' "$res")
  log "failover round $r/$FAILOVER_ROUNDS: leader $L SIGKILLed; first acknowledged put after $ms ms ($res)"
  FO+=("$ms")
  t=$(ms_now)
  start_member "${L#m}"
  wait_healthy "$EPS" 60
  # the restarted member must be healthy by itself too before the next kill
  wait_healthy "127.0.0.1:$((BASE + 10 * ${L#m}))" 60
  sleep 1
  log "  $L restarted and healthy after $(( $(ms_now) - t )) ms; new leader $(leader_member || echo '?')"
done
FAILOVER=$(printf '%s\n' "${FO[@]}" | median | awk '{printf "%.0f", $1}')
# p99 by the nearest rank (with fewer than 100 rounds: the slowest)
FAILOVER_P99=$(printf '%s\n' "${FO[@]}" | sort -n | awk '{v[NR]=$1} END {i=int(NR*0.99+0.999); if (i<1) i=1; printf "%.0f", v[i]}')

log "etcd settings: heartbeat ${HB} ms, election timeout ${ELECTION} ms, fsync on, mTLS client+peer, $(nproc) cores"
echo "ETCD_TLS_PUTS_PER_S=$PUTS"
echo "ETCD_TLS_P99_MS=$PUTS_P99"
echo "ETCD_FAILOVER_MS=$FAILOVER"
echo "ETCD_FAILOVER_P99_MS=$FAILOVER_P99"
