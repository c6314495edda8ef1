"""kube-proxy's rule generation from Service and EndpointSlice dicts: assertions on the
iptables-restore text, against upstream's chain names and rule shapes."""
from __future__ import annotations

from kubesmith.proxy import servicemap
from kubesmith.proxy.rules import RuleOptions, build_rules
from kubesmith.proxy.servicemap import endpoint_chain_name, port_proto_hash
from tests.proxy.proxy_objects import POD_RANGE, endpoint, sep, service, slice_, svc_chain


def restore(services, slices, node="node-1", **options):
    options.setdefault("cluster_cidrs", [POD_RANGE])
    ports = servicemap.build(services, slices, node)
    return build_rules(ports, RuleOptions(**options))


def text(services, slices, **kw) -> str:
    return restore(services, slices, **kw).restore_input()


def lines_of(text_: str, chain: str, table: str = "nat") -> list[str]:
    section = text_.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0]
    return [line for line in section.splitlines() if line.startswith(f"-A {chain} ")]


def test_chain_names_hash_as_upstream():
    # Values from upstream's proxier tests.
    assert port_proto_hash("ns1/svc1:p80", "tcp") == "XPGD46QRK7WJZT7O"
    assert endpoint_chain_name("ns1/svc1:p80", "tcp", "10.180.0.1:80") == \
        "KUBE-SEP-SXIVWICOYRO3J4NJ"
    # A port without a name is named by the service alone.
    port = servicemap.build([service(ports=[{"port": 53, "protocol": "UDP"}])], [], "n")[0]
    assert port.name == "default/web" and port.cluster_chain == \
        "KUBE-SVC-" + port_proto_hash("default/web", "udp")


def test_cluster_ip_spreads_evenly_over_ready_endpoints():
    out = text([service()], [slice_("web", "default", endpoint("10.244.1.5"),
                                    endpoint("10.244.2.5", node="node-2"),
                                    endpoint("10.244.3.5", node="node-3"),
                                    endpoint("10.244.4.5", ready=False))])
    chain = svc_chain()
    assert (f"-A KUBE-SERVICES -m comment --comment \"default/web:http cluster IP\" "
            f"-m tcp -p tcp -d 10.96.0.20 --dport 80 -j {chain}") in out
    rules = lines_of(out, chain)
    assert rules[0].endswith(f"! -s {POD_RANGE} -j KUBE-MARK-MASQ")
    spread = rules[1:]
    assert len(spread) == 3           # the not-ready endpoint gets no traffic
    assert "--probability 0.3333333333 -j " + sep("10.244.1.5:8080") in spread[0]
    assert "--probability 0.5000000000 -j " + sep("10.244.2.5:8080") in spread[1]
    assert "statistic" not in spread[2] and spread[2].endswith(sep("10.244.3.5:8080"))
    assert f":{sep('10.244.4.5:8080')} " not in out
    dnat = lines_of(out, sep("10.244.2.5:8080"))
    assert dnat == [
        f"-A {sep('10.244.2.5:8080')} -m comment --comment default/web:http "
        "-s 10.244.2.5 -j KUBE-MARK-MASQ",
        f"-A {sep('10.244.2.5:8080')} -m comment --comment default/web:http "
        "-m tcp -p tcp -j DNAT --to-destination 10.244.2.5:8080"]


def test_serving_terminating_endpoints_only_when_none_is_ready():
    terminating = endpoint("10.244.1.7", ready=False, serving=True, terminating=True)
    out = text([service()], [slice_("web", "default", terminating)])
    assert lines_of(out, svc_chain())[-1].endswith(sep("10.244.1.7:8080"))
    out = text([service()], [slice_("web", "default", terminating, endpoint("10.244.1.8"))])
    assert sep("10.244.1.7:8080") not in out and sep("10.244.1.8:8080") in out


def test_service_without_endpoints_is_rejected_in_filter():
    out = text([service(type_="NodePort", ports=[{"name": "http", "port": 80,
                                                  "protocol": "TCP", "nodePort": 30080}])],
               [])
    assert ('-A KUBE-SERVICES -m comment --comment "default/web:http has no endpoints" '
            "-m tcp -p tcp -d 10.96.0.20 --dport 80 -j REJECT") in lines_of(
        out, "KUBE-SERVICES", "filter")
    assert ('-A KUBE-EXTERNAL-SERVICES -m comment --comment "default/web:http has no '
            'endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j REJECT'
            ) in out
    assert svc_chain() not in out and "KUBE-EXT-" not in out


