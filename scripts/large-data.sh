#!/usr/bin/env bash
# A 3-node raftcache cluster holding many keys (by default 10,000,000 keys of 100-byte values:
# about 1 GB of values per node), on loopback. Prints a Markdown report of:
#   1. the load: KEYS distinct keys written once each with `put_many` (raftcache-bench --op
#      put-many --sequential, BATCH entries per call, LOAD_CLIENTS clients): time and keys/s;
#   2. each node's RSS (VmRSS from /proc/<pid>/status, sampled every second): the maximum during
#      the load, after it, during each snapshot build the nodes made by themselves, during the
#      catch-up and the throughput runs; and VmHWM;
#   3. each node's data dir on disk (`du -sb`, total and by sub-directory), against the raw data
#      (the bytes of the keys and values);
#   4. puts and gets at 64 clients over the whole key range (medians of REPEAT runs of
#      SECONDS_PER_RUN), beside the same points on a cluster of SMALL_KEYS (10,000) keys: a
#      fresh cluster the script loads and measures first, unless SMALL gives its ops/s;
#   5. restarts: a follower stopped with SIGTERM, the same follower with `kill -9`, then the
#      other follower and the leader with SIGTERM: time until each answers a linearizable get
#      (`raftcache get --linearizable`), and until its `status` shows it has applied what the
#      leader has;
#   6. catch-up: one follower is stopped before the load (it misses all of it) and started
#      after it: time until its applied index reaches the leader's, its RSS meanwhile, and the
#      snapshots it installed.
# In time: the small cluster; then the large one: a follower stopped, the load, the catch-up,
# du, the restarts, the throughput runs.
#
#   scripts/large-data.sh                                # the full run: 10 M keys, tens of GB of disk
#   KEYS=200000 REPEAT=1 scripts/large-data.sh           # a small run: a couple of minutes
#   SMALL="put=9000,get=60000" scripts/large-data.sh     # the small cluster's ops/s, from an earlier run
#   SERVE_FLAGS="--cache-capacity-bytes 67108864" scripts/large-data.sh   # more flags for every node
#   TMPDIR=/big/disk scripts/large-data.sh               # the data dirs on another filesystem
#
# Knobs: KEYS (10,000,000; a multiple of LOAD_CLIENTS), VALUE_BYTES (100), BATCH (500 entries per
# put_many call), LOAD_CLIENTS (16), REPEAT (3), SECONDS_PER_RUN (5), SMALL_KEYS (10,000), SMALL
# (empty: measure the small cluster; "put=OPS,get=OPS": take its ops/s as given), BASE_PORT
# (9850: client ports BASE_PORT+1..3, peer +11..13, HTTP +21..23), SERVE_FLAGS (more `serve`
# flags for every node), SNAPSHOT_EVERY and RUN_SNAPSHOT_EVERY (below; not in SERVE_FLAGS),
# LOAD_TIMEOUT (7,200 s), WAIT_TIMEOUT (1,800 s: each wait for a catch-up, a restart, an apply).
# Every wait gives up after its timeout and says what it waited for. The data dirs are in a
# temporary directory (under TMPDIR) removed at exit; every node is stopped by its pid.
#
# Snapshots (`serve --snapshot-every`, in log entries). Group commit packs several put_many calls
# into one log entry (at most one per load client; about 2,500 keys an entry was seen), so the
# load makes few entries (some thousands for 10 M keys): with serve's default of 50,000 no node
# would build a snapshot, and the follower that missed the load would catch up from the log. So
# the nodes start with SNAPSHOT_EVERY, by default half the fewest entries the load can make,
# KEYS / (2 x BATCH x LOAD_CLIENTS) (at least 10): each builds two or more during the load. But
# the single puts of the throughput runs make hundreds of small entries a second, and at that
# setting a large cluster would build its whole data set into a snapshot again every few seconds
# of them; the restarts of section 5 bring every node back with RUN_SNAPSHOT_EVERY (50,000,
# serve's default) instead, as the small cluster runs, and the throughput runs come after them.
# A follower within --snapshot-keep-log (1,000) entries of the leader's snapshot catches up from
# the log: below about 2 million keys the catch-up goes by the log, unless SERVE_FLAGS has a
# smaller --snapshot-keep-log (KEYS=200000 SERVE_FLAGS="--snapshot-keep-log 10").
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-10000000}
VALUE_BYTES=${VALUE_BYTES:-100}
BATCH=${BATCH:-500}
LOAD_CLIENTS=${LOAD_CLIENTS:-16}
REPEAT=${REPEAT:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
SMALL_KEYS=${SMALL_KEYS:-10000}
SMALL=${SMALL:-}
BASE=${BASE_PORT:-9850}
SERVE_FLAGS=${SERVE_FLAGS:-}
min_entries=$((KEYS / (BATCH * LOAD_CLIENTS)))
SNAPSHOT_EVERY=${SNAPSHOT_EVERY:-$((min_entries / 2 > 10 ? min_entries / 2 : 10))}
RUN_SNAPSHOT_EVERY=${RUN_SNAPSHOT_EVERY:-50000}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-7200}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-1800}
CLIENTS=64 # clients of the throughput points

