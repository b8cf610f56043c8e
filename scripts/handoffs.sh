#!/usr/bin/env bash
# Where a request's time goes between threads: runs one load point against a fresh 3-node
# cluster and prints, per node and per thread name, the context switches and the CPU time per
# operation. A voluntary switch is a thread going to sleep to wait for another (a hand-off: the
# connection's task waiting for the Raft core, the log's sync thread waiting for work); each one
# costs a wake-up later, and on two shared cores a wake-up waits for a core. Counted from
# /proc/<pid>/task/<tid>/{status,stat} before and after the run, so the figures include what the
# nodes do anyway (heartbeats, sled's flusher) spread over the run's operations.
#
#   scripts/handoffs.sh                          # puts, 1 client on the leader, 8 s
#   OP=put CLIENTS=64 ON=all scripts/handoffs.sh # 64 clients spread over the three nodes
#   OP=get CLIENTS=64 scripts/handoffs.sh        # local gets of KEYS keys, written first
#
# Knobs: OP (put | get | lget), CLIENTS (1), ON (leader | all), SECONDS_PER_RUN (8), KEYS
# (10,000), BIN (this tree's release build), BASE_PORT (9940), SERVE_FLAGS (more `serve` flags).
set -euo pipefail
cd "$(dirname "$0")/.."

OP=${OP:-put}
CLIENTS=${CLIENTS:-1}
ON=${ON:-leader}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
KEYS=${KEYS:-10000}
BASE=${BASE_PORT:-9940}
cargo build --release --quiet -p raftcache -p raftcache-bench --bins
BIN=${BIN:-target/release/raftcache}
bench=target/release/raftcache-bench
# shellcheck source=scripts/local-cluster.sh
. scripts/local-cluster.sh
# shellcheck disable=SC2086
cluster_start ${SERVE_FLAGS:-}
leader=$(cluster_leader)
addrs=$(cluster_addrs)
[ "$ON" = leader ] && addrs=$(cluster_addr "$leader")
if [ "$OP" != put ]; then
  "$bench" --addrs "$(cluster_addrs)" --clients 16 --op put --sequential --max-ops "$KEYS" --keys "$KEYS" \
    --seconds 120 >/dev/null
fi
sleep 1

# One line per thread: node, thread name, voluntary and involuntary switches, CPU ticks.
snapshot() {
  for i in 1 2 3; do
    local pid=${pids[$((i - 1))]}
    for task in /proc/"$pid"/task/*; do
      local comm vol invol ticks
      comm=$(tr ' ' '_' <"$task/comm" 2>/dev/null) || continue
      vol=$(awk '/^voluntary_ctxt_switches/ {print $2}' "$task/status" 2>/dev/null) || continue
      invol=$(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$task/status" 2>/dev/null) || continue
      # utime and stime are fields 14 and 15, counted after the ")" that ends the name.
      ticks=$(sed 's/.*) //' "$task/stat" 2>/dev/null | awk '{print $12 + $13}') || continue
      echo "$i ${task##*/} $comm $vol $invol $ticks"
    done
  done
}
snapshot >"$work/before"
line=$("$bench" --addrs "$addrs" --clients "$CLIENTS" --op "$OP" --keys "$KEYS" --seconds "$SECONDS_PER_RUN")
snapshot >"$work/after"
echo "$OP x$CLIENTS on $ON, leader node $leader: $line"
python3 - "$work/before" "$work/after" "$leader" "$line" "$(getconf CLK_TCK)" <<'PY'
import collections, sys
before = {(l.split()[0], l.split()[1]): l.split() for l in open(sys.argv[1])}
leader, hz = sys.argv[3], int(sys.argv[5])
fields = dict(f.split("=", 1) for f in sys.argv[4].split() if "=" in f)
ops = int(fields["ops"])
rows = collections.defaultdict(lambda: [0, 0, 0, 0])
for line in open(sys.argv[2]):
    node, tid, comm, vol, invol, ticks = line.split()
    b = before.get((node, tid), [node, tid, comm, "0", "0", "0"])
    row = rows[(node, comm)]
    row[0] += int(vol) - int(b[3])
    row[1] += int(invol) - int(b[4])
    row[2] += int(ticks) - int(b[5])
    row[3] += 1
print(f"{ops} operations")
print("| node | thread | threads | voluntary switches/op | involuntary/op | CPU us/op |")
print("|---|---|---:|---:|---:|---:|")
totals = collections.defaultdict(lambda: [0, 0, 0])
for (node, comm), (vol, invol, ticks, n) in sorted(rows.items()):
    role = "leader" if node == leader else "follower"
    for k, v in enumerate((vol, invol, ticks)):
        totals[node][k] += v
    if (vol + invol) / ops >= 0.005 or ticks * 1e6 / hz / ops >= 0.05:
        print(f"| {node} ({role}) | {comm} | {n} | {vol / ops:.2f} | {invol / ops:.2f} | "
              f"{ticks * 1e6 / hz / ops:.1f} |")
for node, (vol, invol, ticks) in sorted(totals.items()):
    role = "leader" if node == leader else "follower"
    print(f"| {node} ({role}) | all | | {vol / ops:.2f} | {invol / ops:.2f} | {ticks * 1e6 / hz / ops:.1f} |")
PY
