#!/usr/bin/env python3
"""Replays, N times, a snapshot race that once left a raftcache replica permanently wrong,
and checks that every replica ends identical (and right).

The scenario, from the bug report: 3 nodes with `--snapshot-every 10000000
--snapshot-keep-log 10`; KEYS keys loaded and `admin snapshot` on every node; follower F
stopped; meanwhile REMOVED keys removed, ADDED new keys written and `admin snapshot` on the
other two; F restarted and, as soon as it answers `status`, `admin snapshot` on F. The bug: F
reached the same applied index as the others while holding keys the others had removed.

Each run, in a fresh temp dir (node logs in n1.log, n2.log, n3.log there):
  1. start 3 nodes; wait until all answer status() and name the same leader;
  2. put_many KEYS keys `k%07d` of VALUE_BYTES bytes through the leader, admin_snapshot()
     on every node;
  3. SIGTERM a follower F (the runs alternate between the two followers) and wait for it;
  4. through the leader: remove_many of the first REMOVED keys, put_many of ADDED keys
     `n%07d`; admin_snapshot() on the two other nodes;
  5. restart F, poll its status() every 10 ms and call admin_snapshot() on F as soon as it
     answers (an exception there is recorded in the run's line, not a failure);
  6. one more write through the leader (a remove of a key that never exists), then wait up to
     120 s until F's applied index equals the leader's.

Checked then, on every node: stats().keys and a full local scan both count
KEYS - REMOVED + ADDED keys, and the scans hash the same as each other and as the expected
(key, value) pairs; through F, linearizable gets of 20 removed keys answer KeyNotFound and of
20 added keys their values. F is restarted once more and its count and hash checked again.
A node that exits by itself, or not with status 0 on SIGTERM, fails the run too.

Output: one line per run (number, seconds, F, each node's key count, applied index, PASS or
FAIL with the reasons, and whether F's log shows the race: its own build dropped because the
install of the leader's snapshot overtook it), then a summary. Exit status: 0 every run passed, 1 a run failed,
2 the script could not run (bad arguments, no binary, no thriftpy2), 130 interrupted.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
IDL = REPO / "cache.thrift"
HOST = "127.0.0.1"
NODE_IDS = (1, 2, 3)
SERVE_FLAGS = ["--snapshot-every", "10000000", "--snapshot-keep-log", "10"]
SERVER_MAX_BATCH_ITEMS = 1000  # `raftcache serve` default --max-batch-items
SERVER_MAX_BATCH_BYTES = 1 << 20  # `raftcache serve` default --max-batch-bytes
SERVER_MAX_SCAN_ITEMS = 1000  # `raftcache serve` default --max-scan-items
RPC_TIMEOUT_MS = 30_000  # well above the server's 5 s request deadline
POLL_TIMEOUT_MS = 1_000  # for the status() polls of a starting node
POLL_INTERVAL_S = 0.01
START_DEADLINE_S = 60.0
CATCH_UP_DEADLINE_S = 120.0
STOP_GRACE_S = 10.0
SAMPLE = 20  # removed and added keys read back through F
MARKER_KEY = "marker-never-written"

cache_thrift: Any = None  # the thriftpy2 module of cache.thrift, set by load_thrift()
TRANSPORT_ERRORS: tuple = (OSError, EOFError)


class CannotRun(Exception):
    """A precondition of the whole script is missing (exit status 2)."""


class RunFailed(Exception):
    """The scenario could not be carried through; the run fails with this reason."""


# ------------------------------------------------------------------------------------------
# Thrift client
# ------------------------------------------------------------------------------------------


def load_thrift() -> None:
    """Loads cache.thrift with thriftpy2 into `cache_thrift`; CannotRun if impossible."""
    global cache_thrift, TRANSPORT_ERRORS
    try:
        import thriftpy2
        from thriftpy2.transport import TTransportException
    except ImportError as e:
        raise CannotRun(f"thriftpy2 is not importable ({e}): run `bash scripts/python-env.sh` "
                        "and use .venv-test/bin/python") from e
    cache_thrift = thriftpy2.load(str(IDL), module_name="cache_thrift")
    TRANSPORT_ERRORS = (TTransportException, OSError, EOFError)


def call(port: int, method: str, *args: Any, timeout_ms: int = RPC_TIMEOUT_MS) -> Any:
    """Opens a connection to the node on `port`, makes one call and closes it."""
    from thriftpy2.rpc import make_client

    client = make_client(cache_thrift.CacheService, HOST, port, timeout=timeout_ms)
    try:
        return getattr(client, method)(*args)
    finally:
        client.close()


def try_status(port: int) -> Optional[Any]:
    """The node's NodeStatus, or None when it does not answer (yet)."""
    try:
        return call(port, "status", timeout_ms=POLL_TIMEOUT_MS)
    except TRANSPORT_ERRORS:
        return None


