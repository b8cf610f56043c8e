#!/usr/bin/env bash
# Starts a local raftcache cluster: NODES processes (default 3) on 127.0.0.1, node N with
# client port BASE_CLIENT_PORT+N-1 (default 9091..), peer port BASE_PEER_PORT+N-1 (9191..) and
# HTTP port (metrics, health, readiness) BASE_HTTP_PORT+N-1 (9291..).
# Data and logs go under cluster/.local/, the PIDs into cluster/.local/pids. Waits until the
# nodes agree on a leader, then prints how to use them. Stop with cluster/stop-local.sh.
#
# Environment:
#   NODES=3                 number of nodes
#   BASE_CLIENT_PORT=9091   client port of node 1
#   BASE_PEER_PORT=9191     peer port of node 1
#   BASE_HTTP_PORT=9291     HTTP port of node 1 (GET /metrics, /health, /ready)
#   RAFTCACHE_BIN=path      binary to run (default: `cargo build --release`, target/release)
#   LEADER_TIMEOUT=30       seconds to wait for a leader
#   RUST_LOG=...            log filter of the nodes (default: the binary's, `serve --help`)
#   TLS=1                   TLS on the client and the peer ports (mutual TLS between nodes),
#                           with a test CA and certificates made by cluster/make-certs.sh in
#                           cluster/.local/certs (kept across starts); clients pass
#                           --tls-ca cluster/.local/certs/ca.pem
#
# A second start reuses the data under cluster/.local (--initial-cluster is ignored once a data
# dir holds state): start with the same NODES and ports, or wipe first (stop-local.sh --wipe).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
local_dir="$here/.local"
pids_file="$local_dir/pids"

nodes="${NODES:-3}"
base_client="${BASE_CLIENT_PORT:-9091}"
base_peer="${BASE_PEER_PORT:-9191}"
base_http="${BASE_HTTP_PORT:-9291}"
leader_timeout="${LEADER_TIMEOUT:-30}"

die() { echo "start-local: $*" >&2; exit 1; }

is_number() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_number "$nodes" && [ "$nodes" -ge 1 ] || die "NODES must be a positive integer, not '$nodes'"
is_number "$base_client" || die "BASE_CLIENT_PORT must be a port number, not '$base_client'"
is_number "$base_peer" || die "BASE_PEER_PORT must be a port number, not '$base_peer'"
is_number "$base_http" || die "BASE_HTTP_PORT must be a port number, not '$base_http'"
is_number "$leader_timeout" || die "LEADER_TIMEOUT must be a number of seconds"
[ $((base_client + nodes - 1)) -le 65535 ] && [ $((base_peer + nodes - 1)) -le 65535 ] \
  && [ $((base_http + nodes - 1)) -le 65535 ] || die "ports out of range"
overlap() { [ $(($1 + nodes)) -gt "$2" ] && [ $(($2 + nodes)) -gt "$1" ]; }
if overlap "$base_client" "$base_peer" || overlap "$base_client" "$base_http" || overlap "$base_peer" "$base_http"; then
  die "client ports $base_client.., peer ports $base_peer.. and HTTP ports $base_http.. overlap for $nodes nodes"
fi

# A process is alive if it exists and is not a zombie (an unreaped zombie still answers kill -0).
alive() {
  local pid="$1" stat
  kill -0 "$pid" 2>/dev/null || return 1
  stat="$(ps -o stat= -p "$pid" 2>/dev/null || true)"
  [ -n "$stat" ] && [[ "$stat" != Z* ]]
}

# Refuse to start over a running cluster.
if [ -f "$pids_file" ]; then
  running=()
  while read -r pid id _; do
    [ -n "${pid:-}" ] || continue
    if alive "$pid"; then running+=("node $id (pid $pid)"); fi
  done <"$pids_file"
  if [ "${#running[@]}" -gt 0 ]; then
    die "a local cluster is already running: ${running[*]}. Stop it first: cluster/stop-local.sh"
  fi
  rm -f "$pids_file"
fi

# The binary.
if [ -n "${RAFTCACHE_BIN:-}" ]; then
  bin="$RAFTCACHE_BIN"
else
  echo "start-local: building (cargo build --release)..."
  (cd "$root" && cargo build --release --quiet --bin raftcache) || die "build failed"
  bin="${CARGO_TARGET_DIR:-$root/target}/release/raftcache"
fi
[ -x "$bin" ] || die "no executable raftcache at $bin (set RAFTCACHE_BIN)"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

mkdir -p "$local_dir"

client_addr() { echo "127.0.0.1:$((base_client + $1 - 1))"; }
peer_addr() { echo "127.0.0.1:$((base_peer + $1 - 1))"; }
http_addr() { echo "127.0.0.1:$((base_http + $1 - 1))"; }

tls_flags() { :; }
client_tls=()
if [ "${TLS:-0}" = 1 ]; then
  certs="$local_dir/certs"
  NODES="$nodes" "$here/make-certs.sh" "$certs" >/dev/null || die "cannot make the test certificates"
  tls_flags() {
    echo "--tls-cert $certs/node-$1.pem --tls-key $certs/node-$1-key.pem" \
      "--peer-tls-cert $certs/node-$1.pem --peer-tls-key $certs/node-$1-key.pem --peer-tls-ca $certs/ca.pem"
  }
  client_tls=(--tls-ca "$certs/ca.pem")
