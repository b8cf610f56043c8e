# Sourced by the benchmark scripts: a fresh 3-node raftcache cluster on loopback, stopped (and
# its data removed) when the script exits. Before sourcing, set BIN (the raftcache binary) and
# BASE (client ports BASE+1..3, peer ports BASE+11..13, HTTP ports BASE+21..23). After `cluster_start [serve flags]`:
# `pids` holds the node processes (node i at index i-1), `work` their data and logs,
# `cluster_leader` prints the id the nodes elected. `cluster_stop_node I [SIGNAL]` stops one node
# (SIGTERM by default) and `cluster_start_node I [serve flags]` starts it again on its data dir.
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
  for i in 1 2 3; do cluster_start_node "$i" "$@"; done
}

# Starts node $1 with serve flags $2...; its log goes on in $work/n$1.log.
cluster_start_node() {
  local i=$1
  shift
  local initial="1=127.0.0.1:$((BASE + 11)),2=127.0.0.1:$((BASE + 12)),3=127.0.0.1:$((BASE + 13))"
  "$BIN" serve --id "$i" --listen "$(cluster_addr "$i")" --peer-listen "127.0.0.1:$((BASE + 10 + i))" \
    --http-listen "127.0.0.1:$((BASE + 20 + i))" --data-dir "$work/n$i" --initial-cluster "$initial" "$@" >>"$work/n$i.log" 2>&1 &
  pids[i - 1]=$!
}

# Stops node $1 with signal $2 (TERM by default) and waits for it to exit (after 60 s: KILL).
cluster_stop_node() {
  local pid=${pids[$1 - 1]}
  unset "pids[$1 - 1]"
  kill -s "${2:-TERM}" "$pid" 2>/dev/null || true
  for _ in $(seq 1 600); do cluster_running "$pid" || break; sleep 0.1; done
  if cluster_running "$pid"; then
    echo "node $1 (pid $pid) still running 60 s after SIG${2:-TERM}: killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# Whether process $1 runs (and is not a zombie waiting to be reaped).
cluster_running() {
  local state
  state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) && [ "$state" != Z ]
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
    # `status` exits 1 (after printing its JSON) while the node knows no leader.
    leader=$(cluster_status_field 1 leader 2>/dev/null || true)
    leader=${leader:-0}
    [ "$leader" != 0 ] && break
    sleep 0.2
  done
  [ "$leader" != 0 ] || { echo "no leader elected" >&2; return 1; }
  echo "$leader"
}
