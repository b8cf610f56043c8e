"""The Kubernetes manifest (cluster/k8s/raftcache.yaml), checked offline: it validates against
the Kubernetes schemas, strictly (unknown fields refused), with `kubernetes-validate`; its
probes are the HTTP port's /ready and /health; and its container arguments parse as a node's
flags, bootstrapping the first three pods and joining any further one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
