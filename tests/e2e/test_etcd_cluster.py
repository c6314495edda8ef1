"""End to end: three masters make a three-member etcd cluster over TLS peers, and their
kube-scheduler and kube-controller-manager elect one leader each, which hands over when
it stops."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from kubectl_versions import kubectl_builds
from labkit import changed, missing_requirement, running_lab

pytestmark = pytest.mark.e2e
if missing_requirement():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=missing_requirement())]

SUBNET = "10.241.8.0/24"
MASTERS = ("master-1", "master-2", "master-3")
ETCDCTL = ("ETCDCTL_API=3 etcdctl --cacert=/etc/kubernetes/pki/etcd/ca.crt "
           "--cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt "
           "--key=/etc/kubernetes/pki/etcd/healthcheck-client.key --command-timeout=5s ")


@pytest.fixture(scope="module")
def three_masters(tmp_path_factory):
    with running_lab("e2eetcd3", tmp_path_factory.mktemp("three"), SUBNET, masters=3,
                     workers=0) as lab:
        results = lab.deploy_json(timed="first deploy (3 masters)")
        assert results["results"]["failed_hosts"] == []
        yield lab


def test_three_member_etcd(three_masters):
    lab = three_masters
    members = lab.ssh("master-2", ETCDCTL + "--endpoints=https://127.0.0.1:2379 "
                      "member list -w simple").stdout
    assert sorted(line.split(", ")[2] for line in members.splitlines()) == list(MASTERS)
    health = lab.ssh("master-3", ETCDCTL + "--endpoints=https://127.0.0.1:2379 "
                     "endpoint health --cluster")
    report = health.stdout + health.stderr  # etcdctl prints health on stderr
    assert report.count("is healthy") == 3, report
    # Peer traffic is TLS with client certs too: a write on one member is read on another.
    lab.ssh("master-1", ETCDCTL + "--endpoints=https://127.0.0.1:2379 put /k v3")
    got = lab.ssh("master-3", ETCDCTL + "--endpoints=https://127.0.0.1:2379 "
                  "get --print-value-only --consistency=l /k").stdout.strip()
    assert got == "v3"
    again = changed(lab.deploy_json(timed="no-op re-deploy (3 masters)"))
    assert again == [], again


def _holder(kubeconfig, name: str) -> str:
    """The master whose process holds Lease kube-system/<name> ("" while none does)."""
    binary = kubectl_builds().get("default")
    result = subprocess.run([binary, "get", "lease", name, "-n", "kube-system", "-o", "json"],
                            capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, KUBECONFIG=str(kubeconfig)))
    if result.returncode != 0:
        return ""
    identity = json.loads(result.stdout)["spec"].get("holderIdentity") or ""
    return identity.split("_")[0]    # upstream's identity: <hostname>_<uuid>


def _wait_holder(kubeconfig, name: str, unlike: str = "", timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = _holder(kubeconfig, name)
        if holder in MASTERS and holder != unlike:
            return holder
        time.sleep(1)
    raise AssertionError(f"no master other than {unlike or 'none'} leads {name} "
                         f"after {timeout:.0f} s")


@pytest.mark.parametrize("component", ["kube-scheduler", "kube-controller-manager"])
def test_leadership_moves_when_the_leader_stops(three_masters, component):
    lab = three_masters
    if not kubectl_builds().get("default"):
        pytest.skip("no kubectl on PATH")
    kubeconfig = lab.state_dir / "kubeconfigs" / "admin.conf"
    leader = _wait_holder(kubeconfig, component)
    for master in MASTERS:
        assert "RUNNING" in lab.ssh(master, f"supervisorctl status {component}").stdout
    lab.ssh(leader, f"supervisorctl stop {component}")
    try:
        successor = _wait_holder(kubeconfig, component, unlike=leader)
        assert successor != leader
    finally:
        lab.ssh(leader, f"supervisorctl start {component}")