if [ $((KEYS % LOAD_CLIENTS)) != 0 ] || [ $((SMALL_KEYS % LOAD_CLIENTS)) != 0 ]; then
  echo "large-data: KEYS ($KEYS) and SMALL_KEYS ($SMALL_KEYS) must be multiples of LOAD_CLIENTS ($LOAD_CLIENTS): each load client writes a range of its own" >&2
  exit 2
fi

# serve's defaults: --max-batch-items 1000, --max-batch-bytes 1 MiB of keys and values.
if [[ $SERVE_FLAGS != *--max-batch-* ]] && { [ "$BATCH" -gt 1000 ] || [ $((BATCH * (VALUE_BYTES + 12))) -gt 1048576 ]; }; then
  echo "large-data: put_many calls of BATCH ($BATCH) entries of VALUE_BYTES ($VALUE_BYTES) exceed serve's --max-batch-items (1000) or --max-batch-bytes (1 MiB): lower BATCH, or raise those in SERVE_FLAGS" >&2
  exit 2
fi

cargo build --release --quiet -p raftcache -p raftcache-bench --bins
BIN=${BIN:-target/release/raftcache}
bench=target/release/raftcache-bench
# shellcheck source=scripts/local-cluster.sh
. scripts/local-cluster.sh
# shellcheck disable=SC2206
load_flags=(--snapshot-every "$SNAPSHOT_EVERY" $SERVE_FLAGS)
# shellcheck disable=SC2206
run_flags=(--snapshot-every "$RUN_SNAPSHOT_EVERY" $SERVE_FLAGS)
addrs=$(cluster_addrs)
sampler_pid=
poller_pid=
bench_pid=
: >"$work/facts"
: >"$work/pids"

say() { echo "large-data: $*" >&2; }
now() { date +%s.%N; }
# Records a fact for the report: name $1, value $2...
fact() { echo "$1=${*:2}" >>"$work/facts"; }
# Marks the start of phase $1: the RSS tables group the samples by phase.
mark() { echo "$(now) $1" >>"$work/marks"; }
# Field $2 of node $1's `status --json`; 0 when the node does not answer.
status_field() {
  local v
  v=$(cluster_status_field "$1" "$2" 2>/dev/null || true)
  echo "${v:-0}"
}
# Field $2 (VmRSS, VmHWM) of process $1's /proc status, in KiB (empty when it has none).
proc_kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status" 2>/dev/null || true; }
node_kb() { proc_kb "${pids[$1 - 1]}" "$2"; }

