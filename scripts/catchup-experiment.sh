#!/usr/bin/env bash
# Issue-3 acceptance experiment, by hand (too long for the test suite): on a 3-node release
# cluster, stop a follower, write WRITES distinct keys while it is down (the others snapshot
# every SNAPSHOT_EVERY entries and compact their logs), restart it, and time how long until it
# has applied the leader's last index. Then compare local reads on the follower and the leader
# (every key up to 200,000 keys, else 20,000 evenly spaced ones), and print both nodes' peak RSS.
#
#   scripts/catchup-experiment.sh                                                  # 100,032 keys
#   WRITES=1280000 VALUE_BYTES=1000 SNAPSHOT_EVERY=50000 scripts/catchup-experiment.sh   # ~1.2 GiB
set -euo pipefail
cd "$(dirname "$0")/.."

WRITES=${WRITES:-100032}
VALUE_BYTES=${VALUE_BYTES:-100}
SNAPSHOT_EVERY=${SNAPSHOT_EVERY:-10000}
BASE=${BASE_PORT:-9800}
cargo build --release --quiet -p raftcache -p raftcache-bench --bins
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
    --http-listen "127.0.0.1:$((BASE + 20 + $1))" --data-dir "$work/n$1" --initial-cluster "$initial" --snapshot-every "$SNAPSHOT_EVERY" >>"$work/n$1.log" 2>&1 &
  pids[$1]=$!
}
field() { "$bin" status --addr "127.0.0.1:$((BASE + $1))" --json | python3 -c "import json,sys; v=json.load(sys.stdin)['$2']; print(0 if v is None else v)"; }
secs() { python3 -c "print(f'{$2-$1:.1f}')"; }
for i in 1 2 3; do start "$i"; done
for _ in $(seq 1 100); do leader=$(field 1 leader 2>/dev/null || echo 0); [ "$leader" != 0 ] && break; sleep 0.2; done
follower=$(( leader % 3 + 1 )); other=$(( follower % 3 + 1 )); [ "$other" = "$leader" ] && other=$(( other % 3 + 1 ))
echo "leader $leader; stopping follower $follower"
kill "${pids[$follower]}"; wait "${pids[$follower]}" 2>/dev/null || true

# WRITES distinct keys key-0..key-(WRITES-1): 64 clients, each writing its own range.
t0=$(date +%s.%N)
target/release/raftcache-bench --addrs "127.0.0.1:$((BASE + leader)),127.0.0.1:$((BASE + other))" \
  --clients 64 --op put --sequential --max-ops "$WRITES" --seconds 3600 --value-bytes "$VALUE_BYTES"
t1=$(date +%s.%N)
echo "wrote $WRITES keys in $(secs "$t0" "$t1") s; leader last log index: $(field "$leader" last_log_index)"
grep -h "snapshot written" "$work/n$leader.log" | tail -1 || true

term_before=$(field "$leader" term)
start "$follower"; t2=$(date +%s.%N)
target=$(field "$leader" last_applied)
for _ in $(seq 1 6000); do
  applied=$(field "$follower" last_applied 2>/dev/null || echo 0)
  [ "$applied" -ge "$target" ] && break
  sleep 0.1
done
t3=$(date +%s.%N)
echo "follower $follower applied up to $applied (leader at $target) $(secs "$t2" "$t3") s after restart"
echo "term: $term_before before the restart, $(field "$leader" term) after the catch-up (a change means elections happened)"
grep -h "snapshot installed" "$work/n$follower.log" | tail -1 || echo "(no snapshot installed: caught up from the log)"
hwm() { grep VmHWM "/proc/$1/status" | awk '{printf "%.0f MiB", $2/1024}'; }
echo "peak RSS (VmHWM): follower $(hwm "${pids[$follower]}"), leader $(hwm "${pids[$leader]}")"
du -sh "$work/n$leader/snapshots" "$work/n$leader/db"

"$py" - "$((BASE + follower))" "$((BASE + leader))" "$WRITES" <<'PYTHON'
import sys
sys.path.insert(0, "target/py-gen")
from thrift.transport import TSocket, TTransport
from thrift.protocol import TBinaryProtocol
from cache import CacheService
def client(port):
    t = TTransport.TBufferedTransport(TSocket.TSocket("127.0.0.1", int(port))); t.open()
    return CacheService.Client(TBinaryProtocol.TBinaryProtocol(t))
f, l, writes = client(sys.argv[1]), client(sys.argv[2]), int(sys.argv[3])
keys = (writes // 64) * 64
indexes = range(keys) if keys <= 200_000 else range(0, keys, keys // 20_000)
mismatch = sum(1 for i in indexes if f.get(f"key-{i}").value != l.get(f"key-{i}").value)
print(f"local reads compared for {len(indexes)} of {keys} keys: {mismatch} mismatches")
sys.exit(1 if mismatch else 0)
PYTHON
