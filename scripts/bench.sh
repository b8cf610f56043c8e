#!/usr/bin/env bash
# Benchmarks a fresh 3-node raftcache cluster on loopback with raftcache-bench (closed-loop
# clients, each with its own connection, spread over the three nodes) and prints one Markdown
# table row per load point: the median of REPEAT runs of SECONDS each.
#
#   scripts/bench.sh                      # puts at 1, 16, 64, 256 clients; gets at 64
#   CLIENTS="1 64" OPS="put" REPEAT=5 SECONDS_PER_RUN=10 scripts/bench.sh
#   ADDRS=leader scripts/bench.sh         # send everything to the leader instead
#   SERVE_FLAGS="--batch-max-in-flight 2" scripts/bench.sh   # extra `serve` flags
#   BENCH_FLAGS="--threads" scripts/bench.sh                  # extra `raftcache-bench` flags
#   BIN=/path/to/other/raftcache scripts/bench.sh            # the nodes run another build
#
# Every commit is flushed (the only mode raftcache has). Values are VALUE_BYTES (100) bytes over
# KEYS (10,000) keys. Flushes/s is the sum over the three nodes of `status`'s log_flushes.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-"1 16 64 256"}
OPS=${OPS:-"put get lget"}
REPEAT=${REPEAT:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
VALUE_BYTES=${VALUE_BYTES:-100}
KEYS=${KEYS:-10000}
BASE=${BASE_PORT:-9700}
ADDRS=${ADDRS:-all}
SERVE_FLAGS=${SERVE_FLAGS:-}  # extra flags for every node, e.g. "--batch-max-in-flight 2"
BENCH_FLAGS=${BENCH_FLAGS:-}  # extra flags for the load generator, e.g. "--threads"

cargo build --release --quiet -p raftcache -p raftcache-bench --bins
BIN=${BIN:-target/release/raftcache}
bench=target/release/raftcache-bench
# shellcheck source=scripts/local-cluster.sh
. scripts/local-cluster.sh
# shellcheck disable=SC2086
cluster_start $SERVE_FLAGS
leader=$(cluster_leader)
addr() { cluster_addr "$1"; }
status_field() { cluster_status_field "$1" "$2"; }
if [ "$ADDRS" = leader ]; then targets=$(addr "$leader"); else targets=$(cluster_addrs); fi
flushes() { echo $(( $(status_field 1 log_flushes) + $(status_field 2 log_flushes) + $(status_field 3 log_flushes) )); }

# Fill the key space once so gets find their keys.
"$bench" --addrs "$targets" --clients 16 --op put --seconds 60 --max-ops "$KEYS" --keys "$KEYS" --value-bytes "$VALUE_BYTES" >/dev/null

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo "cluster: 3 nodes on loopback, leader $leader; load to: $ADDRS; value $VALUE_BYTES B; $KEYS keys; ${SECONDS_PER_RUN}s x $REPEAT runs, medians"
echo
echo "| op | clients | ops/s | p50 ms | p99 ms | server CPU us/op | flushes/s |"
echo "|---|---:|---:|---:|---:|---:|---:|"
pidlist=$(IFS=,; echo "${pids[*]}")
for op in $OPS; do
  for c in $CLIENTS; do
    [ "$op" != put ] && [ "$c" != 64 ] && continue
    rows=()
    for _ in $(seq 1 "$REPEAT"); do
      f0=$(flushes)
      line=$("$bench" --addrs "$targets" --clients "$c" --op "$op" --seconds "$SECONDS_PER_RUN" \
        --keys "$KEYS" --value-bytes "$VALUE_BYTES" --pids "$pidlist" $BENCH_FLAGS)
      f1=$(flushes)
      rows+=("$line flushes=$((f1 - f0))")
    done
    printf '%s\n' "${rows[@]}" | python3 -c "
import statistics, sys
runs = [dict(kv.split('=', 1) for kv in line.split()) for line in sys.stdin if line.strip()]
med = lambda k: statistics.median(float(r[k]) for r in runs)
fps = statistics.median(float(r['flushes']) / float(r['seconds']) for r in runs)
errors = sum(int(r['errors']) for r in runs)
note = f' ({errors} errors)' if errors else ''
print(f\"| $op | $c | {med('ops_per_sec'):.0f}{note} | {med('p50_us')/1000:.2f} | {med('p99_us')/1000:.2f} | {med('server_cpu_us_per_op'):.0f} | {fps:.0f} |\")
"
  done
done
