"""The HTTP port for machines (`--http-listen`), tried as an operator would: `/metrics` on each
node of a 3-node cluster under load parses with Prometheus's own Python parser; the leader's
lag gauge for a follower grows while that follower is paused and falls back once it resumes;
`/ready` turns 503 on a node cut off from the quorum (the two others paused) and 200 again
after; `/health`; the port's limits (request head size, connection cap, methods, paths); and
the dashboard and alert rules of cluster/monitoring against what the nodes serve.
Waits poll with deadlines; nothing asserts a time.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import _free_port, _server_bin, start_cluster, stop_cluster

DEADLINE_S = 20.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, thriftpy2_lib):
    nodes = start_cluster(
        tmp_path_factory.mktemp("http"),
        thriftpy2_lib,
        3,
        ["--http-max-connections", "4", "--http-max-request-bytes", "1024"],
    )
    try:
        yield nodes
    finally:
        for n in nodes:  # a test that failed halfway may leave one paused
            if n.proc is not None and n.proc.poll() is None:
                os.kill(n.proc.pid, signal.SIGCONT)
        stop_cluster(nodes)


def get(node, path, timeout=5.0):
    """(status, body) of GET `path` on `node`'s HTTP port."""
    conn = http.client.HTTPConnection(node.host, node.http_port, timeout=timeout)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read().decode()
    finally:
        conn.close()


def families(node):
    status, body = get(node, "/metrics")
    assert status == 200, body
    return {f.name: f for f in text_string_to_metric_families(body)}


def sample(fams, family, suffix="", **labels):
    """The value of `family`'s sample named family + suffix (`_total`, `_count`) with `labels`."""
    for s in fams[family].samples:
        if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def until(what, check, deadline_s=DEADLINE_S):
    deadline = time.monotonic() + deadline_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {deadline_s} s: {what}"
        time.sleep(0.1)


def leader_of(cluster):
    for n in cluster:
        if sample(families(n), "raftcache_raft_state", state="leader") == 1:
            return n
    return None


class Writer:
    """Puts through one node in a thread until stopped; counts what was acknowledged."""

    def __init__(self, lib, node):
        self.lib, self.node = lib, node
        self.stop = threading.Event()
        self.acked = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        tag = uuid.uuid4().hex
        deadline = time.monotonic() + 120  # bounded even if the test forgets to stop it
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                with self.lib.connect(self.node.host, self.node.port) as c:
                    while not self.stop.is_set():
                        c.put(self.lib.CacheEntry(key=f"http-{tag}-{self.acked % 100}", value="v"))
                        self.acked += 1
            except Exception:
                time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)


def test_every_node_serves_metrics_that_prometheus_parses_under_load(thriftpy2_lib, cluster):
    import raftcache

    leader = until("a leader", lambda: leader_of(cluster))
    # One exactly-once write: its client's session is kept on every replica.
    with raftcache.Client([f"{leader.host}:{leader.port}"]) as c:
        c.put("http-session", "v")
        c.put_many({"http-session-2": "v"})
    for n in cluster:
        until(f"node {n.node_id} keeps a session", lambda: sample(families(n), "raftcache_sessions") >= 1)
    with Writer(thriftpy2_lib, leader) as writer:
        until("writes are acknowledged", lambda: writer.acked > 50)
        for n in cluster:
            fams = families(n)
            for name in [
                "raftcache_raft_state", "raftcache_raft_term", "raftcache_raft_leader_id",
                "raftcache_raft_leader_changes", "raftcache_raft_last_log_index",
                "raftcache_raft_committed_index", "raftcache_raft_applied_index",
                "raftcache_keys", "raftcache_bytes", "raftcache_read_hits",
                "raftcache_sessions", "raftcache_watch_history_bytes",
                "raftcache_log_syncs", "raftcache_connections_open", "raftcache_requests",
                "raftcache_request_duration_seconds", "raftcache_log_sync_duration_seconds",
                "raftcache_log_segments", "raftcache_log_bytes", "raftcache_snapshot_bytes",
                "raftcache_disk_free_bytes", "raftcache_disk_size_bytes",
            ]:  # fmt: skip
                assert name in fams, f"node {n.node_id}: no {name} in {sorted(fams)}"
            assert sample(fams, "raftcache_raft_leader_id") == leader.node_id
            assert sample(fams, "raftcache_raft_applied_index") > 0
            assert sample(fams, "raftcache_log_syncs", "_total") > 0
            assert sample(fams, "raftcache_log_sync_duration_seconds", "_count") > 0
            assert sample(fams, "raftcache_log_segments") >= 1
            assert sample(fams, "raftcache_log_bytes") > 0
            assert sample(fams, "raftcache_watch_history_bytes") > 0, "the writes are in the history"
            free, size = (sample(fams, f"raftcache_disk_{n}_bytes") for n in ("free", "size"))
            assert 0 < free <= size
            assert sample(fams, "raftcache_connections_open", port="client") >= 0
        fams = families(leader)
        assert sample(fams, "raftcache_requests", "_total", method="put", outcome="ok") > 0
        # Each method under its own name, the *_with ones (WriteOptions) included.
        for method in ("put_with", "put_many_with"):
            assert sample(fams, "raftcache_requests", "_total", method=method, outcome="ok") >= 1, method
        assert sample(fams, "raftcache_request_duration_seconds", "_count", method="put") > 0
        followers = {s.labels["follower"] for s in fams["raftcache_raft_follower_lag_entries"].samples}
        assert followers == {str(n.node_id) for n in cluster if n is not leader}


