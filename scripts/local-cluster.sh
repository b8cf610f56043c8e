# Sourced by the benchmark scripts: a fresh 3-node raftcache cluster on loopback, stopped (and
# its data removed) when the script exits. Before sourcing, set BIN (the raftcache binary) and
# BASE (client ports BASE+1..3, peer ports BASE+11..13, HTTP ports BASE+21..23). After `cluster_start [serve flags]`:
# `pids` holds the node processes, `work` their data and logs, `cluster_leader` prints the id
# the nodes elected.
work=$(mktemp -d)
pids=()
cluster_stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cluster_stop EXIT

cluster_addr() { echo "127.0.0.1:$((BASE + $1))"; }
cluster_addrs() { echo "$(cluster_addr 1),$(cluster_addr 2),$(cluster_addr 3)"; }

cluster_start() {
  local initial="1=127.0.0.1:$((BASE + 11)),2=127.0.0.1:$((BASE + 12)),3=127.0.0.1:$((BASE + 13))"
  for i in 1 2 3; do
    "$BIN" serve --id "$i" --listen "$(cluster_addr "$i")" --peer-listen "127.0.0.1:$((BASE + 10 + i))" \
      --http-listen "127.0.0.1:$((BASE + 20 + i))" --data-dir "$work/n$i" --initial-cluster "$initial" "$@" >"$work/n$i.log" 2>&1 &
    pids+=($!)
  done
}

# One field of node $1's `status --json` (0 when absent).
cluster_status_field() {
  "$BIN" status --addr "$(cluster_addr "$1")" --json |
    python3 -c "import json,sys; print(json.load(sys.stdin)['$2'] or 0)"
}

# The leader's id, once node 1 knows it (gives up after 20 s).
cluster_leader() {
  local leader=0
  for _ in $(seq 1 100); do
    leader=$(cluster_status_field 1 leader 2>/dev/null || echo 0)
    [ "$leader" != 0 ] && break
    sleep 0.2
  done
  [ "$leader" != 0 ] || { echo "no leader elected" >&2; return 1; }
  echo "$leader"
}
