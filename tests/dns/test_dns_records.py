"""RecordStore on plain objects: the names and answers of the Kubernetes DNS
specification, negative answers with the SOA, and the index following changes."""
from __future__ import annotations

import ipaddress

import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from kubesmith.dns.records import RecordStore, dashed, undashed


def name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def service(ns, svc, cluster_ip="10.96.0.20", ports=(("http", 80, "TCP"),), **spec):
    body = {"clusterIP": cluster_ip, "ports": [
        {"name": n, "port": p, "protocol": proto} for n, p, proto in ports]}
    if cluster_ip and cluster_ip != "None":
        body["clusterIPs"] = [cluster_ip]
    body.update(spec)
    return {"metadata": {"namespace": ns, "name": svc}, "spec": body}


def endpoint_slice(ns, svc, endpoints, name_=None, ports=(("http", 8080, "TCP"),),
                   address_type="IPv4"):
    return {"metadata": {"namespace": ns, "name": name_ or f"{svc}-abcde",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": address_type, "endpoints": endpoints,
            "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports]}


def ask(store, qname, qtype="A"):
    answer = store.lookup(name(qname), dns.rdatatype.from_text(qtype))
    assert answer is not None, f"{qname} was not answered locally"
    return answer


def values(answer, section="answer"):
    return sorted(rdata.to_text() for rrset in getattr(answer, section) for rdata in rrset)


@pytest.fixture
def store():
    s = RecordStore("cluster.local", 5, reverse_cidrs=["10.96.0.0/12"])
    s.set_namespace({"metadata": {"name": "default"}})
    s.set_namespace({"metadata": {"name": "kube-system"}})
    s.synced = True
    return s


def test_cluster_ip_service_a_srv_ptr(store):
    store.set_service(service("default", "web"))
    answer = ask(store, "web.default.svc.cluster.local")
    assert answer.rcode == dns.rcode.NOERROR and values(answer) == ["10.96.0.20"]
    assert answer.answer[0].ttl == 5
    srv = ask(store, "_http._tcp.web.default.svc.cluster.local", "SRV")
    assert values(srv) == ["0 100 80 web.default.svc.cluster.local."]
    assert values(srv, "additional") == ["10.96.0.20"]      # the target's address
    ptr = ask(store, "20.0.96.10.in-addr.arpa", "PTR")
    assert values(ptr) == ["web.default.svc.cluster.local."]


def test_names_are_case_insensitive_and_echo_the_question(store):
    store.set_service(service("default", "web"))
    answer = ask(store, "WEB.Default.svc.CLUSTER.local")
    assert values(answer) == ["10.96.0.20"]
    assert answer.answer[0].name.to_text() == "WEB.Default.svc.CLUSTER.local."


def test_unnamed_ports_have_no_srv(store):
    store.set_service(service("default", "web", ports=(("", 80, "TCP"),)))
    answer = ask(store, "_._tcp.web.default.svc.cluster.local", "SRV")
    assert answer.rcode == dns.rcode.NXDOMAIN


def test_dual_stack_service_has_a_and_aaaa(store):
    store.set_service(service("default", "web", clusterIPs=["10.96.0.20", "fd00:96::20"]))
    assert values(ask(store, "web.default.svc.cluster.local", "AAAA")) == ["fd00:96::20"]
    assert values(ask(store, "web.default.svc.cluster.local", "A")) == ["10.96.0.20"]
    ptr = ask(store, dns.name.Name(dns.name.from_text(
        "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa")).to_text(),
        "PTR")
    assert values(ptr) == ["web.default.svc.cluster.local."]


def test_headless_service_ready_endpoints(store):
    store.set_service(service("default", "db", cluster_ip="None",
                              ports=(("pg", 5432, "TCP"),)))
    store.set_slice(endpoint_slice("default", "db", [
        {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": True}},
        {"addresses": ["10.244.2.7"]},                               # unset: ready
        {"addresses": ["10.244.2.9"], "conditions": {"ready": False}},
    ], ports=(("pg", 5432, "TCP"),)))
    assert values(ask(store, "db.default.svc.cluster.local")) == ["10.244.1.5", "10.244.2.7"]
    assert values(ask(store, "db-0.db.default.svc.cluster.local")) == ["10.244.1.5"]
    assert values(ask(store, "10-244-2-7.db.default.svc.cluster.local")) == ["10.244.2.7"]
    assert ask(store, "10-244-2-9.db.default.svc.cluster.local").rcode == dns.rcode.NXDOMAIN
    srv = ask(store, "_pg._tcp.db.default.svc.cluster.local", "SRV")
    assert [v.split()[2:] for v in values(srv)] == [
        ["5432", "10-244-2-7.db.default.svc.cluster.local."],
        ["5432", "db-0.db.default.svc.cluster.local."]]
    assert values(srv, "additional") == ["10.244.1.5", "10.244.2.7"]
    assert values(ask(store, "5.1.244.10.in-addr.arpa", "PTR")) == [
        "db-0.db.default.svc.cluster.local."]


def test_headless_service_without_ready_endpoints_is_nxdomain(store):
    store.set_service(service("default", "db", cluster_ip="None"))
    answer = ask(store, "db.default.svc.cluster.local")
    assert answer.rcode == dns.rcode.NXDOMAIN
    assert answer.authority[0].rdtype == dns.rdatatype.SOA


def test_publish_not_ready_addresses(store):
    store.set_service(service("default", "db", cluster_ip="None",
                              publishNotReadyAddresses=True))
    store.set_slice(endpoint_slice("default", "db", [
        {"addresses": ["10.244.2.9"], "conditions": {"ready": False}}]))
    assert values(ask(store, "db.default.svc.cluster.local")) == ["10.244.2.9"]


def test_slices_of_one_service_add_up_and_duplicates_count_once(store):
    store.set_service(service("default", "db", cluster_ip="None"))
    store.set_slice(endpoint_slice("default", "db", [{"addresses": ["10.244.1.5"]}], "db-a"))
    store.set_slice(endpoint_slice("default", "db", [{"addresses": ["10.244.1.6"]},
                                                     {"addresses": ["10.244.1.5"]}], "db-b"))
    assert values(ask(store, "db.default.svc.cluster.local")) == ["10.244.1.5", "10.244.1.6"]
    store.remove_slice(endpoint_slice("default", "db", [], "db-a"))
    assert values(ask(store, "db.default.svc.cluster.local")) == ["10.244.1.5", "10.244.1.6"]
    store.remove_slice(endpoint_slice("default", "db", [], "db-b"))
    assert ask(store, "db.default.svc.cluster.local").rcode == dns.rcode.NXDOMAIN


def test_external_name_is_a_cname(store):
    store.set_service({"metadata": {"namespace": "default", "name": "ext"},
                       "spec": {"type": "ExternalName", "externalName": "www.example.com"}})
    answer = ask(store, "ext.default.svc.cluster.local", "A")
    assert values(answer) == ["www.example.com."]
    assert answer.answer[0].rdtype == dns.rdatatype.CNAME
    assert answer.external_target == name("www.example.com")
    cname = ask(store, "ext.default.svc.cluster.local", "CNAME")
    assert values(cname) == ["www.example.com."] and cname.external_target is None


def test_external_name_inside_the_cluster_is_followed_here(store):
    store.set_service(service("default", "web"))
    store.set_service({"metadata": {"namespace": "default", "name": "alias"},
                       "spec": {"type": "ExternalName",
                                "externalName": "web.default.svc.cluster.local"}})
    answer = ask(store, "alias.default.svc.cluster.local", "A")
    assert values(answer) == ["10.96.0.20", "web.default.svc.cluster.local."]
    assert answer.external_target is None


def test_negative_answers_carry_the_soa(store):
    store.set_service(service("default", "web"))
    missing = ask(store, "nope.default.svc.cluster.local")
    assert missing.rcode == dns.rcode.NXDOMAIN and not missing.answer
    soa = missing.authority[0]
    assert soa.name == name("cluster.local") and soa.ttl == 5
    assert next(iter(soa)).mname == name("ns.dns.cluster.local")
    nodata = ask(store, "web.default.svc.cluster.local", "AAAA")
    assert nodata.rcode == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    # Names between the zone and a record exist (empty non-terminals) ...
    for between in ("default.svc.cluster.local", "svc.cluster.local",
                    "_tcp.web.default.svc.cluster.local"):
        answer = ask(store, between)
        assert answer.rcode == dns.rcode.NOERROR and not answer.answer, between
    # ... an existing namespace without services too; an unknown one does not.
    assert ask(store, "kube-system.svc.cluster.local").rcode == dns.rcode.NOERROR
    assert ask(store, "nons.svc.cluster.local").rcode == dns.rcode.NXDOMAIN
    # A search-list expansion of a service name is simply unknown.
    assert ask(store, "web.default.svc.cluster.local.default.svc.cluster.local").rcode \
        == dns.rcode.NXDOMAIN


def test_removing_a_service_removes_its_names(store):
    store.set_service(service("default", "web"))
    store.remove_service(service("default", "web"))
    assert ask(store, "web.default.svc.cluster.local").rcode == dns.rcode.NXDOMAIN
    assert ask(store, "_tcp.web.default.svc.cluster.local").rcode == dns.rcode.NXDOMAIN
    assert ask(store, "20.0.96.10.in-addr.arpa", "PTR").rcode == dns.rcode.NXDOMAIN


def test_changed_cluster_ip_moves_the_ptr(store):
    store.set_service(service("default", "web"))
    store.set_service(service("default", "web", cluster_ip="10.96.0.21"))
    assert values(ask(store, "web.default.svc.cluster.local")) == ["10.96.0.21"]
    assert ask(store, "20.0.96.10.in-addr.arpa", "PTR").rcode == dns.rcode.NXDOMAIN
    assert values(ask(store, "21.0.96.10.in-addr.arpa", "PTR")) == [
        "web.default.svc.cluster.local."]


def test_pod_records_insecure_mode(store):
    assert values(ask(store, "10-244-1-5.default.pod.cluster.local")) == ["10.244.1.5"]
    assert values(ask(store, "fd00--5.default.pod.cluster.local", "AAAA")) == ["fd00::5"]
    nodata = ask(store, "10-244-1-5.default.pod.cluster.local", "AAAA")
    assert nodata.rcode == dns.rcode.NOERROR and not nodata.answer
    assert ask(store, "not-an-ip.default.pod.cluster.local").rcode == dns.rcode.NXDOMAIN
    assert ask(store, "10-244-1-5.nons.pod.cluster.local").rcode == dns.rcode.NXDOMAIN
    assert ask(store, "default.pod.cluster.local").rcode == dns.rcode.NOERROR


def test_schema_version_and_apex(store):
    txt = ask(store, "dns-version.cluster.local", "TXT")
    assert values(txt) == ['"1.1.0"']
    store.set_service(service("kube-system", "kube-dns", cluster_ip="10.96.0.10",
                              ports=(("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"))))
    ns = ask(store, "cluster.local", "NS")
    assert values(ns) == ["ns.dns.cluster.local."]
    assert values(ns, "additional") == ["10.96.0.10"]
    assert values(ask(store, "cluster.local", "SOA"))[0].startswith(
        "ns.dns.cluster.local. hostmaster.cluster.local.")
    assert values(ask(store, "_dns._udp.kube-dns.kube-system.svc.cluster.local", "SRV")) == [
        "0 100 53 kube-dns.kube-system.svc.cluster.local."]


def test_reverse_names(store):
    # Inside --reverse-cidrs: answered here, unknown ones NXDOMAIN with that zone's SOA.
    answer = ask(store, "99.0.96.10.in-addr.arpa", "PTR")
    assert answer.rcode == dns.rcode.NXDOMAIN
    assert answer.authority[0].name == name("10.in-addr.arpa")
    # Outside: known endpoint addresses are answered, others are not this store's.
    assert store.lookup(name("4.3.2.1.in-addr.arpa"), dns.rdatatype.PTR) is None
    store.set_service(service("default", "db", cluster_ip="None"))
    store.set_slice(endpoint_slice("default", "db", [{"addresses": ["192.168.7.3"]}]))
    assert values(ask(store, "3.7.168.192.in-addr.arpa", "PTR")) == [
        "192-168-7-3.db.default.svc.cluster.local."]
    assert store.is_local(name("3.7.168.192.in-addr.arpa"))
    assert not store.is_local(name("4.7.168.192.in-addr.arpa"))
    assert not store.is_local(name("example.com"))


def test_not_synced_is_servfail_for_cluster_names_only():
    store = RecordStore()
    assert ask(store, "kubernetes.default.svc.cluster.local").rcode == dns.rcode.SERVFAIL
    assert store.lookup(name("example.com"), dns.rdatatype.A) is None


def test_any_query_and_other_domain():
    store = RecordStore("k8s.example.", 30)
    store.set_namespace({"metadata": {"name": "default"}})
    store.synced = True
    store.set_service(service("default", "web"))
    answer = ask(store, "web.default.svc.k8s.example", "ANY")
    assert values(answer) == ["10.96.0.20"] and answer.answer[0].ttl == 30
    assert store.lookup(name("web.default.svc.cluster.local"), dns.rdatatype.A) is None


def test_dashed_names():
    assert dashed("10.1.2.3") == "10-1-2-3" and undashed("10-1-2-3") == "10.1.2.3"
    assert dashed("fd00::1") == "fd00--1" and undashed("fd00--1") == "fd00::1"
    assert undashed("web") is None


def test_a_record_given_by_two_services_stays_until_both_are_gone(store):
    for svc in ("a", "b"):
        store.set_service(service("default", svc, cluster_ip="None"))
        store.set_slice(endpoint_slice("default", svc, [{"addresses": ["10.244.1.5"]}]))
    assert values(ask(store, "5.1.244.10.in-addr.arpa", "PTR")) == [
        "10-244-1-5.a.default.svc.cluster.local.", "10-244-1-5.b.default.svc.cluster.local."]
    store.remove_service(service("default", "a", cluster_ip="None"))
    assert values(ask(store, "5.1.244.10.in-addr.arpa", "PTR")) == [
        "10-244-1-5.b.default.svc.cluster.local."]
    store.remove_slice(endpoint_slice("default", "b", []))
    assert store.lookup(name("5.1.244.10.in-addr.arpa"), dns.rdatatype.PTR) is None
    # Nothing is left behind in the index but the zone's own names.
    store.remove_service(service("default", "b", cluster_ip="None"))
    assert all("10.in-addr.arpa" not in key for key in store._nodes)


def test_a_slice_moving_to_another_service(store):
    store.set_service(service("default", "a", cluster_ip="None"))
    store.set_service(service("default", "b", cluster_ip="None"))
    moved = endpoint_slice("default", "a", [{"addresses": ["10.244.1.5"]}], "shared")
    store.set_slice(moved)
    moved = endpoint_slice("default", "b", [{"addresses": ["10.244.1.5"]}], "shared")
    store.set_slice(moved)
    assert ask(store, "a.default.svc.cluster.local").rcode == dns.rcode.NXDOMAIN
    assert values(ask(store, "b.default.svc.cluster.local")) == ["10.244.1.5"]


def test_ttls_and_reverse_zones_of_ranges():
    store = RecordStore("cluster.local", 0)
    store.synced = True
    assert ask(store, "dns-version.cluster.local", "TXT").answer[0].ttl == 28800
    assert store.reverse_zone(ipaddress.ip_network("10.96.0.0/12")) == name(
        "10.in-addr.arpa")
    assert store.reverse_zone(ipaddress.ip_network("10.244.0.0/16")) == name(
        "244.10.in-addr.arpa")
    # fd00:10:96::/112 keeps 28 nibbles: fd00 0010 0096 0000 0000 0000 0000
    assert store.reverse_zone(ipaddress.ip_network("fd00:10:96::/112")) == name(
        "0.0.0.0." * 4 + "6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa")
