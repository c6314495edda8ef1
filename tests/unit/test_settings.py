"""Settings validation: each bad setting is a clear error naming it; defaults are documented."""
import ipaddress
from pathlib import Path

import pytest

from provision import cluster, settings as settings_mod
from provision.settings import SettingsError, load_settings, validate_topology
from provision.topology import Machine, Topology

REPO = Path(__file__).resolve().parents[2]


def topo(*machines):
    return Topology(tuple(Machine(n, a, frozenset(g)) for n, a, g in machines))


ONE_MASTER = topo(("master-1", "10.240.0.11", {"masters", "etcd"}),
                  ("worker-1", "10.240.0.12", {"workers"}))


def problems_of(**data):
    with pytest.raises(SettingsError) as info:
        load_settings(data)
    return "\n".join(info.value.problems)


def test_defaults_are_valid_and_match_group_data():
    documented = settings_mod.read_group_data(REPO / "group_data" / "all.py")
    assert set(documented) == set(settings_mod.SETTINGS), "every setting documented, no extras"
    for name, (default, _) in settings_mod.SETTINGS.items():
        assert documented[name] == default, name
    s = load_settings({})
    assert s.first_service_ip == ipaddress.ip_address("10.96.0.1")
    assert s.dns_ip == ipaddress.ip_address("10.96.0.10")
    assert s.state_dir.name == "kubesmith"


def test_group_data_documents_each_setting_with_a_comment():
    text = (REPO / "group_data" / "all.py").read_text().splitlines()
    for name in settings_mod.SETTINGS:
        line = next(i for i, l in enumerate(text) if l.startswith(f"{name} ="))
        assert text[line - 1].startswith("#") or text[line - 1].startswith(
            next(n for n in settings_mod.SETTINGS if text[line - 1].startswith(n))), name


@pytest.mark.parametrize("data, expected", [
    ({"service_cidr": "10.244.0.0/16"}, "overlaps pod_cidr"),
    ({"pod_cidr": "10.96.0.0/16"}, "overlaps pod_cidr"),
    ({"dns_ip": "10.200.0.10"}, "dns_ip 10.200.0.10 is outside service_cidr"),
    ({"dns_ip": "10.96.0.1"}, "reserved"),
    ({"service_cidr": "10.96.0.0/33"}, "service_cidr="),
    ({"service_cidr": "10.96.0.1/12"}, "service_cidr="),      # host bits set
    ({"dns_ip": "10.96.0.300"}, "dns_ip="),
    ({"api_port": 0}, "api_port="),
    ({"api_port": "6443"}, "api_port="),
    ({"api_port": 30080}, "inside node_port_range"),
    ({"service_manager": "upstart"}, "must be one of auto, systemd, supervisor"),
    ({"cluster_name": "My_Cluster"}, "cluster_name="),
    ({"node_port_range": "32767-30000"}, "node_port_range="),
    ({"dns_domain": "Cluster..local"}, "dns_domain="),
    ({"load_balancer_ip": "lb.example"}, "load_balancer_ip="),
    ({"node_cidr_mask_size": 16}, "node_cidr_mask_size"),
    ({"key_algorithm": "dsa"}, "key_algorithm="),
])
def test_bad_settings_are_named(data, expected):
    assert expected in problems_of(**data)


def test_every_problem_reported_at_once():
    with pytest.raises(SettingsError) as info:
        load_settings({"api_port": -1, "service_manager": "x", "cluster_name": "UPPER"})
    assert len(info.value.problems) == 3
    assert "3 problem(s)" in str(info.value)


def test_unknown_setting_is_rejected_with_a_suggestion():
    with pytest.raises(SettingsError) as info:
        settings_mod.check_names({"servce_cidr": "10.0.0.0/16", "ssh_user": "root"})
    assert info.value.problems == ["servce_cidr is not a cluster setting (did you mean service_cidr?)"]


@pytest.mark.parametrize("machines, expected", [
    ([("worker-1", "10.240.0.12", {"workers", "etcd"})], "no masters"),
    ([("master-1", "10.240.0.11", {"masters"})], "no etcd members"),
    ([("master-1", "10.240.0.11", {"masters", "etcd"}),
      ("master-2", "10.240.0.12", {"masters", "etcd"})], "odd count"),
    ([("master-1", "10.240.0.300", {"masters", "etcd"})], "is not an IP address"),
    ([("master-1", "not-an-ip", {"masters", "etcd"})], "is not an IP address"),
    ([("master-1", "10.240.0.11", {"masters", "etcd"}),
      ("worker-1", "10.240.0.11", {"workers"})], "share the address"),
    ([("master-1", "10.96.0.5", {"masters", "etcd"})], "inside service_cidr"),
    ([("master-1", "10.244.3.5", {"masters", "etcd"})], "inside pod_cidr"),
    ([("Master_1", "10.240.0.11", {"masters", "etcd"})], "not a lowercase DNS label"),
])
def test_bad_inventory_is_named(machines, expected):
    with pytest.raises(SettingsError) as info:
        validate_topology(load_settings({}), topo(*machines))
    assert expected in "\n".join(info.value.problems)


def test_good_inventory_passes():
    validate_topology(load_settings({}), ONE_MASTER)
    three = topo(*[(f"master-{i}", f"10.240.0.{10 + i}", {"masters", "etcd"}) for i in (1, 2, 3)])
    validate_topology(load_settings({}), three)


def test_settings_must_agree_across_hosts():
    hosts = [cluster.InventoryHost("master-1", frozenset({"masters", "etcd"}), {"api_port": 6443}),
             cluster.InventoryHost("worker-1", frozenset({"workers"}), {"api_port": 7443})]
    with pytest.raises(SettingsError, match="must be the same on every host"):
        cluster.settings_from(hosts)


def test_api_endpoint_prefers_load_balancer():
    assert load_settings({}).api_endpoint(ONE_MASTER) == "10.240.0.11"
    assert load_settings({"load_balancer_ip": "10.240.0.100"}).api_endpoint(ONE_MASTER) == "10.240.0.100"
    assert load_settings({"load_balancer_name": "api.lab"}).api_endpoint(ONE_MASTER) == "api.lab"