def test_the_leaders_lag_gauge_grows_while_a_follower_is_paused(thriftpy2_lib, cluster):
    leader = until("a leader", lambda: leader_of(cluster))
    follower = next(n for n in cluster if n is not leader)
    lag = lambda: sample(families(leader), "raftcache_raft_follower_lag_entries", follower=str(follower.node_id))  # noqa: E731
    with Writer(thriftpy2_lib, leader) as writer:
        until("writes are acknowledged", lambda: writer.acked > 20)
        os.kill(follower.proc.pid, signal.SIGSTOP)
        try:
            until("the paused follower's lag grows past 100 entries", lambda: lag() > 100)
        finally:
            os.kill(follower.proc.pid, signal.SIGCONT)
        until("the follower catches up (lag under 50)", lambda: lag() < 50)


def test_ready_turns_503_on_a_node_cut_off_from_the_quorum_and_200_after(cluster):
    node, others = cluster[0], cluster[1:]
    until("node 1 is ready", lambda: get(node, "/ready")[0] == 200)
    for o in others:
        os.kill(o.proc.pid, signal.SIGSTOP)
    try:
        status, body = until(
            "node 1 is not ready", lambda: (lambda r: r if r[0] == 503 else None)(get(node, "/ready"))
        )
        assert body.startswith("not ready: "), body
        assert get(node, "/health") == (200, "ok\n"), "the process and its Raft core still run"
    finally:
        for o in others:
            os.kill(o.proc.pid, signal.SIGCONT)
    status, body = until("node 1 is ready again", lambda: (lambda r: r if r[0] == 200 else None)(get(node, "/ready")))
    assert body.startswith("ready: applied index "), body


