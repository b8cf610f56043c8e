#!/usr/bin/env bash
# raftcache beside etcd and Redis on this machine, driven by the same load generator
# (raftcache-bench: closed-loop clients, one connection each, all tasks on one thread), so
# that nobody has to trust our figures: run it and read the table.
#
#   scripts/compare.sh                          # every load point, 3 interleaved rounds
#   ROUNDS=5 SECONDS_PER_RUN=10 scripts/compare.sh
#   POINTS="put:1:leader put:64:all" scripts/compare.sh
#   TLS=1 scripts/compare.sh                    # and a 4th store: raftcache with TLS on both ports
#
# The three, each on loopback with every write synced before it is acknowledged:
#   raftcache  3 nodes (scripts/local-cluster.sh);
#   etcd       3 members (Debian's etcd-server; its WAL fsyncs every commit);
#   Redis      1 server, appendonly with appendfsync always (no replication);
#   with TLS=1, raftcache-tls: a second 3-node raftcache with TLS on the client port and
#              mutual TLS between its nodes (certificates from cluster/make-certs.sh).
# A point is OP:CLIENTS:TARGET, OP one of put, get (a local read: raftcache's default read,
# etcd's serializable Range, Redis's GET), lget (a linearizable read: raftcache and etcd
# only), TARGET `leader` (every client on the leader) or `all` (spread over the three; a
# follower forwards what it cannot answer itself). Rounds interleave the stores, in an order
# that turns every round, so that drift on a shared machine falls on all three. Values are
# VALUE_BYTES (100) bytes over KEYS (10,000) keys, each store filled once before its reads.
# Prints medians, and keeps every raw line in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
POINTS=${POINTS:-"put:1:leader put:64:leader put:256:leader put:64:all get:64:leader get:64:all lget:64:leader"}
VALUE_BYTES=${VALUE_BYTES:-100}
KEYS=${KEYS:-10000}
BASE=${BASE_PORT:-9700}
OUT=${OUT:-target/compare-$(date -u +%Y%m%dT%H%M%SZ).txt}

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
  echo "compare: installing ${missing[*]} from Debian" >&2
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release --quiet -p raftcache -p raftcache-bench --bins
BIN=${BIN:-target/release/raftcache}
bench=target/release/raftcache-bench
# shellcheck source=scripts/local-cluster.sh
. scripts/local-cluster.sh

etcd_pids=()
redis_pid=
tls_pids=()
stop_all() {
  for p in "${etcd_pids[@]}" $redis_pid "${tls_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${etcd_pids[@]}" $redis_pid "${tls_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  cluster_stop
}
trap stop_all EXIT

# Ports: raftcache BASE+1..23 (scripts/local-cluster.sh), etcd BASE+31..43, Redis BASE+50,
# raftcache-tls BASE+61..73.
etcd_client() { echo "127.0.0.1:$((BASE + 30 + $1))"; }
etcd_peer() { echo "http://127.0.0.1:$((BASE + 40 + $1))"; }
etcd_initial="e1=$(etcd_peer 1),e2=$(etcd_peer 2),e3=$(etcd_peer 3)"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$work/etcd$i" \
    --listen-client-urls "http://$(etcd_client "$i")" --advertise-client-urls "http://$(etcd_client "$i")" \
    --listen-peer-urls "$(etcd_peer "$i")" --initial-advertise-peer-urls "$(etcd_peer "$i")" \
    --initial-cluster "$etcd_initial" --initial-cluster-state new --initial-cluster-token compare \
    --logger zap --log-level error >"$work/etcd$i.log" 2>&1 &
  etcd_pids+=($!)
done
redis_addr="127.0.0.1:$((BASE + 50))"
mkdir -p "$work/redis"
redis-server --bind 127.0.0.1 --port "$((BASE + 50))" --dir "$work/redis" --save '' \
  --appendonly yes --appendfsync always --daemonize no --logfile "$work/redis.log" &