def test_node_port_with_cluster_policy_masquerades():
    svc = service(type_="NodePort", ports=[{"name": "http", "port": 80, "protocol": "TCP",
                                            "nodePort": 30080}])
    out = text([svc], [slice_("web", "default", endpoint("10.244.2.5", node="node-2"))])
    ext = "KUBE-EXT-" + port_proto_hash("default/web:http", "tcp")
    assert lines_of(out, "KUBE-NODEPORTS") == [
        f"-A KUBE-NODEPORTS -m comment --comment default/web:http -m tcp -p tcp "
        f"--dport 30080 -j {ext}"]
    assert lines_of(out, ext) == [
        f'-A {ext} -m comment --comment "masquerade traffic for default/web:http external '
        'destinations" -j KUBE-MARK-MASQ', f"-A {ext} -j {svc_chain()}"]
    # NodePorts are the last rule of KUBE-SERVICES, on local addresses.
    assert lines_of(out, "KUBE-SERVICES")[-1] == (
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this '
        'must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    no_localhost = text([svc], [], localhost_node_ports=False)
    assert lines_of(no_localhost, "KUBE-SERVICES")[-1].endswith(
        "--dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS")
    assert "KUBE-FIREWALL" not in no_localhost and "KUBE-FIREWALL" in out
    only = text([svc], [], node_port_ips=["192.168.50.2"])
    assert lines_of(only, "KUBE-SERVICES")[-1].endswith(
        "-d 192.168.50.2 -j KUBE-NODEPORTS")


def test_external_traffic_policy_local_uses_local_endpoints_only():
    svc = service(type_="NodePort", externalTrafficPolicy="Local",
                  ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}])
    slices = [slice_("web", "default", endpoint("10.244.1.5", node="node-1"),
                     endpoint("10.244.2.5", node="node-2"))]
    out = text([svc], slices)
    hash_ = port_proto_hash("default/web:http", "tcp")
    ext, svl = f"KUBE-EXT-{hash_}", f"KUBE-SVL-{hash_}"
    ext_rules = lines_of(out, ext)
    assert f"-s {POD_RANGE} -j {svc_chain()}" in ext_rules[0]     # pods: any endpoint
    assert "--src-type LOCAL -j KUBE-MARK-MASQ" in ext_rules[1]
    assert "--src-type LOCAL -j " + svc_chain() in ext_rules[2]
    assert ext_rules[3] == f"-A {ext} -j {svl}"
    assert lines_of(out, svl) == [f'-A {svl} -m comment --comment "default/web:http -> '
                                  f'10.244.1.5:8080" -j {sep("10.244.1.5:8080")}']
    # ClusterIP traffic still goes to every endpoint.
    assert len(lines_of(out, svc_chain())) == 3
    # On a node without local endpoints, outside traffic to the NodePort is dropped.
    other = text([svc], slices, node="node-3")
    assert ('-A KUBE-EXTERNAL-SERVICES -m comment --comment "default/web:http has no local '
            'endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j DROP'
            ) in other
    assert svl not in other


def test_session_affinity_client_ip():
    svc = service(sessionAffinity="ClientIP",
                  sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}})
    out = text([svc], [slice_("web", "default", endpoint("10.244.1.5"),
                              endpoint("10.244.2.5"))])
    a, b = sep("10.244.1.5:8080"), sep("10.244.2.5:8080")
    rules = lines_of(out, svc_chain())
    assert f"-m recent --name {a} --rcheck --seconds 600 --reap -j {a}" in rules[1]
    assert f"-m recent --name {b} --rcheck --seconds 600 --reap -j {b}" in rules[2]
    assert f"-m recent --name {a} --set -m tcp -p tcp -j DNAT" in lines_of(out, a)[1]
    default = text([service(sessionAffinity="ClientIP")],
                   [slice_("web", "default", endpoint("10.244.1.5"))])
    assert "--seconds 10800" in default


