"""The Kubernetes manifest (cluster/k8s/raftcache.yaml), checked offline: it validates against
the Kubernetes schemas, strictly (unknown fields refused), with `kubernetes-validate`; its
probes are the HTTP port's /ready and /health; its container arguments parse as a node's
flags; and, with docker, those arguments run as containers that form a cluster, grow by a pod
joining through the client service, and survive a pod rescheduled.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import _server_bin

MANIFEST = Path(__file__).resolve().parents[2] / "cluster" / "k8s" / "raftcache.yaml"


def statefulset():
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return next(d for d in docs if d["kind"] == "StatefulSet")


def test_the_manifest_validates_against_the_kubernetes_schemas():
    validate = Path(sys.executable).with_name("kubernetes-validate")
    out = subprocess.run(
        [str(validate), "--strict", str(MANIFEST)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for kind in ("service/raftcache-peers", "service/raftcache", "statefulset/raftcache",
                 "poddisruptionbudget/raftcache"):  # fmt: skip
        assert f"passed for resource {kind}" in out.stdout + out.stderr, out.stdout + out.stderr


def test_the_probes_are_ready_and_health_on_the_http_port():
    container = statefulset()["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == 9290
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert "--http-listen=0.0.0.0:9290" in container["args"]


def test_the_container_arguments_are_flags_the_server_takes(tmp_path):
    """`raftcache serve --help` knows every flag the manifest passes (a typo would make every
    pod exit at start), and --join-unlisted is there for pods past the first three."""
    args = statefulset()["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "serve"
    help_text = subprocess.run(
        [str(_server_bin()), "serve", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    for arg in args[1:]:
        flag = arg.split("=", 1)[0]
        known = f"{flag} " in help_text or f"{flag}\n" in help_text
        assert flag.startswith("--") and known, f"serve does not take {flag}"
    assert any(a.startswith("--join-unlisted=") for a in args)


# --------------------------------------------------------------------------------------------
# The manifest's containers, run: a compose project that gives each container what the
# StatefulSet gives its pod, then grows it by one pod and reschedules one.
# --------------------------------------------------------------------------------------------

DEADLINE_S = 120.0  # a shared 2-core machine can be slow; nothing here measures speed


def _docker_prerequisite():
    """Why the containers cannot run here, or None. The README's test command builds the image
    and sets RAFTCACHE_REQUIRE_DOCKER=1: then a missing prerequisite fails the test."""
    image = os.environ.get("RAFTCACHE_IMAGE", "raftcache:local")
    for cmd in (["docker", "info"], ["docker-compose", "version"], ["docker", "image", "inspect", image]):
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"`{' '.join(cmd)}` failed: {e}"
        if done.returncode != 0:
            return f"`{' '.join(cmd)}` exited {done.returncode}"
    return None


def substitute(arg, env):
    """Kubernetes' $(VAR) expansion of container arguments from the container's environment."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def pod_service(sts, image, ordinal, serves_clients):
    """The compose service for pod `raftcache-<ordinal>` of the StatefulSet: its hostname is the
    pod name, the headless service's name resolves to it, the client service's name resolves to
    it once it serves clients, and its arguments, user and volume are the manifest's."""
    pod = f"{sts['metadata']['name']}-{ordinal}"
    spec = sts["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name":
            env[var["name"]] = pod
        else:
            raise AssertionError(f"the test does not know how to give {var}")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    mount = container["volumeMounts"][0]
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    security = spec["securityContext"]
    aliases = [f"{pod}.{sts['spec']['serviceName']}"]
    if serves_clients:
        aliases.append("raftcache")
    return pod, {
        "image": image,
        "hostname": pod,
        "user": f"{security['runAsUser']}:{security['runAsGroup']}",
        "command": [substitute(a, env) for a in container["args"]],
        "environment": env,
        "networks": {"cluster": {"aliases": aliases}},
        "ports": [f"127.0.0.1::{ports['client']}", f"127.0.0.1::{ports['http']}"],
        "volumes": [f"{claim}-{pod}:{mount['mountPath']}"],
        "stop_grace_period": f"{spec['terminationGracePeriodSeconds']}s",
    }


class Pods:
    """The compose project, its published ports and the CLI pointed at them."""

    def __init__(self, directory, name, services, volumes):
        self.file = directory / "docker-compose.yml"
        self.file.write_text(yaml.safe_dump({
            "version": "3.7",
            "services": services,
            "networks": {"cluster": {}},
            "volumes": {v: {} for v in volumes},
        }))  # fmt: skip
        self.name = name

    def compose(self, *args, timeout=300):
        cmd = ["docker-compose", "-p", self.name, "-f", str(self.file), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout}{done.stderr}"
        return done.stdout

    def port(self, pod, container_port):
        """Where the host reaches `container_port` of the pod: 127.0.0.1:<published port>."""
        return self.compose("port", pod, str(container_port)).strip()

    def cli(self, pod, *args):
        """`raftcache ARGS --addr <pod's published client port>`: (exit status, stdout, stderr)."""
        cmd = [str(_server_bin()), *args, "--addr", self.port(pod, 9090), "--timeout-secs", "10"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout, done.stderr

    def ready(self, pod):
        """The /ready answer of the pod's readiness probe: (status, body), or None."""
        host, port = self.port(pod, 9290).rsplit(":", 1)
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            conn.request("GET", "/ready")
            reply = conn.getresponse()
            return reply.status, reply.read().decode()
        except OSError:
            return None
        finally:
            conn.close()

    def logs(self):
        return self.compose("logs", "--no-color", "--tail", "60")


def until(what, check, pods, deadline_s=DEADLINE_S):
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {deadline_s} s (last: {last})\n{pods.logs()}")


def members(pods, pod):
    status, out, err = pods.cli(pod, "admin", "members", "--json")
    return json.loads(out) if status == 0 else None


def test_the_manifests_containers_form_a_cluster_grow_by_a_pod_and_survive_a_reschedule(tmp_path):
    """The StatefulSet's exact container arguments (with `$(POD_NAME)` expanded as Kubernetes
    does), user and volume, run as a compose project on a network where each container has its
    pod's hostname and headless-service name, and the first three answer to the client service's
    name. The three elect a leader and pass the readiness probe by themselves; a fourth pod (as
    after `kubectl scale --replicas=4`) joins through the client service and becomes a voter; a
    pod rescheduled (its container removed and created again on the same volume) comes back as
    the same member with its data."""
    why = _docker_prerequisite()
    if why:
        if os.environ.get("RAFTCACHE_REQUIRE_DOCKER") == "1":
            pytest.fail(f"RAFTCACHE_REQUIRE_DOCKER=1 but {why}")
        pytest.skip(why)
    image = os.environ.get("RAFTCACHE_IMAGE", "raftcache:local")
    sts = statefulset()
    assert sts["spec"]["replicas"] == 3
    services, volumes = {}, []
    for ordinal in range(4):
        pod, service = pod_service(sts, image, ordinal, serves_clients=ordinal < 3)
        services[pod] = service
        volumes.append(service["volumes"][0].split(":")[0])
    pods = Pods(tmp_path, f"rck8s{os.getpid()}", services, volumes)
    first = ["raftcache-0", "raftcache-1", "raftcache-2"]
    try:
        pods.compose("up", "-d", *first)
        for pod in first:
            until(f"{pod} ready", lambda p=pod: (pods.ready(p) or (0,))[0] == 200, pods)
        view = members(pods, "raftcache-1")
        assert view is not None
        assert sorted(m["id"] for m in view["members"]) == [1, 2, 3]
        for m in view["members"]:
            assert m["peer_addr"] == f"raftcache-{m['id'] - 1}.raftcache-peers:9190", m
            assert m["client_addr"] == f"raftcache-{m['id'] - 1}.raftcache-peers:9090", m
            assert m["voter"], m
        status, _, err = pods.cli("raftcache-0", "put", "before-growth", "v1")
        assert status == 0, err
        status, out, err = pods.cli("raftcache-2", "get", "before-growth", "--linearizable")
        assert (status, out.strip()) == (0, "v1"), err

        # kubectl scale statefulset/raftcache --replicas=4
        pods.compose("up", "-d", "raftcache-3")
        until("raftcache-3 ready", lambda: (pods.ready("raftcache-3") or (0,))[0] == 200, pods)

        def four_voters():
            view = members(pods, "raftcache-0")
            if not view:
                return None
            voters = sorted(m["id"] for m in view["members"] if m["voter"])
            return view if voters == [1, 2, 3, 4] else None

        view = until("four voters", four_voters, pods)
        node4 = next(m for m in view["members"] if m["id"] == 4)
        assert node4["peer_addr"] == "raftcache-3.raftcache-peers:9190", node4
        status, out, err = pods.cli("raftcache-3", "get", "before-growth", "--linearizable")
        assert (status, out.strip()) == (0, "v1"), err
        status, _, err = pods.cli("raftcache-3", "put", "after-growth", "v2")
        assert status == 0, err

        # A pod rescheduled: its container goes, a new one mounts the same claim.
        pods.compose("rm", "-s", "-f", "raftcache-1")
        status, _, err = pods.cli("raftcache-0", "put", "while-rescheduled", "v3")
        assert status == 0, err
        pods.compose("up", "-d", "raftcache-1")
        until("raftcache-1 ready again", lambda: (pods.ready("raftcache-1") or (0,))[0] == 200, pods)
        for key, value in [("before-growth", "v1"), ("after-growth", "v2"), ("while-rescheduled", "v3")]:
            status, out, err = pods.cli("raftcache-1", "get", key)
            assert (status, out.strip()) == (0, value), (key, err)
        assert four_voters() is not None
    finally:
        subprocess.run(
            ["docker-compose", "-p", pods.name, "-f", str(pods.file), "down", "-v", "-t", "5"],
            capture_output=True, timeout=300,
        )  # fmt: skip