def check(what, addr):
    """`raftcache check WHAT --http ADDR`: its exit status and output."""
    done = subprocess.run(
        [str(_server_bin()), "check", what, "--http", addr, "--timeout-secs", "5"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def test_the_check_command_exits_0_when_ready_1_when_not_and_2_when_nothing_answers(cluster):
    node, others = cluster[2], cluster[:2]
    addr = f"{node.host}:{node.http_port}"
    until("node 3 is ready", lambda: check("ready", addr)[0] == 0)
    assert check("health", addr) == (0, "ok\n")
    for o in others:
        os.kill(o.proc.pid, signal.SIGSTOP)
    try:
        code, out = until("check ready fails", lambda: (lambda r: r if r[0] == 1 else None)(check("ready", addr)))
        assert out.startswith("not ready: "), out
    finally:
        for o in others:
            os.kill(o.proc.pid, signal.SIGCONT)
    code, out = check("ready", f"{node.host}:{_free_port()}")
    assert code == 2 and out.startswith("error: "), (code, out)


def test_the_http_port_refuses_what_it_does_not_serve(cluster):
    node = cluster[0]
    status, body = get(node, "/nowhere")
    assert status == 404 and "/metrics" in body, body
    conn = http.client.HTTPConnection(node.host, node.http_port, timeout=5)
    conn.request("POST", "/metrics", body="x")
    reply = conn.getresponse()
    assert reply.status == 405, reply.read()
    conn.close()
    # A request head past --http-max-request-bytes (1024 here).
    conn = http.client.HTTPConnection(node.host, node.http_port, timeout=5)
    conn.putrequest("GET", "/metrics")
    conn.putheader("X-Padding", "a" * 2000)
    conn.endheaders()
    reply = conn.getresponse()
    assert reply.status == 431 and "--http-max-request-bytes" in reply.read().decode()
    conn.close()


def test_connections_past_the_cap_get_a_503_and_the_port_serves_again_after(cluster):
    node = cluster[1]
    held = []
    try:
        for _ in range(4):  # --http-max-connections 4: each sends nothing and holds its slot
            held.append(socket.create_connection((node.host, node.http_port), timeout=5))
        time.sleep(0.2)  # let the server accept them all
        status, body = get(node, "/health")
        assert status == 503 and "--http-max-connections" in body, (status, body)
    finally:
        for s in held:
            s.close()
    until("the port serves again", lambda: get(node, "/health")[0] == 200)
    fams = families(node)
    assert sample(fams, "raftcache_raft_state", state="shutdown") == 0


MONITORING = Path(__file__).resolve().parents[2] / "cluster" / "monitoring"
# Series Prometheus makes itself, not read from a node.
PROMETHEUS_OWN = {"up"}


def named_metrics(expr):
    """The series names an expression reads (after checking that it parses as PromQL)."""
    promql_parser.parse(expr.replace("$job", "x").replace("$instance", "x"))
    return set(re.findall(r"\b(raftcache_[a-z_]+|up)\b(?!\s*\()", expr))


def test_the_dashboard_and_the_alert_rules_read_only_metrics_a_node_serves(thriftpy2_lib, cluster):
    """cluster/monitoring: every expression parses, names only series the nodes expose (a
    follower paused for a moment makes the leader's peer errors appear), and the files are
    well formed for Grafana and Prometheus."""
    leader = until("a leader", lambda: leader_of(cluster))
    follower = next(n for n in cluster if n is not leader)
    served = set()

    def scrape_all(paused=None):
        for n in cluster:
            if n is not paused:
                for fam in families(n).values():
                    served.update(s.name for s in fam.samples)

    with Writer(thriftpy2_lib, leader) as writer:
        until("writes are acknowledged", lambda: writer.acked > 20)
        with thriftpy2_lib.connect(leader.host, leader.port) as c:
            try:
                c.get("monitoring-missing")
            except Exception:
                pass  # KeyNotFound: a read miss is counted either way
        os.kill(follower.proc.pid, signal.SIGSTOP)
        try:
            # Whoever leads now (leadership may have moved since it was read) calls the
            # paused node and gets no answer.
            until(
                f"a node counts calls to paused node {follower.node_id} that got no answer",
                lambda: any(
                    "raftcache_peer_rpc_errors_total" in {
                        s.name for f in families(n).values() for s in f.samples
                    }
                    for n in cluster
                    if n is not follower
                ),
            )
            scrape_all(paused=follower)
        finally:
            os.kill(follower.proc.pid, signal.SIGCONT)
    scrape_all()

    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert len(alerts) >= 8
    for rule in alerts:
        assert rule["alert"].startswith("Raftcache"), rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
        missing = named_metrics(rule["expr"]) - served - PROMETHEUS_OWN
        assert not missing, f"alert {rule['alert']} reads series no node serves: {missing}"

    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    graphs = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            missing = named_metrics(target["expr"]) - served - PROMETHEUS_OWN
            assert not missing, f"panel {panel['title']!r} reads series no node serves: {missing}"

    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert config["scrape_configs"][0]["job_name"] == "raftcache"