def test_masquerade_all_and_no_cluster_cidr():
    slices = [slice_("web", "default", endpoint("10.244.1.5"))]
    everything = lines_of(text([service()], slices, masquerade_all=True), svc_chain())[0]
    assert everything.endswith("--dport 80 -j KUBE-MARK-MASQ") and "! -s" not in everything
    unknown_pods = lines_of(text([service()], slices, cluster_cidrs=[]), svc_chain())
    assert all("KUBE-MARK-MASQ" not in rule for rule in unknown_pods)
    custom = text([service()], slices, masquerade_mark=RuleOptions.mark_for_bit(5))
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x20" in custom
    assert "-m mark ! --mark 0x20/0x20 -j RETURN" in custom


def test_udp_and_multiple_ports_match_by_name_and_protocol():
    dns = service("kube-dns", "kube-system", cluster_ip="10.96.0.10", ports=[
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"}])
    eps = slice_("kube-dns", "kube-system", endpoint("192.168.50.1"), ports=[
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"}])
    out = text([dns], [eps])
    udp = svc_chain("kube-system/kube-dns:dns", "udp")
    tcp = svc_chain("kube-system/kube-dns:dns-tcp", "tcp")
    assert f"-m udp -p udp -d 10.96.0.10 --dport 53 -j {udp}" in out
    assert f"-m tcp -p tcp -d 10.96.0.10 --dport 53 -j {tcp}" in out
    udp_sep = sep("192.168.50.1:53", "kube-system/kube-dns:dns", "udp")
    assert f"-m udp -p udp -j DNAT --to-destination 192.168.50.1:53" in lines_of(out, udp_sep)[1]


def test_services_not_proxied():
    headless = service("headless", cluster_ip="None")
    external = service("ext", type_="ExternalName", cluster_ip="")
    other_proxy = service("other", labels={"service.kubernetes.io/service-proxy-name": "x"})
    assert servicemap.build([headless, external, other_proxy], [], "n") == []


def test_slices_are_merged_and_ipv6_ignored():
    slices = [slice_("web", "default", endpoint("10.244.1.5", ready=False), name="web-1"),
              slice_("web", "default", endpoint("10.244.1.5"), endpoint("10.244.1.6"),
                     name="web-2"),
              slice_("web", "default", endpoint("fd00::5"), name="web-3",
                     address_type="IPv6"),
              {"metadata": {"name": "stray", "namespace": "default"},
               "addressType": "IPv4", "endpoints": [endpoint("10.244.9.9")]}]
    port = servicemap.build([service()], slices, "node-1")[0]
    assert [(str(ep), ep.ready, ep.is_local) for ep in port.endpoints] == [
        ("10.244.1.5:8080", True, True), ("10.244.1.6:8080", True, True)]


def test_external_ips_and_load_balancer_source_ranges():
    svc = service(type_="LoadBalancer", externalIPs=["192.168.60.10"],
                  loadBalancerSourceRanges=["192.168.0.0/16"],
                  ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30081}])
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "192.168.60.20"}]}}
    out = text([svc], [slice_("web", "default", endpoint("10.244.1.5"))],
               node_ips=["192.168.1.2"])
    hash_ = port_proto_hash("default/web:http", "tcp")
    assert f"-d 192.168.60.10 --dport 80 -j KUBE-EXT-{hash_}" in out
    assert f"-d 192.168.60.20 --dport 80 -j KUBE-FW-{hash_}" in out
    fw = lines_of(out, f"KUBE-FW-{hash_}")
    assert f"-s 192.168.0.0/16 -j KUBE-EXT-{hash_}" in fw[0]
    assert f"-s 192.168.60.20 -j KUBE-EXT-{hash_}" in fw[1]      # the node is allowed
    assert "will be dropped by KUBE-PROXY-FIREWALL" in fw[2]
    assert "-d 192.168.60.20 --dport 80 -j DROP" in "\n".join(
        lines_of(out, "KUBE-PROXY-FIREWALL", "filter"))


def test_stale_chains_are_flushed_and_deleted_in_the_same_restore():
    rules = restore([service()], [slice_("web", "default", endpoint("10.244.1.5"))])
    out = rules.restore_input(["KUBE-SEP-GONE"])
    nat = out.split("*nat\n", 1)[1]
    assert ":KUBE-SEP-GONE - [0:0]" in nat and nat.rstrip().endswith("-X KUBE-SEP-GONE\nCOMMIT")
    assert rules.active_nat_chains == {svc_chain(), sep("10.244.1.5:8080")}
    # The same state always gives the same text.
    again = restore([service()], [slice_("web", "default", endpoint("10.244.1.5"))])
    assert again.restore_input() == rules.restore_input()