fi

initial=""
for id in $(seq 1 "$nodes"); do
  initial="${initial:+$initial,}$id=$(peer_addr "$id")/$(client_addr "$id")"
done

# If anything below fails, stop what this script started so no half cluster is left behind.
started=()
cleanup_on_failure() {
  local pid
  [ "${#started[@]}" -gt 0 ] || return 0
  echo "start-local: stopping the nodes started so far" >&2
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local any=0
    for pid in "${started[@]}"; do if alive "$pid"; then any=1; fi; done
    [ "$any" = 0 ] && break
    sleep 0.1
  done
  for pid in "${started[@]}"; do if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi; done
  rm -f "$pids_file"
}
trap 'cleanup_on_failure' ERR
trap 'cleanup_on_failure; exit 130' INT TERM

fail() {
  echo "start-local: $*" >&2
  cleanup_on_failure
  trap - ERR
  exit 1
}

: >"$pids_file"
for id in $(seq 1 "$nodes"); do
  data="$local_dir/node-$id"
  log="$local_dir/node-$id.log"
  mkdir -p "$data"
  echo "=== $(date '+%F %T') start-local: starting node $id" >>"$log"
  # nohup: the nodes outlive this script and the terminal it ran in.
  # shellcheck disable=SC2046
  nohup "$bin" serve $(tls_flags "$id") \
    --id "$id" \
    --listen "$(client_addr "$id")" \
    --peer-listen "$(peer_addr "$id")" \
    --http-listen "$(http_addr "$id")" \
    --data-dir "$data" \
    --initial-cluster "$initial" \
    </dev/null >>"$log" 2>&1 &
  pid=$!
  started+=("$pid")
  echo "$pid $id $(client_addr "$id") $(peer_addr "$id")" >>"$pids_file"
done

# Wait until every node answers status and all name the same leader, which says it leads.
json_field() { sed -n "s/.*\"$1\":\([0-9a-z\"]*\).*/\1/p"; }
deadline=$((SECONDS + leader_timeout))
leader=""
while :; do
  for i in "${!started[@]}"; do
    if ! alive "${started[$i]}"; then
      id=$((i + 1))
      echo "start-local: node $id (pid ${started[$i]}) exited; its log ends with:" >&2
      tail -n 20 "$local_dir/node-$id.log" >&2
      fail "node $id did not start"
    fi
  done
  agreed=""
  ok=1
  for id in $(seq 1 "$nodes"); do
    status="$("$bin" status --json --addr "$(client_addr "$id")" "${client_tls[@]}" --timeout-secs 1 2>/dev/null)" || { ok=0; break; }
    l="$(echo "$status" | json_field leader)"
    if ! is_number "$l"; then ok=0; break; fi
    if [ -z "$agreed" ]; then agreed="$l"; elif [ "$agreed" != "$l" ]; then ok=0; break; fi
    if [ "$id" = "$l" ] && [ "$(echo "$status" | json_field role)" != '"leader"' ]; then ok=0; break; fi
  done
  if [ "$ok" = 1 ] && [ -n "$agreed" ] && [ "$agreed" -ge 1 ] && [ "$agreed" -le "$nodes" ]; then
    leader="$agreed"
    break
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    for id in $(seq 1 "$nodes"); do
      echo "--- node $id: $("$bin" status --json --addr "$(client_addr "$id")" "${client_tls[@]}" --timeout-secs 1 2>&1 || true)" >&2
    done
    fail "no leader elected within ${leader_timeout}s; logs: $local_dir/node-*.log"
  fi
  sleep 0.2
done
trap - ERR INT TERM

echo "start-local: $nodes-node cluster up, leader is node $leader"
echo
printf '  %-6s %-8s %-17s %-17s %-17s %s\n' node pid client peer http data
for id in $(seq 1 "$nodes"); do
  printf '  %-6s %-8s %-17s %-17s %-17s %s\n' "$id" "${started[$((id - 1))]}" "$(client_addr "$id")" \
    "$(peer_addr "$id")" "$(http_addr "$id")" "cluster/.local/node-$id"
done
cat <<EOF

Logs: cluster/.local/node-N.log   PIDs: cluster/.local/pids
Try (any node accepts writes; followers forward them to the leader):
  $bin put greeting hello --addr $(client_addr 1)${client_tls[*]:+ ${client_tls[*]}}
  $bin get greeting --addr $(client_addr "$nodes") --linearizable${client_tls[*]:+ ${client_tls[*]}}
  $bin status --json --addr $(client_addr 1)${client_tls[*]:+ ${client_tls[*]}}
  curl -s $(http_addr 1)/metrics        # Prometheus metrics; /ready and /health for probes
  $bin check ready --http $(http_addr 1)
Stop with: cluster/stop-local.sh   (add --wipe to delete the data too)
EOF