# Runs "$@" every 0.1 s until it succeeds, for at most $1 s; else says it gave up waiting for $2.
wait_for() {
  local timeout=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      say "gave up after $timeout s waiting for $what"
      return 1
    fi
    sleep 0.1
  done
}
# Node $1 has applied index $2 or later.
applied_at_least() { [ "$(status_field "$1" last_applied)" -ge "$2" ]; }
# Node $1 has applied what the leader that node $2 knows has applied.
caught_up() {
  local leader
  leader=$(status_field "$2" leader)
  [ "$leader" != 0 ] && applied_at_least "$1" "$(status_field "$leader" last_applied)"
}
# Node $1 knows a leader and has applied index $2 or later.
knows_leader_and_applied() { [ "$(status_field "$1" leader)" != 0 ] && applied_at_least "$1" "$2"; }
# Node $1 answers a linearizable get of key $2.
answers() { "$BIN" get --linearizable --addr "$(cluster_addr "$1")" --timeout-secs 2 "$2"; }

# The running nodes, one "NODE PID" line each, for the RSS sampler.
publish_pids() {
  for i in 1 2 3; do
    if [ -n "${pids[i - 1]:-}" ]; then echo "$i ${pids[i - 1]}"; fi
  done >"$work/pids.new"
  mv "$work/pids.new" "$work/pids"
}
# Starts node $1 with serve flags $2...
start_node() {
  cluster_start_node "$@"
  publish_pids
}
# Stops node $1 with signal $2 (TERM by default).
stop_node() {
  cluster_stop_node "$@"
  publish_pids
}
# Every second, "TIME NODE VmRSS_KiB" of every running node, into $work/rss.
sample_rss() {
  local t node pid kb
  while :; do
    t=$(now)
    while read -r node pid; do
      kb=$(proc_kb "$pid" VmRSS)
      if [ -n "$kb" ]; then echo "$t $node $kb"; fi
    done <"$work/pids"
    sleep 1
  done >>"$work/rss"
}

# Writes keys key-0..key-($1 - 1) once each through put_many, LOAD_CLIENTS clients spread over
# the addresses $2 (a call that fails, as during an election, is sent again, up to 10 times);
# the generator's line goes to $work/load. In the background, so that a signal stops the run.
load() {
  "$bench" --addrs "$2" --clients "$LOAD_CLIENTS" --op put-many --batch "$BATCH" --sequential \
    --retries 10 --max-ops "$1" --keys "$1" --value-bytes "$VALUE_BYTES" --seconds "$LOAD_TIMEOUT" >"$work/load" &
  bench_pid=$!
  wait "$bench_pid"
  bench_pid=
}

# Puts, then gets, at CLIENTS clients over $2 keys, REPEAT runs each, tagged $1, into $work/tput.
throughput() {
  local tag=$1 keys=$2 pidlist op run
  pidlist=$(IFS=,; echo "${pids[*]}")
  for op in put get; do
    for run in $(seq 1 "$REPEAT"); do
      say "$tag cluster: $op x$CLIENTS, run $run of $REPEAT"
      echo "tag=$tag $("$bench" --addrs "$addrs" --clients "$CLIENTS" --op "$op" --seconds "$SECONDS_PER_RUN" \
        --keys "$keys" --value-bytes "$VALUE_BYTES" --pids "$pidlist")" >>"$work/tput"
    done
  done
}

