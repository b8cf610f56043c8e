#!/usr/bin/env bash
# Issue-3 acceptance experiment, by hand (too long for the test suite): on a 3-node release
# cluster, stop a follower, write WRITES (100,000) keys while it is down (the others snapshot
# every SNAPSHOT_EVERY entries and compact their logs), restart it, and time how long until its
# local reads match the leader's for every key. Prints the figures and the restarted node's peak
# RSS (VmHWM).
#
#   scripts/catchup-experiment.sh
#   WRITES=1000000 VALUE_BYTES=1000 scripts/catchup-experiment.sh
set -euo pipefail
cd "$(dirname "$0")/.."

WRITES=${WRITES:-100000}
VALUE_BYTES=${VALUE_BYTES:-100}
SNAPSHOT_EVERY=${SNAPSHOT_EVERY:-10000}
BASE=${BASE_PORT:-9800}
cargo build --release --quiet --bin raftcache --bin raftcache-bench
bash scripts/python-env.sh >/dev/null
py=.venv-test/bin/python
bin=target/release/raftcache
work=$(mktemp -d)
declare -A pids
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
initial="1=127.0.0.1:$((BASE + 11)),2=127.0.0.1:$((BASE + 12)),3=127.0.0.1:$((BASE + 13))"
start() {
  "$bin" serve --id "$1" --listen "127.0.0.1:$((BASE + $1))" --peer-listen "127.0.0.1:$((BASE + 10 + $1))" \
    --data-dir "$work/n$1" --initial-cluster "$initial" --snapshot-every "$SNAPSHOT_EVERY" >>"$work/n$1.log" 2>&1 &
  pids[$1]=$!
}
field() { "$bin" status --addr "127.0.0.1:$((BASE + $1))" --json | python3 -c "import json,sys; v=json.load(sys.stdin)['$2']; print(0 if v is None else v)"; }
for i in 1 2 3; do start "$i"; done
for _ in $(seq 1 100); do leader=$(field 1 leader 2>/dev/null || echo 0); [ "$leader" != 0 ] && break; sleep 0.2; done
follower=$(( leader % 3 + 1 )); other=$(( follower % 3 + 1 )); [ "$other" = "$leader" ] && other=$(( other % 3 + 1 ))
echo "leader $leader; stopping follower $follower"
kill "${pids[$follower]}"; wait "${pids[$follower]}" 2>/dev/null || true

# Unique keys k0..k(WRITES-1): the load generator's keys are random, so write them with a loop
# of pipelined client processes instead: 16 writers, each a contiguous range.
t0=$(date +%s.%N)
"$py" - "$bin" "$((BASE + leader)),$((BASE + other))" "$WRITES" "$VALUE_BYTES" <<'EOF'
import subprocess, sys, threading
sys.path.insert(0, "target/py-gen")
from thrift.transport import TSocket, TTransport
from thrift.protocol import TBinaryProtocol
from cache import CacheService
from cache.ttypes import CacheEntry
bin_, ports, writes, value_bytes = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
def writer(n, lo, hi):
    t = TTransport.TBufferedTransport(TSocket.TSocket("127.0.0.1", int(ports[n % len(ports)])))
    c = CacheService.Client(TBinaryProtocol.TBinaryProtocol(t)); t.open()
    for i in range(lo, hi):
        c.put(CacheEntry(key=f"k{i}", value=f"{i:0{value_bytes}d}"))
    t.close()
n = 16; step = (writes + n - 1) // n
threads = [threading.Thread(target=writer, args=(j, j * step, min(writes, (j + 1) * step))) for j in range(n)]
[t.start() for t in threads]; [t.join() for t in threads]
EOF
t1=$(date +%s.%N)
echo "wrote $WRITES keys in $(python3 -c "print(f'{$t1-$t0:.1f}')") s; leader last log index: $("$bin" status --addr 127.0.0.1:$((BASE + leader)) --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_log_index"])')"
grep -h "snapshot written" "$work/n$leader.log" | tail -1 || true

start "$follower"; t2=$(date +%s.%N)
target=$(field "$leader" last_applied)
for _ in $(seq 1 1200); do
  applied=$(field "$follower" last_applied 2>/dev/null || echo 0)
  [ "$applied" -ge "$target" ] && break
  sleep 0.1
done
t3=$(date +%s.%N)
echo "follower $follower applied up to $applied (leader at $target) $(python3 -c "print(f'{$t3-$t2:.1f}')") s after restart"
grep -h "snapshot installed" "$work/n$follower.log" | tail -1 || echo "(no snapshot installed: caught up from the log)"
echo "follower peak RSS: $(grep VmHWM /proc/${pids[$follower]}/status | awk '{print $2/1024 " MiB"}'); leader peak RSS: $(grep VmHWM /proc/${pids[$leader]}/status | awk '{print $2/1024 " MiB"}')"

# Every key, locally on the follower and on the leader.
"$py" - "$((BASE + follower))" "$((BASE + leader))" "$WRITES" <<'EOF'
import sys
sys.path.insert(0, "target/py-gen")
from thrift.transport import TSocket, TTransport
from thrift.protocol import TBinaryProtocol
from cache import CacheService
def client(port):
    t = TTransport.TBufferedTransport(TSocket.TSocket("127.0.0.1", int(port))); t.open()
    return CacheService.Client(TBinaryProtocol.TBinaryProtocol(t))
f, l, writes = client(sys.argv[1]), client(sys.argv[2]), int(sys.argv[3])
mismatch = sum(1 for i in range(writes) if f.get(f"k{i}").value != l.get(f"k{i}").value)
print(f"local reads compared for {writes} keys: {mismatch} mismatches")
sys.exit(1 if mismatch else 0)
EOF
