#!/usr/bin/env bash
# Stops the local cluster started by cluster/start-local.sh: SIGTERM to every PID recorded in
# cluster/.local/pids, a wait of up to STOP_TIMEOUT seconds (default 10), SIGKILL for any node
# still running, then removes the pids file. With --wipe, also deletes cluster/.local (data and
# logs).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
local_dir="$here/.local"
pids_file="$local_dir/pids"
stop_timeout="${STOP_TIMEOUT:-10}"

wipe=0
for arg in "$@"; do
  case "$arg" in
    --wipe) wipe=1 ;;
    -h | --help)
      echo "usage: cluster/stop-local.sh [--wipe]"
      exit 0
      ;;
    *)
      echo "stop-local: unknown argument '$arg' (usage: cluster/stop-local.sh [--wipe])" >&2
      exit 2
      ;;
  esac
done

# Alive: exists and is not a zombie (an unreaped zombie still answers kill -0).
alive() {
  local pid="$1" stat
  kill -0 "$pid" 2>/dev/null || return 1
  stat="$(ps -o stat= -p "$pid" 2>/dev/null || true)"
  [ -n "$stat" ] && [[ "$stat" != Z* ]]
}

# Only signal a PID that still runs raftcache: a recorded PID may have been reused since.
is_raftcache() {
  ps -o args= -p "$1" 2>/dev/null | grep -q 'raftcache.* serve'
}

pids=()
if [ -f "$pids_file" ]; then
  while read -r pid id _; do
    [ -n "${pid:-}" ] || continue
    if alive "$pid"; then
      if is_raftcache "$pid"; then
        pids+=("$pid")
        kill -TERM "$pid" 2>/dev/null || true
        echo "stop-local: SIGTERM to node $id (pid $pid)"
      else
        echo "stop-local: pid $pid (node $id) is no longer raftcache; leaving it alone"
      fi
    fi
  done <"$pids_file"
else
  echo "stop-local: no $pids_file: nothing to stop"
fi

if [ "${#pids[@]}" -gt 0 ]; then
  deadline=$((SECONDS + stop_timeout))
  while :; do
    left=()
    for pid in "${pids[@]}"; do if alive "$pid"; then left+=("$pid"); fi; done
    [ "${#left[@]}" -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for pid in "${left[@]}"; do
        echo "stop-local: pid $pid still running after ${stop_timeout}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      done
      for _ in $(seq 1 50); do
        still=0
        for pid in "${left[@]}"; do if alive "$pid"; then still=1; fi; done
        [ "$still" = 0 ] && break
        sleep 0.1
      done
      break
    fi
    sleep 0.1
  done
  echo "stop-local: stopped"
fi
rm -f "$pids_file"

if [ "$wipe" = 1 ]; then
  rm -rf "$local_dir"
  echo "stop-local: wiped $local_dir"
fi
