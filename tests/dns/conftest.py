"""One real etcd and kube-apiserver for the folder (tests/apiserver's harness), a
kubeconfig for the DNS server holding exactly the RBAC rights kubesmith/dns documents,
and the selectorless kube-system/kube-dns Service the add-ons manifest creates.

Fixtures: `cluster`, `dns_kubeconfig` (path), `kube_dns_service` (the Service),
`admin()` -> ApiClient with the admin kubeconfig (use `async with`).
"""
from __future__ import annotations

import pytest
import yaml

from kubesmith.client.rest import ApiClient
from kubesmith.store.testing import etcd_available
from tests.apiserver.harness import Cluster

DNS_USER = "system:kubesmith-dns"
KUBE_DNS_IP = "10.96.0.10"


@pytest.fixture(scope="session")
def cluster():
    if not etcd_available():
        pytest.skip("needs /usr/bin/etcd (etcd-server)")
    with Cluster() as running:
        yield running


def _create(cluster: Cluster, path: str, body: dict) -> None:
    answer = cluster.request("POST", path, body)
    assert answer.status in (201, 409), answer.body


@pytest.fixture(scope="session")
def dns_kubeconfig(cluster):
    """A kubeconfig of its own identity, bound to the rights of kubesmith/dns's docstring
    (and nothing more), so the tests check that list."""
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    _create(cluster, f"{rbac}/clusterroles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": DNS_USER},
        "rules": [{"apiGroups": [""], "resources": ["services", "namespaces"],
                   "verbs": ["list", "watch"]},
                  {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                   "verbs": ["list", "watch"]}]})
    _create(cluster, f"{rbac}/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": DNS_USER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": DNS_USER},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": DNS_USER}]})
    _create(cluster, f"{rbac}/namespaces/kube-system/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": DNS_USER, "namespace": "kube-system"},
        "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                   "verbs": ["create", "update", "delete"]}]})
    _create(cluster, f"{rbac}/namespaces/kube-system/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": DNS_USER, "namespace": "kube-system"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": DNS_USER},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": DNS_USER}]})
    cert, key = cluster.client_cert(DNS_USER)
    path = cluster.base / "dns.conf"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dns",
        "clusters": [{"name": "kubesmith", "cluster": {
            "server": cluster.url, "certificate-authority": str(cluster.pki / "ca.crt")}}],
        "users": [{"name": "dns", "user": {"client-certificate": cert,
                                           "client-key": key}}],
        "contexts": [{"name": "dns", "context": {"cluster": "kubesmith", "user": "dns"}}]}))
    return path


@pytest.fixture(scope="session")
def kube_dns_service(cluster):
    """kube-system/kube-dns as the add-ons manifest makes it: no selector, the cluster
    DNS IP, ports dns, dns-tcp and metrics."""
    _create(cluster, "/api/v1/namespaces/kube-system/services", {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns"}},
        "spec": {"clusterIP": KUBE_DNS_IP, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}})
    answer = cluster.request("GET", "/api/v1/namespaces/kube-system/services/kube-dns")
    assert answer.status == 200, answer.body
    return answer.json()


@pytest.fixture
def admin(cluster):
    def make() -> ApiClient:
        return ApiClient.from_kubeconfig(cluster.kubeconfig, component="dns-test")
    return make
