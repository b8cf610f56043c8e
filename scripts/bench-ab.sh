#!/usr/bin/env bash
# Compares raftcache builds at 1 and 64 put clients, interleaved so that a noisy machine weighs on
# every build alike: each round starts a fresh 3-node cluster of each build in turn and runs
# raftcache-bench for SECONDS_PER_RUN at 1 client, then at 64 (clients spread over the three
# nodes). Every other round takes the builds in reverse order (A B, B A, ...): the build that
# runs second in a round was measured slower, even against a copy of itself. Prints, per build,
# the medians over ROUNDS and the ratio of 64 clients to 1.
#
#   scripts/bench-ab.sh old=/path/to/old/raftcache new=target/release/raftcache
#   ROUNDS=4 SECONDS_PER_RUN=6 scripts/bench-ab.sh a=bin1 "b=bin1 --forward-flag 4"
#   OP=get scripts/bench-ab.sh old=... new=...   # local gets of KEYS keys, written first
#
# A build is NAME=BINARY [extra serve flags]; the load generator is this tree's release build.
# A build whose flags include --tls-cert is reached over TLS, trusting the CA in TLS_CA:
# In a build's flags, {i} stands for the node's id (each node its own certificate):
#   TLS_CA=certs/ca.pem scripts/bench-ab.sh plain=BIN "tls=BIN --tls-cert certs/node-{i}.pem --tls-key certs/node-{i}-key.pem"
# RAW=1 also prints every run's line (to stderr) before the table.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-6}
OP=${OP:-put}
KEYS=${KEYS:-10000}
BASE=${BASE_PORT:-9850}
cargo build --release --quiet -p raftcache -p raftcache-bench --bins
bench=target/release/raftcache-bench
work=$(mktemp -d)
pids=()
stop_nodes() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_nodes; rm -rf "$work"' EXIT

addrs="127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2)),127.0.0.1:$((BASE + 3))"
initial="1=127.0.0.1:$((BASE + 11)),2=127.0.0.1:$((BASE + 12)),3=127.0.0.1:$((BASE + 13))"
builds=("$@")
reversed=()
for ((i = ${#builds[@]} - 1; i >= 0; i--)); do reversed+=("${builds[i]}"); done
for round in $(seq 1 "$ROUNDS"); do
  order=("${builds[@]}")
  if ((round % 2 == 0)); then order=("${reversed[@]}"); fi
  for build in "${order[@]}"; do
    name=${build%%=*}
    read -r bin flags <<<"${build#*=}"
    client_flags=()
    if [[ " $flags " == *" --tls-cert"* ]]; then client_flags=(--tls-ca "${TLS_CA:?a build with --tls-cert needs TLS_CA}"); fi
    rm -rf "$work/data"
    for i in 1 2 3; do
      # shellcheck disable=SC2086
      "$bin" serve --id "$i" --listen "127.0.0.1:$((BASE + i))" --peer-listen "127.0.0.1:$((BASE + 10 + i))" \
        --http-listen "127.0.0.1:$((BASE + 20 + i))" --data-dir "$work/data/n$i" --initial-cluster "$initial" ${flags//\{i\}/$i} >"$work/$name-n$i.log" 2>&1 &
      pids+=($!)
    done
    until "$bin" status --addr "127.0.0.1:$((BASE + 1))" "${client_flags[@]}" --json 2>/dev/null | grep -q '"leader": *[1-9]'; do
      sleep 0.1
    done
    if [ "$OP" != put ]; then
      "$bench" --addrs "$addrs" "${client_flags[@]}" --clients 16 --op put --sequential --max-ops "$KEYS" --keys "$KEYS" \
        --seconds 120 >/dev/null
    fi
    for clients in 1 64; do
      line=$("$bench" --addrs "$addrs" "${client_flags[@]}" --clients "$clients" --op "$OP" --keys "$KEYS" --seconds "$SECONDS_PER_RUN" \
        --pids "$(IFS=,; echo "${pids[*]}")")
      echo "build=$name round=$round $line" >>"$work/results"
    done
    stop_nodes
  done
done
if [ -n "${RAW:-}" ]; then cat "$work/results" >&2; fi
python3 - "$work/results" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
order = []
for line in open(sys.argv[1]):
    kv = dict(f.split("=", 1) for f in line.split() if "=" in f)
    if kv["build"] not in order:
        order.append(kv["build"])
    runs[(kv["build"], kv["clients"])].append(kv)
print("| build | 1 client | 64 clients | ratio | server CPU us/op at 1 / 64 |")
print("|---|---:|---:|---:|---:|")
for b in order:
    med = lambda c, k: statistics.median(float(r[k]) for r in runs[(b, c)])
    one, many = med("1", "ops_per_sec"), med("64", "ops_per_sec")
    print(f"| {b} | {one:.0f} | {many:.0f} | {many / one:.1f}x | "
          f"{med('1', 'server_cpu_us_per_op'):.0f} / {med('64', 'server_cpu_us_per_op'):.0f} |")
PY
