"""Service cluster IPs and node ports: allocation, requests, release, races, durability."""
from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor

import pytest

from kubesmith.store.testing import free_port

SVC = "/api/v1/namespaces/{ns}/services"
RANGE = ipaddress.ip_network("10.96.0.0/12")
# Explicit requests here stay in the ranges' lower bands, which dynamic picks leave alone
# (10.96.0.1-10.96.1.0 and 30000-30085), so no test collides with another's random pick.


@pytest.fixture
def ns(cluster):
    return cluster.new_namespace("s-")


def service(name: str, type_: str = "ClusterIP", cluster_ip: str | None = None,
            node_port: int | None = None, ports=None) -> dict:
    spec = {"type": type_, "selector": {"app": name},
            "ports": ports or [{"port": 80, "protocol": "TCP"}]}
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    if node_port is not None:
        spec["ports"][0]["nodePort"] = node_port
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def create(cluster, ns, body):
    return cluster.request("POST", SVC.format(ns=ns), body)


def test_cluster_ip_is_allocated_from_the_range(cluster, ns):
    answer = create(cluster, ns, service("web"))
    assert answer.status == 201, answer.body
    spec = answer.json()["spec"]
    ip = ipaddress.ip_address(spec["clusterIP"])
    assert ip in RANGE and str(ip) != "10.96.0.1"
    assert spec["clusterIPs"] == [spec["clusterIP"]]
    assert spec["ipFamilies"] == ["IPv4"]
    stored = cluster.request("GET", SVC.format(ns=ns) + "/web").json()["spec"]
    assert stored["clusterIP"] == spec["clusterIP"]
    kubernetes = cluster.request("GET", "/api/v1/namespaces/default/services/kubernetes")
    assert kubernetes.json()["spec"]["clusterIP"] == "10.96.0.1"


def test_requested_ip_taken_and_out_of_range(cluster, ns):
    taken = create(cluster, ns, service("a", cluster_ip="10.96.0.107"))
    assert taken.status == 201, taken.body
    assert taken.json()["spec"]["clusterIPs"] == ["10.96.0.107"]
    again = create(cluster, ns, service("b", cluster_ip="10.96.0.107"))
    assert again.status == 422
    body = again.json()
    assert body["reason"] == "Invalid"
    assert body["message"] == ('Service "b" is invalid: spec.clusterIPs: Invalid value: '
                               '[]string{"10.96.0.107"}: failed to allocate IP 10.96.0.107: '
                               'provided IP is already allocated')
    kube = create(cluster, ns, service("c", cluster_ip="10.96.0.1"))
    assert kube.status == 422 and "already allocated" in kube.json()["message"]
    outside = create(cluster, ns, service("d", cluster_ip="192.168.7.7"))
    assert outside.status == 422
    assert "the provided IP (192.168.7.7) is not in the valid range. The range of valid IPs " \
           "is 10.96.0.0/12" in outside.json()["message"]
    # Released on delete: the address can be asked for again.
    assert cluster.request("DELETE", SVC.format(ns=ns) + "/a").status == 200
    assert create(cluster, ns, service("e", cluster_ip="10.96.0.107")).status == 201


def test_headless_and_external_name_get_no_ip(cluster, ns):
    headless = create(cluster, ns, service("h", cluster_ip="None"))
    assert headless.status == 201, headless.body
    assert headless.json()["spec"]["clusterIPs"] == ["None"]
    external = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                "spec": {"type": "ExternalName", "externalName": "example.com"}}
    answer = create(cluster, ns, external)
    assert answer.status == 201, answer.body
    assert "clusterIP" not in answer.json()["spec"]
    assert "clusterIPs" not in answer.json()["spec"]
    # ExternalName -> ClusterIP allocates; back to ExternalName releases.
    patch = {"spec": {"type": "ClusterIP", "ports": [{"port": 80}], "externalName": None}}
    answer = cluster.request("PATCH", SVC.format(ns=ns) + "/x", patch,
                             content_type="application/merge-patch+json")
    assert answer.status == 200, answer.body
    ip = answer.json()["spec"]["clusterIP"]
    assert ipaddress.ip_address(ip) in RANGE
    answer = cluster.request("PATCH", SVC.format(ns=ns) + "/x",
                             {"spec": {"type": "ExternalName", "externalName": "example.org"}},
                             content_type="application/merge-patch+json")
    assert answer.status == 200, answer.body
    assert "clusterIP" not in answer.json()["spec"]
    assert create(cluster, ns, service("y", cluster_ip=ip)).status == 201


