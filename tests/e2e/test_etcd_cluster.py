"""End to end: three masters make a three-member etcd cluster over TLS peers."""
from __future__ import annotations

import pytest

from labkit import changed, missing_requirement, running_lab

pytestmark = pytest.mark.e2e
if missing_requirement():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=missing_requirement())]

SUBNET = "10.241.8.0/24"
ETCDCTL = ("ETCDCTL_API=3 etcdctl --cacert=/etc/kubernetes/pki/etcd/ca.crt "
           "--cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt "
           "--key=/etc/kubernetes/pki/etcd/healthcheck-client.key --command-timeout=5s ")


def test_three_member_etcd(tmp_path):
    with running_lab("e2eetcd3", tmp_path, SUBNET, masters=3, workers=0) as lab:
        results = lab.deploy_json(timed="first deploy (3 masters)")
        assert results["results"]["failed_hosts"] == []
        members = lab.ssh("master-2", ETCDCTL + "--endpoints=https://127.0.0.1:2379 "
                          "member list -w simple").stdout
        assert sorted(line.split(", ")[2] for line in members.splitlines()) == [
            "master-1", "master-2", "master-3"]
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