# Stops node $1 (role $2 for the report) with signal $3, starts it again with the run flags, and
# times its exit, then, side by side, its first answer to a linearizable get and its catch-up:
# knowing a leader and having applied what the leader had applied before the stop (and, for a
# restarted leader, the first entry of the next term). $4 is a node that stays up.
restart() {
  local node=$1 role=$2 how=$3 peer=$4 tag leader target
  tag="r$(($(wc -l <"$work/restarts") + 1))"
  echo "$tag" >>"$work/restarts"
  leader=$(status_field "$peer" leader)
  target=$(status_field "$leader" last_applied)
  if [ "$node" = "$leader" ]; then target=$((target + 1)); fi
  say "restart: stopping $role $node with SIG$how"
  fact "${tag}_what" "$node $role $how"
  fact "${tag}_stop" "$(now)"
  stop_node "$node" "$how"
  fact "${tag}_exited" "$(now)"
  fact "${tag}_start" "$(now)"
  start_node "$node" "${run_flags[@]}"
  rm -f "$work/answered"
  (if wait_for "$WAIT_TIMEOUT" "node $node to answer a linearizable get after its restart" answers "$node" "key-$((KEYS - 1))"; then
    now >"$work/answered"
  fi) &
  poller_pid=$!
  if wait_for "$WAIT_TIMEOUT" "node $node to know a leader and apply index $target after its restart" knows_leader_and_applied "$node" "$target"; then
    fact "${tag}_caught_up" "$(now)"
  fi
  wait "$poller_pid" || true
  poller_pid=
  if [ -s "$work/answered" ]; then fact "${tag}_answers" "$(cat "$work/answered")"; fi
  fact "${tag}_rss" "$(node_kb "$node" VmRSS)"
  leader=$(status_field "$peer" leader)
  fact "${tag}_leader" "$leader"
  fact "${tag}_applied" "$(status_field "$node" last_applied) / $(status_field "$leader" last_applied)"
}

# The term, as the leader that node $1 knows says.
term() { status_field "$(status_field "$1" leader)" term; }