redis_pid=$!
cluster_start
tls_addr() { echo "127.0.0.1:$((BASE + 60 + $1))"; }
tls_addrs() { echo "$(tls_addr 1),$(tls_addr 2),$(tls_addr 3)"; }
if [ "${TLS:-0}" = 1 ]; then
  certs="$work/certs"
  cluster/make-certs.sh "$certs" >/dev/null
  tls_initial="1=127.0.0.1:$((BASE + 71)),2=127.0.0.1:$((BASE + 72)),3=127.0.0.1:$((BASE + 73))"
  for i in 1 2 3; do
    "$BIN" serve --id "$i" --listen "$(tls_addr "$i")" --peer-listen "127.0.0.1:$((BASE + 70 + i))" \
      --http-listen none --data-dir "$work/tls-n$i" --initial-cluster "$tls_initial" \
      --tls-cert "$certs/node-$i.pem" --tls-key "$certs/node-$i-key.pem" --peer-tls-cert "$certs/node-$i.pem" \
      --peer-tls-key "$certs/node-$i-key.pem" --peer-tls-ca "$certs/ca.pem" >"$work/tls-n$i.log" 2>&1 &
    tls_pids+=($!)
  done
fi

# Ready, and who leads.
rc_leader=$(cluster_leader)
tls_leader=0
if [ "${TLS:-0}" = 1 ]; then
  for _ in $(seq 1 100); do
    tls_leader=$("$BIN" status --addr "$(tls_addr 1)" --tls-ca "$certs/ca.pem" --json 2>/dev/null |
      python3 -c "import json,sys; print(json.load(sys.stdin)['leader'] or 0)" || echo 0)
    [ "$tls_leader" != 0 ] && break
    sleep 0.2
  done
  [ "$tls_leader" != 0 ] || { echo "compare: the TLS cluster elected no leader" >&2; exit 1; }
fi
etcd_endpoints="http://$(etcd_client 1),http://$(etcd_client 2),http://$(etcd_client 3)"
etcd_leader=
for _ in $(seq 1 100); do
  for i in 1 2 3; do
    kill -0 "${etcd_pids[$((i - 1))]}" 2>/dev/null ||
      { echo "compare: etcd member $i exited; its log ($work/etcd$i.log) ends with:" >&2; tail -3 "$work/etcd$i.log" >&2; exit 1; }
  done
  etcd_leader=$(ETCDCTL_API=3 etcdctl --dial-timeout 500ms --command-timeout 2s --endpoints "$etcd_endpoints" endpoint status -w json 2>/dev/null |
    python3 -c '
import json, sys
for i, s in enumerate(json.load(sys.stdin), 1):
    if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
        print(i)' || true)
  [ -n "$etcd_leader" ] && break
  sleep 0.2
done
[ -n "$etcd_leader" ] || { echo "compare: etcd elected no leader" >&2; exit 1; }
for _ in $(seq 1 100); do
  redis-cli -p "$((BASE + 50))" ping 2>/dev/null | grep -q PONG && break
  sleep 0.1
done

# Where each store's clients go, and the processes whose CPU time counts.
targets() { # STORE TARGET
  case "$1:$2" in
    raftcache:leader) cluster_addr "$rc_leader" ;;
    raftcache:all) cluster_addrs ;;
    raftcache-tls:leader) tls_addr "$tls_leader" ;;
    raftcache-tls:all) tls_addrs ;;
    etcd:leader) etcd_client "$etcd_leader" ;;
    etcd:all) echo "$(etcd_client 1),$(etcd_client 2),$(etcd_client 3)" ;;
    redis:*) echo "$redis_addr" ;;
  esac
}
server_pids() {
  case "$1" in
    raftcache) (IFS=,; echo "${pids[*]}") ;;
    raftcache-tls) (IFS=,; echo "${tls_pids[*]}") ;;
    etcd) (IFS=,; echo "${etcd_pids[*]}") ;;
    redis) echo "$redis_pid" ;;
  esac
}
run() { # STORE OP CLIENTS TARGET [more bench flags]
  local store=$1 op=$2 clients=$3 target=$4 backend=$1
  shift 4
  if [ "$store" = raftcache-tls ]; then set -- --tls-ca "$certs/ca.pem" "$@"; backend=raftcache; fi
  "$bench" --backend "$backend" --addrs "$(targets "$store" "$target")" --op "$op" --clients "$clients" \
    --pids "$(server_pids "$store")" --value-bytes "$VALUE_BYTES" --keys "$KEYS" "$@"
}