def test_node_ports(cluster, ns):
    answer = create(cluster, ns, service("np", "NodePort", ports=[
        {"name": "http", "port": 80, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]))
    assert answer.status == 201, answer.body
    ports = answer.json()["spec"]["ports"]
    assert all(30000 <= p["nodePort"] <= 32767 for p in ports)
    assert ports[1]["nodePort"] == ports[2]["nodePort"] != ports[0]["nodePort"]
    wanted = create(cluster, ns, service("fixed", "NodePort", node_port=30031))
    assert wanted.status == 201, wanted.body
    assert wanted.json()["spec"]["ports"][0]["nodePort"] == 30031
    clash = create(cluster, ns, service("clash", "NodePort", node_port=30031))
    assert clash.status == 422
    assert clash.json()["message"] == ('Service "clash" is invalid: spec.ports[0].nodePort: '
                                       'Invalid value: 30031: provided port is already '
                                       'allocated')
    outside = create(cluster, ns, service("out", "NodePort", node_port=40000))
    assert outside.status == 422
    assert "provided port is not in the valid range" in outside.json()["message"]
    # NodePort -> ClusterIP drops and releases the port.
    answer = cluster.request("PATCH", SVC.format(ns=ns) + "/fixed", {"spec": {"type": "ClusterIP"}},
                             content_type="application/merge-patch+json")
    assert answer.status == 200, answer.body
    assert "nodePort" not in answer.json()["spec"]["ports"][0]
    assert create(cluster, ns, service("clash", "NodePort", node_port=30031)).status == 201
    lb = create(cluster, ns, service("lb", "LoadBalancer"))
    assert lb.status == 201 and lb.json()["spec"]["ports"][0]["nodePort"] >= 30000


def test_concurrent_creates_never_share(cluster, ns):
    def make(i):
        return create(cluster, ns, service(f"c{i}", "NodePort"))

    def same_ip(i):
        return create(cluster, ns, service(f"r{i}", cluster_ip="10.96.0.122"))

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(make, range(24)))
        racing = list(pool.map(same_ip, range(8)))
    assert all(a.status == 201 for a in answers), [a.body for a in answers if a.status != 201]
    ips = {a.json()["spec"]["clusterIP"] for a in answers}
    ports = {a.json()["spec"]["ports"][0]["nodePort"] for a in answers}
    assert len(ips) == 24 and len(ports) == 24
    assert sorted(a.status for a in racing) == [201] + [422] * 7


def test_allocations_survive_a_restart(cluster, ns):
    """A second API server on the same etcd (as after a restart) sees every booking."""
    first = create(cluster, ns, service("keep", "NodePort", cluster_ip="10.96.0.145",
                                        node_port=30032))
    assert first.status == 201, first.body
    port = free_port()
    log = cluster.base / "second.log"
    process = cluster.spawn(cluster.flags(port=port), log)
    try:
        import time
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if cluster.request("GET", "/readyz", port=port, timeout=2).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        path = SVC.format(ns=ns)
        ip = cluster.request("POST", path, service("other", cluster_ip="10.96.0.145"),
                             port=port)
        assert ip.status == 422, ip.body
        node = cluster.request("POST", path, service("other", "NodePort", node_port=30032),
                               port=port)
        assert node.status == 422, node.body
    finally:
        process.terminate()
        process.wait(10)