# The report, from what was measured (all of it, or as far as the run got).
print_report() {
  python3 - "$work" <<'PYTHON'
import datetime, os, re, statistics, sys

work = sys.argv[1]
facts = {}
for line in open(f"{work}/facts"):
    name, _, value = line.rstrip("\n").partition("=")
    facts[name] = value
def fact(name, kind=str):
    return kind(facts[name]) if facts.get(name) else None

def read_rows(path):
    return [line.split() for line in open(path)] if os.path.exists(path) else []
samples = [(float(t), int(n), int(kb)) for t, n, kb in read_rows(f"{work}/rss")]
marks = [(float(t), name) for t, name in read_rows(f"{work}/marks")]
def window(name):
    """The [start, end) of phase `name`: from its mark to the next one."""
    for i, (t, n) in enumerate(marks):
        if n == name:
            return t, marks[i + 1][0] if i + 1 < len(marks) else float("inf")
    return None
def max_kb(node, start, end):
    seen = [kb for t, n, kb in samples if n == node and start <= t < end]
    return (max(seen), len(seen)) if seen else (None, 0)
def mib(kb):
    return "-" if kb is None else f"{kb / 1024:,.0f} MiB"
def phase_max(node, name):
    w = window(name)
    if not w:
        return "-"
    kb, count = max_kb(node, *w)
    return mib(kb) if count else "no sample"
def phase_at(t):
    name = "before the load"
    for mt, n in marks:
        if mt <= t:
            name = n
    return name
def marks_order(t):
    return sum(1 for mt, _ in marks if mt <= t)
def gb(b):
    return f"{b / 1e9:,.2f} GB" if b >= 1e8 else f"{b / 1e6:,.1f} MB" if b >= 1e5 else f"{b / 1e3:,.1f} kB"
def secs(a, b):
    return f"{float(facts[b]) - float(facts[a]):.2f} s" if a in facts and b in facts else "**timed out**"
def log_lines(path, text):
    return [line for line in open(path) if text in line] if os.path.exists(path) else []
def numbers(line):
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
def builds(prefix):
    """(start, end, node, index, records, bytes) of each snapshot the nodes' logs say they wrote."""
    found = []
    for n in (1, 2, 3):
        for line in log_lines(f"{work}/{prefix}n{n}.log", "snapshot written"):
            end = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
            f = numbers(line)
            index = re.search(r"index: (\d+)", line)
            found.append((end - f.get("elapsed_ms", 0) / 1000, end, n, index.group(1) if index else "?",
                          f.get("records", 0), f.get("bytes", 0)))
    return found

keys, raw = fact("keys", int), fact("raw_bytes", int)
leader, behind, other = fact("leader", int), fact("behind", int), fact("other", int)
print(f"# raftcache holding {keys:,} keys\n")
print(facts.get("machine", ""))
print(f"cluster: 3 nodes on loopback; `serve` flags for the load and the catch-up: "
      f"`{facts.get('load_flags')}`; after the restarts, and on the small cluster: "
      f"`{facts.get('run_flags')}`")
print(f"data: {keys:,} keys of {fact('value_bytes')} B; raw data (keys and values): {raw:,} bytes")
if leader:
    print(f"nodes: {leader} led the load, {other} followed it; {behind} was stopped before the "
          f"load and started after it (the catch-up)")
    terms = [(label, facts[f"term_{name}"]) for name, label in (
        ("start", "start"), ("load", "after the load"), ("catchup", "after the catch-up"),
        ("restarts", "after the restarts"), ("end", "at the end")) if f"term_{name}" in facts]
    print("Raft term (a change is an election): " + ", ".join(f"{l} {t}" for l, t in terms))

print("\n## 1. Load\n")
if "load_line" in facts:
    r = dict(kv.split("=", 1) for kv in facts["load_line"].split())
    items, errors = int(r["items"]), int(r["errors"])
    print(f"{fact('load_clients')} clients, each writing its own range of keys once with "
          f"`put_many` of {fact('batch')} entries (`raftcache-bench --op put-many --sequential "
          f"--retries 10`: a failed call is sent again), to the leader and the follower that was up\n")
    print("| keys written | value bytes | time | keys/s | put_many calls | p50 / p99 per call | failed calls (sent again) | log entries (leader's last index) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    short = "" if items == keys else f" (of {keys:,})"
    print(f"| {items:,}{short} | {items * fact('value_bytes', int):,} | {float(r['seconds']):,.1f} s "
          f"| {float(r['items_per_sec']):,.0f} | {int(r['ops']):,} | {int(r['p50_us']) / 1000:.1f} / "
          f"{int(r['p99_us']) / 1000:.1f} ms | {errors} | {fact('log_index_after_load') or '-'} |")
else:
    print("not measured")

print("\n## 2. RSS\n")
if leader:
    roles = {leader: "leader", other: "follower", behind: "follower, down during the load"}
    print("Maxima of the VmRSS samples (one a second) in each phase; after the load: 5 s after "
          "its end; VmHWM: the process's peak. The restarts come between the catch-up and the "
          "throughput runs.\n")
    print("| node | role in the load | max during the load | after the load | VmHWM after the load | max during the catch-up | max during the throughput runs |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for n in sorted(roles):
        down = n == behind
        print(f"| {n} | {roles[n]} | {'down' if down else phase_max(n, 'load')} "
              f"| {'down' if down else mib(fact(f'rss_after_load_{n}', int))} "
              f"| {'down' if down else mib(fact(f'hwm_after_load_{n}', int))} "
              f"| {phase_max(n, 'catch-up')} | {phase_max(n, 'throughput')} |")
    print(f"\nSnapshot builds, by phase and node (each node builds its own, every "
          f"{fact('snapshot_every')} log entries until its restart, {fact('run_snapshot_every')} "
          f"after; RSS before: the last sample before the first build; during: the maximum of "
          f"the samples taken while one ran)\n")
    groups = {}
    for start, end, n, index, records, size in builds(""):
        before = [kb for t, m, kb in samples if m == n and t < start]
        during, count = max_kb(n, start, end)
        g = groups.setdefault((marks_order(start), n), dict(
            phase=phase_at(start), builds=0, longest=0, size=0, samples=0, during=None,
            before=before[-1] if before else None))
        g["builds"] += 1
        g["index"], g["records"] = index, records
        g["size"] = max(g["size"], size)
        g["longest"] = max(g["longest"], end - start)
        g["samples"] += count
        if during is not None:
            g["during"] = max(g["during"] or 0, during)
    if groups:
        print("| phase | node | builds | last: index, records | largest | longest build | RSS before | max RSS during (samples) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for (_, n), g in sorted(groups.items()):
            print(f"| {g['phase']} | {n} | {g['builds']} | {g['index']}, {g['records']:,} | {gb(g['size'])} "
                  f"| {g['longest']:.1f} s | {mib(g['before'])} | {mib(g['during'])} ({g['samples']}) |")
    else:
        print("none: no node wrote a snapshot")
else:
    print("not measured")

print("\n## 3. Disk\n")
du = read_rows(f"{work}/du")
if du:
    parts = sorted({p for _, p, _ in du if p not in ("total", "files")}) + ["files"]
    print(f"`du -sb` of each data dir after the catch-up, and of its sub-directories (files: the "
          f"files beside them); raw data: {raw:,} bytes\n")
    print("| node | total | " + " | ".join(parts) + " | total / raw data |")
    print("|---|---:|" + "---:|" * len(parts) + "---:|")
    for n in sorted({int(n) for n, _, _ in du}):
        size = {}
        for m, p, b in du:
            if int(m) == n:
                size[p] = size.get(p, 0) + int(b)
        cells = " | ".join(gb(size[p]) if p in size else "-" for p in parts)
        print(f"| {n} | {gb(size['total'])} | {cells} | {size['total'] / raw:.1f}x |")
else:
    print("not measured")

print("\n## 4. Throughput\n")
runs = [dict(kv.split("=", 1) for kv in row) for row in read_rows(f"{work}/tput")]
small_given = dict(kv.split("=", 1) for kv in facts["small"].split(",")) if facts.get("small") else {}
small_keys = fact("small_keys", int)
print(f"{fact('clients')} clients spread over the three nodes, random keys over the whole key range, "
      f"median of {fact('repeat')} runs of {fact('seconds_per_run')} s; on the large cluster after "
      f"the restarts; the {small_keys:,}-key points: {facts.get('small_source', '')}; errors: "
      f"failed calls (a get of a key the load did not write is one)\n")
if any(r["tag"] == "large" for r in runs):
    print(f"| op | ops/s, {small_keys:,} keys | ops/s, {keys:,} keys | large / small | p50 / p99 ms, small | p50 / p99 ms, large | server CPU µs/op, small / large | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for op in ("put", "get"):
        def med(tag, key):
            v = [float(r[key]) for r in runs if r["tag"] == tag and r["op"].lower() == op and key in r]
            return statistics.median(v) if v else None
        small_ops = med("small", "ops_per_sec") or (float(small_given[op]) if op in small_given else None)
        large_ops = med("large", "ops_per_sec")
        lat = lambda tag: (f"{med(tag, 'p50_us') / 1000:.2f} / {med(tag, 'p99_us') / 1000:.2f}"
                           if med(tag, "p50_us") is not None else "-")
        cpu = lambda tag: f"{med(tag, 'server_cpu_us_per_op'):.0f}" if med(tag, "server_cpu_us_per_op") else "-"
        errors = sum(int(r["errors"]) for r in runs if r["op"].lower() == op)
        ratio = f"{large_ops / small_ops:.2f}x" if small_ops and large_ops else "-"
        print(f"| {op} | {small_ops or 0:,.0f} | {large_ops or 0:,.0f} | {ratio} | {lat('small')} | {lat('large')} "
              f"| {cpu('small')} / {cpu('large')} | {errors} |")
    w = window("throughput")
    during = sum(1 for start, end, *_ in builds("") if w and start < w[1] and end > w[0])
    print(f"\nSnapshot builds during the runs: {len(builds('small-'))} on the small cluster "
          f"(load included), {during} on the large one")
else:
    print("not measured")

print("\n## 5. Restarts\n")
restarts = [tag for tag, in read_rows(f"{work}/restarts")]
if restarts:
    print("Each node stopped, then started again on its data dir (with the run flags), the cluster "
          "idle. Times from its start, polled side by side every 0.1 s: until a linearizable get "
          "on it (`raftcache get --linearizable`) returned the value; until its `status` showed a "
          "leader and the leader's applied index from before the stop (for a restarted leader, "
          "one more: its successor's first entry), two `status` calls a poll, about 0.1 s. RSS "
          "once both were seen; applied: its last applied index and the leader's, then.\n")
    print("| node | role | stopped with | time to exit | answers a linearizable get | caught up | RSS then | leader after | applied / leader's |")
    print("|---|---|---|---:|---:|---:|---:|---|---|")
    for tag in restarts:
        node, role, how = facts[f"{tag}_what"].split()
        print(f"| {node} | {role} | {'SIGTERM' if how == 'TERM' else 'kill -9'} "
              f"| {secs(f'{tag}_stop', f'{tag}_exited')} | {secs(f'{tag}_start', f'{tag}_answers')} "
              f"| {secs(f'{tag}_start', f'{tag}_caught_up')} | {mib(fact(f'{tag}_rss', int))} "
              f"| {facts.get(f'{tag}_leader', '-')} | {facts.get(f'{tag}_applied', '-')} |")
else:
    print("not measured")

print("\n## 6. Catch-up of the follower that missed the load\n")
if "catchup_start" in facts:
    w = window("catch-up")
    peak, count = max_kb(behind, *w) if w else (None, 0)
    installs = [numbers(line) for line in log_lines(f"{work}/n{behind}.log", "snapshot installed")]
    installed = "; ".join(f"{f.get('records', 0):,} records in {f.get('elapsed_ms', 0) / 1000:.1f} s" for f in installs)
    done = (secs("catchup_start", "catchup_done") if "catchup_done" in facts else
            f"**not within {fact('wait_timeout')} s** (applied {facts.get('catchup_applied')})")
    print(f"Follower {behind}, down during the load, started again; RSS after: 5 s after it caught up\n")
    print("| leader's applied index | caught up after | max RSS meanwhile (samples) | its VmHWM | RSS after | leader's max RSS meanwhile | snapshots installed |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {facts.get('catchup_target')} | {done} | {mib(peak)} ({count}) | {mib(fact('catchup_hwm', int))} "
          f"| {mib(fact('catchup_rss_after', int))} | {phase_max(leader, 'catch-up')} "
          f"| {len(installs)}{': ' + installed if installs else ' (it caught up from the log)'} |")
else:
    print("not measured")
PYTHON
}

finish() {
  for p in $sampler_pid $poller_pid $bench_pid; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  print_report || say "the report failed"
  cluster_stop
}
trap finish EXIT
trap 'exit 130' INT TERM

raw_bytes=$(python3 -c "
keys, value = $KEYS, $VALUE_BYTES
digits = sum(d * max(0, min(keys, 10**d) - (10**(d - 1) if d > 1 else 0)) for d in range(1, 21))
print(len('key-') * keys + digits + keys * value)")
free_bytes=$(df -B1 --output=avail "$work" | tail -1)
if [ "$free_bytes" -lt $((raw_bytes * 24)) ]; then
  say "warning: $((free_bytes / 1000000000)) GB free under $work, and this run may need about $((raw_bytes * 24 / 1000000000)) GB (3 nodes, up to 8x the raw data each); TMPDIR chooses another filesystem"
fi
available_kb=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
if [ $((available_kb * 1024)) -lt $((raw_bytes * 12)) ]; then
  say "warning: $((available_kb / 1048576)) GiB of memory available, and this run may need about $((raw_bytes * 12 / 1073741824)) GiB (3 nodes, up to 4x the raw data each)"
fi
fact machine "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM; $(date -u '+%F %H:%M') UTC; raftcache $("$BIN" --version | awk '{print $2}') ($(git rev-parse --short HEAD))"
fact load_flags "${load_flags[*]}"
fact run_flags "${run_flags[*]}"
fact keys "$KEYS"
fact value_bytes "$VALUE_BYTES"
fact raw_bytes "$raw_bytes"
fact batch "$BATCH"
fact load_clients "$LOAD_CLIENTS"
fact snapshot_every "$SNAPSHOT_EVERY"
fact run_snapshot_every "$RUN_SNAPSHOT_EVERY"
fact clients "$CLIENTS"
fact repeat "$REPEAT"
fact seconds_per_run "$SECONDS_PER_RUN"
fact small_keys "$SMALL_KEYS"
fact wait_timeout "$WAIT_TIMEOUT"
: >"$work/restarts"

# ---- The small cluster's points, to compare with --------------------------------------------
if [ -z "$SMALL" ]; then
  say "small cluster: $SMALL_KEYS keys"
  for i in 1 2 3; do start_node "$i" "${run_flags[@]}"; done
  cluster_leader >/dev/null
  load "$SMALL_KEYS" "$addrs"
  throughput small "$SMALL_KEYS"
  for i in 1 2 3; do stop_node "$i"; done
  for i in 1 2 3; do rm -rf "$work/n$i" && mv "$work/n$i.log" "$work/small-n$i.log"; done
  fact small_source "measured by this run first, on a fresh cluster with the run flags"
else
  fact small "$SMALL"
  fact small_source "given (SMALL=$SMALL), not measured by this run"
fi

# ---- The large cluster: one follower down, the load -----------------------------------------
say "large cluster: $KEYS keys"
for i in 1 2 3; do start_node "$i" "${load_flags[@]}"; done
leader=$(cluster_leader)
behind=$((leader % 3 + 1))
other=$((behind % 3 + 1))
if [ "$other" = "$leader" ]; then other=$((other % 3 + 1)); fi
fact leader "$leader"
fact behind "$behind"
fact other "$other"
fact term_start "$(status_field "$leader" term)"
sample_rss &
sampler_pid=$!

say "leader $leader; stopping follower $behind, which will miss the load"
stop_node "$behind"
mark load
load "$KEYS" "$(cluster_addr "$leader"),$(cluster_addr "$other")"
line=$(cat "$work/load")
mark after-load
fact load_line "$line"
say "load: $line"
wait_for "$WAIT_TIMEOUT" "follower $other to apply what the leader applied" caught_up "$other" "$other" || true
sleep 5
for i in "$leader" "$other"; do
  fact "rss_after_load_$i" "$(node_kb "$i" VmRSS)"
  fact "hwm_after_load_$i" "$(node_kb "$i" VmHWM)"
done
fact log_index_after_load "$(status_field "$leader" last_log_index)"
fact term_load "$(term "$other")"

# ---- Catch-up of the follower that missed the load ------------------------------------------
target=$(status_field "$(status_field "$other" leader)" last_applied)
fact catchup_target "$target"
say "starting follower $behind; waiting for it to apply index $target"
mark catch-up
fact catchup_start "$(now)"
start_node "$behind" "${load_flags[@]}"
if wait_for "$WAIT_TIMEOUT" "follower $behind to apply index $target (the leader's)" applied_at_least "$behind" "$target"; then
  fact catchup_done "$(now)"
fi
mark after-catch-up
fact catchup_applied "$(status_field "$behind" last_applied)"
fact catchup_hwm "$(node_kb "$behind" VmHWM)"
fact term_catchup "$(term "$other")"
sleep 5
fact catchup_rss_after "$(node_kb "$behind" VmRSS)"
for i in 1 2 3; do
  echo "$i total $(du -sb "$work/n$i" | cut -f1)" >>"$work/du"
  for part in "$work/n$i"/*; do
    if [ -d "$part" ]; then name=$(basename "$part"); else name=files; fi
    echo "$i $name $(du -sb "$part" | cut -f1)"
  done >>"$work/du"
done

# ---- Restarts: a follower (SIGTERM, then kill -9), the other follower, the leader -----------
# Every node comes back with the run flags.
mark restarts
leader=$(status_field "$other" leader)
first=$other
if [ "$first" = "$leader" ]; then first=$behind; fi
second=$((6 - leader - first))
restart "$first" follower TERM "$second"
restart "$first" follower KILL "$second"
restart "$second" follower TERM "$first"
restart "$leader" leader TERM "$first"
fact term_restarts "$(term "$first")"

# ---- Throughput over the whole key range ----------------------------------------------------
mark throughput
throughput large "$KEYS"
mark end
fact term_end "$(term "$first")"
say "done"