def local() -> Any:
    """ReadOptions of a read of this node's replica as it is."""
    return cache_thrift.ReadOptions(consistency=cache_thrift.Consistency.LOCAL)


def linearizable() -> Any:
    """ReadOptions of a linearizable read."""
    return cache_thrift.ReadOptions(consistency=cache_thrift.Consistency.LINEARIZABLE)


# ------------------------------------------------------------------------------------------
# Nodes
# ------------------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports that were free a moment ago."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in ports:
            ports.append(port)
    return ports


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM if this script dies, so no node is orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Node:
    """One `raftcache serve` process; its output is appended to `log` across restarts."""

    id: int
    port: int
    log: Path
    argv: list[str]
    proc: Optional[subprocess.Popen] = None
    problems: list[str] = field(default_factory=list)  # unclean exits seen

    def start(self) -> None:
        """Starts the process, in its own session so a Ctrl-C reaches only this script."""
        with open(self.log, "ab") as out:
            out.write(f"--- snapshot_overlap.py: start at {time.strftime('%T')}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )  # fmt: skip

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_GRACE_S; records an unclean exit in `problems`."""
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is not None:
            self.problems.append(f"n{self.id} exited by itself with status {proc.returncode}")
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.problems.append(f"n{self.id} ignored SIGTERM for {STOP_GRACE_S:.0f} s")
            return
        if proc.returncode != 0:
            self.problems.append(f"n{self.id} exited with status {proc.returncode} on SIGTERM")

    def check_alive(self) -> None:
        """RunFailed if the process is not running."""
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RunFailed(f"n{self.id} is not running (exit status {code}; see {self.log})")

    def wait_status(self, deadline_s: float = START_DEADLINE_S) -> Any:
        """Polls status() every POLL_INTERVAL_S until the node answers; returns the answer."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            self.check_alive()
            status = try_status(self.port)
            if status is not None:
                return status
            time.sleep(POLL_INTERVAL_S)
        raise RunFailed(f"n{self.id} did not answer status() within {deadline_s:.0f} s")


def make_nodes(bin_path: Path, work: Path, ports: list[int]) -> dict[int, Node]:
    """The three nodes of a cluster on `ports` (3 client ports, then 3 peer ports)."""
    peer = {i: ports[2 + i] for i in NODE_IDS}
    initial = ",".join(f"{i}={HOST}:{peer[i]}" for i in NODE_IDS)
    nodes = {}
    for i in NODE_IDS:
        argv = [str(bin_path), "serve", "--id", str(i), "--listen", f"{HOST}:{ports[i - 1]}",
                "--peer-listen", f"{HOST}:{peer[i]}", "--http-listen", "none",
                "--data-dir", str(work / f"n{i}"),
                "--initial-cluster", initial] + SERVE_FLAGS  # fmt: skip
        nodes[i] = Node(i, ports[i - 1], work / f"n{i}.log", argv)
    return nodes


def wait_leader(nodes: dict[int, Node]) -> int:
    """Waits until every node answers status() and all name the same leader; returns its id."""
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        for n in nodes.values():
            n.check_alive()
        statuses = [try_status(n.port) for n in nodes.values()]
        leaders = {s.leader for s in statuses if s is not None}
        if None not in statuses and len(leaders) == 1 and leaders.pop() in nodes:
            return statuses[0].leader
        time.sleep(0.1)
    raise RunFailed(f"no common leader within {START_DEADLINE_S:.0f} s")


def through_leader(nodes: dict[int, Node], method: str, *args: Any) -> Any:
    """Calls `method` on the current leader, retrying (the writes here are idempotent) on
    Unavailable or a broken connection, e.g. across a change of leader, for up to 60 s."""
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        leader = nodes[wait_leader_among_running(nodes)]
        try:
            return call(leader.port, method, *args)
        except (cache_thrift.Unavailable, *TRANSPORT_ERRORS) as e:
            if time.monotonic() >= deadline:
                raise RunFailed(f"{method} through the leader kept failing: {e!r}") from e
            time.sleep(0.2)


def wait_leader_among_running(nodes: dict[int, Node]) -> int:
    """The leader as named by the running nodes (F may be stopped)."""
    running = {i: n for i, n in nodes.items() if n.proc is not None}
    return wait_leader(running)


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------


def value_of(key: str, size: int) -> str:
    """The value written for `key`: the key repeated, cut to `size` bytes."""
    return ((key + ".") * (size // (len(key) + 1) + 1))[:size]


def chunks(items: list, size: int) -> list[list]:
    """`items` cut into lists of at most `size`."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def sample(items: list, n: int = SAMPLE) -> list:
    """Up to `n` items spread evenly over `items`."""
    if len(items) <= n:
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def pairs_digest(pairs: list[tuple[str, str]]) -> str:
    """A short hash of the sorted (key, value) pairs."""
    h = hashlib.sha256()
    for key, value in sorted(pairs):
        h.update(f"{len(key)}:{key}{len(value)}:{value}".encode())
    return h.hexdigest()[:12]


@dataclass
class Plan:
    """The keys of a run and what every replica must hold at the end."""

    args: argparse.Namespace
    loaded: list[str] = field(init=False)
    removed: list[str] = field(init=False)
    added: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.loaded = [f"k{i:07d}" for i in range(self.args.keys)]
        self.removed = self.loaded[:self.args.removed]
        self.added = [f"n{i:07d}" for i in range(self.args.added)]

    def value(self, key: str) -> str:
        """The value written for `key`."""
        return value_of(key, self.args.value_bytes)

    def put_batch(self) -> int:
        """Entries per put_many, under the server's item and byte limits."""
        entry_bytes = 8 + self.args.value_bytes
        return max(1, min(self.args.batch, SERVER_MAX_BATCH_BYTES // entry_bytes))

    def expected_pairs(self) -> list[tuple[str, str]]:
        """The (key, value) pairs every replica must hold at the end."""
        final = self.loaded[self.args.removed:] + self.added
        return [(k, self.value(k)) for k in final]


def put_keys(nodes: dict[int, Node], plan: Plan, keys: list[str]) -> None:
    """put_many of `keys` with their values through the leader, in batches."""
    for batch in chunks(keys, plan.put_batch()):
        entries = [cache_thrift.CacheEntry(key=k, value=plan.value(k)) for k in batch]
        through_leader(nodes, "put_many", entries)


def remove_keys(nodes: dict[int, Node], plan: Plan, keys: list[str]) -> None:
    """remove_many of `keys` through the leader, in batches."""
    for batch in chunks(keys, plan.args.batch):
        through_leader(nodes, "remove_many", batch)


def snapshot_all(nodes: list[Node]) -> None:
    """admin_snapshot() on each of `nodes`, one after the other. A node that answers
    Unavailable (its snapshot not built within the request deadline) is asked again, for up to
    60 s: the scenario needs the snapshots in place."""
    for n in nodes:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            try:
                call(n.port, "admin_snapshot")
                break
            except cache_thrift.Unavailable as e:
                if time.monotonic() >= deadline:
                    raise RunFailed(f"admin_snapshot on n{n.id} kept failing: {e!r}") from e


# ------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------


@dataclass
class Replica:
    """What one node holds: stats().keys, and its full local scan's count and digest."""

    stats_keys: int
    scan_count: int
    digest: str


def read_replica(node: Node) -> Replica:
    """Pages a local scan of every key of `node`, then asks its stats()."""
    pairs: list[tuple[str, str]] = []
    after = ""
    while True:
        page = call(node.port, "scan", "", after, SERVER_MAX_SCAN_ITEMS, local())
        pairs.extend((e.key, e.value) for e in page)
        if len(page) < SERVER_MAX_SCAN_ITEMS:
            break
        after = page[-1].key
    stats = call(node.port, "stats")
    return Replica(stats.keys, len(pairs), pairs_digest(pairs))


def replica_problems(name: str, got: Replica, plan: Plan, want_digest: str) -> list[str]:
    """Why `got` is not what every replica must hold (empty when it is)."""
    want = plan.args.keys - plan.args.removed + plan.args.added
    problems = []
    if got.stats_keys != want:
        problems.append(f"{name} stats keys {got.stats_keys} != {want}")
    if got.scan_count != want:
        problems.append(f"{name} scan counts {got.scan_count} keys != {want}")
    if got.digest != want_digest:
        problems.append(f"{name} scan digest {got.digest} != expected {want_digest}")
    return problems


def wait_caught_up(nodes: dict[int, Node], f: Node) -> int:
    """Writes one entry through the leader, then waits until F's applied index equals the
    leader's and covers that entry. Returns the index."""
    marker = through_leader(nodes, "remove_many", [MARKER_KEY]).index
    deadline = time.monotonic() + CATCH_UP_DEADLINE_S
    last = None
    while time.monotonic() < deadline:
        f.check_alive()
        leader = nodes[wait_leader_among_running(nodes)]
        last = (call(f.port, "status").last_applied, call(leader.port, "status").last_applied)
        if last[0] == last[1] >= marker:
            return last[0]
        time.sleep(0.1)
    raise RunFailed(f"F's applied index did not reach the leader's within "
                    f"{CATCH_UP_DEADLINE_S:.0f} s (F, leader: {last}; marker {marker})")


def read_problems(f: Node, plan: Plan) -> list[str]:
    """Linearizable gets through F: sampled removed keys absent, sampled added keys right."""
    problems = []
    for key in sample(plan.removed):
        try:
            entry = call(f.port, "get_with", key, linearizable())
            problems.append(f"F answers removed key {key} (value {entry.value[:16]!r}...)")
        except cache_thrift.KeyNotFound:
            pass
    for key in sample(plan.added):
        try:
            if call(f.port, "get_with", key, linearizable()).value != plan.value(key):
                problems.append(f"F answers added key {key} with a wrong value")
        except cache_thrift.KeyNotFound:
            problems.append(f"F answers KeyNotFound for added key {key}")
    return problems


# ------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one run saw: F's id, key counts, applied index, failures, and notes."""

    f_id: int = 0
    counts: dict[int, int] = field(default_factory=dict)
    applied: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def restart_and_snapshot(f: Node, outcome: Outcome) -> None:
    """Starts F and calls admin_snapshot() on it the moment it answers status()."""
    f.start()
    f.wait_status()
    try:
        call(f.port, "admin_snapshot")
    except Exception as e:  # recorded, not fatal: the race is what matters
        outcome.notes.append(f"admin_snapshot on restarted F raised {e!r}")


# What F logs when its own build is overtaken by the install of the leader's snapshot: the race
# this script is about, and raftcache's answer to it.
BUILD_DROPPED = "snapshot build dropped"
RECEIVING = "receiving a snapshot from the leader"


def race_seen(f: Node) -> str:
    """Whether F's log shows the race: an install from the leader, and F's own build dropped
    because that install overtook it (a run without it exercised less than the bug needed)."""
    text = f.log.read_text(errors="replace")
    if BUILD_DROPPED in text:
        return "race hit: F's build was overtaken by the install and dropped"
    if RECEIVING in text:
        return "race missed: F installed the leader's snapshot, no build overlapped it"
    return "race missed: F received no snapshot"


def scenario(nodes: dict[int, Node], plan: Plan, run: int, outcome: Outcome) -> None:
    """Steps 1-6 of the module docstring, then the checks, filling `outcome`."""
    for n in nodes.values():
        n.start()
    leader_id = wait_leader(nodes)
    put_keys(nodes, plan, plan.loaded)
    snapshot_all(list(nodes.values()))

    followers = [i for i in NODE_IDS if i != leader_id]
    f = nodes[followers[run % 2]]
    outcome.f_id = f.id
    f.stop()
    remove_keys(nodes, plan, plan.removed)
    put_keys(nodes, plan, plan.added)
    snapshot_all([n for n in nodes.values() if n is not f])
    restart_and_snapshot(f, outcome)

    outcome.applied = wait_caught_up(nodes, f)
    want_digest = pairs_digest(plan.expected_pairs())
    replicas = {i: read_replica(n) for i, n in nodes.items()}
    outcome.counts = {i: r.stats_keys for i, r in replicas.items()}
    if len({r.digest for r in replicas.values()}) > 1:
        digests = " ".join(f"n{i}={r.digest}" for i, r in replicas.items())
        outcome.problems.append(f"replicas differ: scan digests {digests}")
    for i, r in replicas.items():
        outcome.problems += replica_problems(f"n{i}", r, plan, want_digest)
    outcome.problems += read_problems(f, plan)

    outcome.notes.append(race_seen(f))

    f.stop()
    f.start()
    f.wait_status()
    wait_caught_up(nodes, f)
    again = read_replica(f)
    outcome.problems += replica_problems(f"n{f.id} after restart", again, plan, want_digest)


def run_once(args: argparse.Namespace, run: int) -> bool:
    """One run in a fresh temp dir; prints its line; True when it passed. The nodes are
    stopped and the temp dir removed (kept with --keep if the run failed) even on Ctrl-C."""
    work = Path(tempfile.mkdtemp(prefix="snapshot-overlap-"))
    ports = free_ports(6) if args.base_port is None else [args.base_port + i for i in range(6)]
    nodes = make_nodes(args.bin, work, ports)
    outcome = Outcome()
    started = time.monotonic()
    kept = None
    try:
        scenario(nodes, Plan(args), run, outcome)
    except RunFailed as e:
        outcome.problems.append(f"error: {e}")
    except Exception as e:  # an unexpected answer or exception from a node
        outcome.problems.append(f"error: {e!r}")
    finally:
        for n in nodes.values():
            n.stop()
        outcome.problems += [p for n in nodes.values() for p in n.problems]
        if outcome.problems and args.keep:
            kept = work
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_line(run, args.runs, time.monotonic() - started, outcome, kept)
    return not outcome.problems


def print_line(run: int, runs: int, seconds: float, o: Outcome, kept: Optional[Path]) -> None:
    """The one line of output of a run."""
    counts = " ".join(f"n{i}={o.counts.get(i, '?')}" for i in NODE_IDS)
    verdict = "PASS" if not o.problems else "FAIL: " + "; ".join(o.problems)
    notes = "".join(f" [{note}]" for note in o.notes)
    where = f" (kept {kept})" if kept else ""
    print(f"run {run}/{runs} {seconds:6.1f} s F=n{o.f_id or '?'} keys {counts} "
          f"applied {o.applied} {verdict}{notes}{where}", flush=True)


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, checked; --help shows the module docstring."""
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        epilog="\n\n".join(doc.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bin", type=Path, default=REPO / "target/release/raftcache",
                   help="the raftcache binary (default: %(default)s)")
    p.add_argument("--runs", type=int, default=20, help="runs (default: %(default)s)")
    p.add_argument("--keys", type=int, default=300_000, help="keys loaded (default: %(default)s)")
    p.add_argument("--value-bytes", type=int, default=500,
                   help="bytes per value (default: %(default)s)")
    p.add_argument("--removed", type=int, default=285_000,
                   help="loaded keys removed while F is down (default: %(default)s)")
    p.add_argument("--added", type=int, default=20_000,
                   help="new keys written while F is down (default: %(default)s)")
    p.add_argument("--batch", type=int, default=SERVER_MAX_BATCH_ITEMS,
                   help="keys per put_many/remove_many, at most the server's --max-batch-items "
                        "(%(default)s); put_many batches are also cut to stay under its "
                        "--max-batch-bytes (1 MiB) (default: %(default)s)")
    p.add_argument("--base-port", type=int,
                   help="client ports BASE..BASE+2, peer ports BASE+3..BASE+5 "
                        "(default: free loopback ports, picked per run)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir of a failed run")
    args = p.parse_args(argv)
    problems = [
        "--runs must be at least 1" if args.runs < 1 else "",
        "--value-bytes must be at least 1" if args.value_bytes < 1 else "",
        "--removed must be between 0 and --keys" if not 0 <= args.removed <= args.keys else "",
        "--added must not be negative" if args.added < 0 else "",
        f"--batch must be between 1 and {SERVER_MAX_BATCH_ITEMS}"
        if not 1 <= args.batch <= SERVER_MAX_BATCH_ITEMS else "",
    ]
    if any(problems):
        p.error("; ".join(filter(None, problems)))
    return args


def main(argv: list[str]) -> int:
    """Runs the scenario --runs times; returns the exit status."""
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    try:
        if not args.bin.is_file():
            raise CannotRun(f"no raftcache binary at {args.bin} (cargo build --release)")
        load_thrift()
    except CannotRun as e:
        print(f"snapshot_overlap: cannot run: {e}", file=sys.stderr)
        return 2
    failed = []
    try:
        for run in range(1, args.runs + 1):
            if not run_once(args, run):
                failed.append(run)
    except KeyboardInterrupt:
        print("snapshot_overlap: interrupted", file=sys.stderr)
        return 130
    if failed:
        print(f"{len(failed)} of {args.runs} runs failed: runs {', '.join(map(str, failed))}")
        return 1
    print(f"{args.runs} of {args.runs} runs: every replica identical")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
