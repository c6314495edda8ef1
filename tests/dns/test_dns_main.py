"""kubesmith-dns's command line: defaults, pflag syntax, errors."""
from __future__ import annotations

import pytest

from kubesmith.dns.main import UsageError, main, parse


def test_defaults():
    options = parse(["--kubeconfig=/etc/kubernetes/dns.conf", "--bind-address=192.0.2.10"])
    assert options.cluster_domain == "cluster.local"
    assert options.bind_address == ["192.0.2.10"]
    assert options.advertise_address == "192.0.2.10"
    assert (options.port, options.ttl) == (53, 5)
    assert (options.health_port, options.ready_port, options.metrics_port) == (8080, 8181, 9153)
    assert options.upstream_resolv_conf == "/etc/resolv.conf"
    assert options.upstream_timeout == 2.0 and options.lameduck == 5.0
    assert options.service == "kube-system/kube-dns"
    assert options.node_name


def test_several_bind_addresses_and_values():
    options = parse(["--kubeconfig", "k", "--bind-address=192.0.2.10,192.0.2.11",
                     "--bind-address", "192.0.2.12", "--bind-address=192.0.2.10",
                     "--advertise-address=192.0.2.11", "--cluster-domain=k8s.example",
                     "--ttl=30s", "--upstream-timeout=500ms", "--metrics-port=0",
                     "--reverse-cidrs=10.96.0.0/12,10.244.0.0/16", "--node-name=cp1",
                     "--v=4"])
    assert options.bind_address == ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
    assert options.advertise_address == "192.0.2.11"
    assert (options.ttl, options.upstream_timeout, options.metrics_port) == (30, 0.5, 0)
    assert options.reverse_cidrs == ["10.96.0.0/12", "10.244.0.0/16"]
    assert (options.cluster_domain, options.node_name, options.v) == ("k8s.example", "cp1", 4)
    assert parse(["--kubeconfig=k", "--bind-address=192.0.2.1", "--ttl=7"]).ttl == 7


@pytest.mark.parametrize("argv, message", [
    ([], "--kubeconfig is required"),
    (["--kubeconfig=k"], "--advertise-address is needed"),
    (["--kubeconfig=k", "--bind-address=::"], "--advertise-address is needed"),
    (["--kubeconfig=k", "--bind-address=nope"], "not an IP address"),
    (["--kubeconfig=k", "--bind-address=192.0.2.1", "--port=0"], "not a valid port"),
    (["--kubeconfig=k", "--bind-address=192.0.2.1", "--service=kube-dns"],
     "--service must be"),
    (["--kubeconfig=k", "--bind-address=192.0.2.1", "--ttl=2h"], "TTL"),
    (["--kubeconfig=k", "--bind-address=192.0.2.1", "--frobnicate"], "unknown flag"),
])
def test_bad_command_lines(argv, message):
    with pytest.raises(UsageError, match=message):
        parse(argv)


def test_no_registration_needs_no_advertise_address():
    options = parse(["--kubeconfig=k", "--service="])
    assert options.bind_address == ["0.0.0.0"] and options.advertise_address == ""


def test_main_reports_usage_errors(capsys):
    assert main(["--kubeconfig=k", "--port=x"]) == 2
    assert "invalid port value" in capsys.readouterr().err


def test_main_fails_cleanly_without_a_kubeconfig(tmp_path):
    assert main([f"--kubeconfig={tmp_path / 'missing.conf'}", "--bind-address=127.0.0.1"]) == 1