stores=(raftcache etcd redis)
if [ "${TLS:-0}" = 1 ]; then stores+=(raftcache-tls); fi
for store in "${stores[@]}"; do
  run "$store" put 16 leader --sequential --max-ops "$KEYS" --seconds 120 >/dev/null
done

mkdir -p "$(dirname "$OUT")"
: >"$OUT"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u '+%F %H:%M') UTC" | tee -a "$OUT"
echo "raftcache $($BIN --version | awk '{print $2}') ($(git rev-parse --short HEAD)), $(etcd --version | head -1), Redis $(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2)" | tee -a "$OUT"
echo "${SECONDS_PER_RUN}s per run, $ROUNDS rounds, medians; value $VALUE_BYTES B, $KEYS keys; raw lines in $OUT" | tee -a "$OUT"
echo
for round in $(seq 1 "$ROUNDS"); do
  shift_by=$(((round - 1) % ${#stores[@]}))
  order=("${stores[@]:shift_by}" "${stores[@]:0:shift_by}")
  for point in $POINTS; do
    IFS=: read -r op clients target <<<"$point"
    for store in "${order[@]}"; do
      if [ "$store" = redis ] && [ "$op" = lget ]; then continue; fi
      if [ "$store" = redis ] && [ "$target" = all ]; then continue; fi
      line=$(run "$store" "$op" "$clients" "$target" --seconds "$SECONDS_PER_RUN")
      echo "round=$round target=$target store=$store $line" >>"$OUT"
      echo "round $round: $store $op x$clients on $target: $(echo "$line" | grep -o 'ops_per_sec=[0-9]*')" >&2
    done
  done
done

python3 - "$OUT" "$POINTS" <<'EOF'
import statistics, sys

path, points = sys.argv[1], sys.argv[2].split()
runs = []
for line in open(path):
    if not line.startswith("round="):
        continue
    fields = dict(f.split("=", 1) for f in line.split())
    runs.append(fields)

def med(store, op, clients, target, key):
    values = [float(r[key]) for r in runs
              if r.get("store", r["backend"].lower()) == store and r["op"].lower() == op
              and r["clients"] == clients and r["target"] == target and key in r]
    return statistics.median(values) if values else None

print("| load | store | ops/s | p50 ms | p99 ms | server CPU µs/op | errors |")
print("|---|---|---:|---:|---:|---:|---:|")
ratios = []
for point in points:
    op, clients, target = point.split(":")
    load = f"{op} x{clients} on {target}"
    got = {}
    for store in ("raftcache", "raftcache-tls", "etcd", "redis"):
        ops = med(store, op, clients, target, "ops_per_sec")
        if ops is None:
            continue
        got[store] = (ops, med(store, op, clients, target, "server_cpu_us_per_op"))
        errors = sum(int(r["errors"]) for r in runs if r.get("store", r["backend"].lower()) == store
                     and r["op"].lower() == op and r["clients"] == clients and r["target"] == target)
        print(f"| {load} | {store} | {ops:,.0f} | {med(store, op, clients, target, 'p50_us') / 1000:.2f} "
              f"| {med(store, op, clients, target, 'p99_us') / 1000:.2f} | {got[store][1]:.1f} | {errors} |")
    for ours, peer in (("raftcache", "etcd"), ("raftcache", "redis"), ("raftcache-tls", "raftcache")):
        if ours in got and peer in got:
            (ops, cpu), (peer_ops, peer_cpu) = got[ours], got[peer]
            ratios.append(f"| {load} | {ours} against {peer} | {ops / peer_ops:.2f}x | {cpu / peer_cpu:.2f}x |")
print()
print("| load | store against store | throughput | server CPU per op |")
print("|---|---|---:|---:|")
print("\n".join(ratios))
EOF
