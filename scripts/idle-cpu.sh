#!/usr/bin/env bash
# Measures what a 3-node cluster costs while it holds KEYS keys and serves nothing: the CPU time
# each node process uses per second of idleness (the leader's periodic work: heartbeats, the
# expiry sweep). Starts a fresh cluster of BIN, puts KEYS keys, waits 2 s, then counts
# utime + stime from /proc/<pid>/stat over IDLE_SECONDS.
#
#   scripts/idle-cpu.sh                          # this tree's release build
#   BIN=/path/to/other/raftcache KEYS=10000 IDLE_SECONDS=10 scripts/idle-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-10000}
IDLE_SECONDS=${IDLE_SECONDS:-10}
BASE=${BASE_PORT:-9970}
cargo build --release --quiet -p raftcache -p raftcache-bench --bins
BIN=${BIN:-target/release/raftcache}
bench=target/release/raftcache-bench
# shellcheck source=scripts/local-cluster.sh
. scripts/local-cluster.sh
cluster_start
leader=$(cluster_leader)
addrs=$(cluster_addrs)
"$bench" --addrs "$addrs" --clients 16 --op put --seconds 60 --max-ops "$KEYS" --keys "$KEYS" >/dev/null
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
before=()
for p in "${pids[@]}"; do before+=("$(ticks "$p")"); done
sleep "$IDLE_SECONDS"
for i in 1 2 3; do
  p=${pids[$((i - 1))]}
  role=follower
  [ "$i" = "$leader" ] && role=leader
  used=$(($(ticks "$p") - before[i - 1]))
  echo "node=$i role=$role cpu_ms_per_s=$((used * 1000 / hz / IDLE_SECONDS))"
done
