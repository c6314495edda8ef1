"""The Proxier's sync logic against recorded commands (no iptables touched): writes only
on change, stale chains, jump rules, conntrack cleanup, the sync loop's pacing, health
and metrics; and kube-proxy's configuration."""
from __future__ import annotations

import asyncio
import datetime
import textwrap

import pytest
from aiohttp.test_utils import TestClient, TestServer

from kubesmith.proxy import config as proxy_config
from kubesmith.proxy.iptables import CommandRunner, Conntrack, Iptables, Result
from kubesmith.proxy.main import health_app, main as proxy_main, metrics_app
from kubesmith.proxy.metrics import ProxyHealth, ProxyMetrics
from kubesmith.proxy.proxier import Proxier, node_port_ips
from kubesmith.proxy.rules import RuleOptions
from tests.proxy.proxy_objects import endpoint, service, slice_


class RecordingRunner(CommandRunner):
    """Answers like a host with empty tables; remembers every command."""

    def __init__(self, nat_chains=()):
        super().__init__()
        self.commands: list[tuple[list[str], str | None]] = []
        self.nat_chains = list(nat_chains)
        self.rules: set[tuple[str, ...]] = set()

    async def run(self, argv, *, input=None, check=True):
        argv = list(argv)
        self.commands.append((argv, input))
        if argv[0] == "iptables-save":
            chains = "".join(f":{c} - [0:0]\n" for c in self.nat_chains)
            return Result(0, f"*nat\n{chains}COMMIT\n", "")
        if argv[0] == "iptables" and "-C" in argv:
            return Result(0 if tuple(argv[argv.index("-C"):][1:]) in self.rules else 1, "", "")
        if argv[0] == "iptables" and "-I" in argv:
            rest = argv[argv.index("-I") + 1:]
            self.rules.add((rest[0], *rest[2:]))
        if argv[0] == "conntrack":
            return Result(1, "", "0 flow entries have been deleted.")
        return Result(0, "", "")

    def named(self, name):
        return [argv for argv, _ in self.commands if argv[0] == name]

    def restores(self):
        return [text for argv, text in self.commands if argv[0] == "iptables-restore"]


def make_proxier(state, runner=None, **kw):
    runner = runner or RecordingRunner()
    proxier = Proxier(Iptables(runner), Conntrack(runner), node_name="node-1",
                      options=RuleOptions(cluster_cidrs=["10.244.0.0/16"]),
                      services=lambda: state["services"], slices=lambda: state["slices"],
                      **kw)
    return proxier, runner


async def test_writes_only_when_rules_change():
    state = {"services": [service()],
             "slices": [slice_("web", "default", endpoint("10.244.1.5"))]}
    proxier, runner = make_proxier(state)
    assert await proxier.sync()
    assert len(runner.restores()) == 1
    jumps = len(runner.named("iptables"))
    assert jumps >= 12                  # -C then -I for every jump rule
    assert not await proxier.sync()     # nothing changed: nothing written, nothing run
    assert len(runner.commands) == jumps + 2      # + the one iptables-save and restore
    state["slices"] = [slice_("web", "default", endpoint("10.244.1.6"))]
    assert await proxier.sync()
    assert "10.244.1.6:8080" in runner.restores()[-1]
    assert proxier.writes == 2
    # A full sync rewrites and re-checks the jumps even without changes.
    assert await proxier.sync(full=True)
    assert proxier.writes == 3
    assert not any("-I" in argv for argv in runner.named("iptables")[jumps:])


async def test_stale_service_chains_are_deleted():
    runner = RecordingRunner(nat_chains=["KUBE-SERVICES", "KUBE-SEP-OLDOLDOLDOLDOLD1",
                                         "KUBE-SVC-OLDOLDOLDOLDOLD1", "DOCKER", "KUBE-SEP-X"])
    state = {"services": [service()], "slices": []}
    proxier, _ = make_proxier(state, runner)
    await proxier.sync()
    text = runner.restores()[-1]
    assert "-X KUBE-SEP-OLDOLDOLDOLDOLD1" in text and "-X KUBE-SVC-OLDOLDOLDOLDOLD1" in text
    assert "DOCKER" not in text and "-X KUBE-SERVICES" not in text


async def test_failed_restore_is_counted_and_retried():
    class Failing(RecordingRunner):
        fail = True

        async def run(self, argv, *, input=None, check=True):
            if argv[0] == "iptables-restore" and self.fail:
                from kubesmith.proxy.iptables import CommandError
                raise CommandError(argv, 2, "iptables-restore: line 3 failed")
            return await super().run(argv, input=input, check=check)

    runner = Failing()
    metrics = ProxyMetrics()
    proxier, _ = make_proxier({"services": [service()], "slices": []}, runner,
                              metrics=metrics)
    with pytest.raises(Exception):
        await proxier.sync()
    assert b"kubeproxy_sync_proxy_rules_iptables_restore_failures_total 1.0" in metrics.render()
    runner.fail = False
    assert await proxier.sync()       # the same text is written again


async def test_udp_conntrack_cleanup():
    dns = service("kube-dns", "kube-system", cluster_ip="10.96.0.10", type_="NodePort",
                  ports=[{"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}])
    udp = [{"name": "dns", "port": 53, "protocol": "UDP"}]
    state = {"services": [dns], "slices": []}
    proxier, runner = make_proxier(state)
    await proxier.sync()
    assert runner.named("conntrack") == []
    # First endpoint: flows rejected so far start over.
    state["slices"] = [slice_("kube-dns", "kube-system", endpoint("10.244.1.53"),
                              endpoint("10.244.2.53"), ports=udp)]
    await proxier.sync()
    assert runner.named("conntrack") == [
        ["conntrack", "-D", "--orig-dst", "10.96.0.10", "-p", "udp"],
        ["conntrack", "-D", "-p", "udp", "--dport", "30053"]]
    # An endpoint gone: flows DNATed to it are deleted.
    state["slices"] = [slice_("kube-dns", "kube-system", endpoint("10.244.2.53"), ports=udp)]
    await proxier.sync()
    assert runner.named("conntrack")[2:] == [
        ["conntrack", "-D", "--orig-dst", "10.96.0.10", "--dst-nat", "10.244.1.53", "-p", "udp"],
        ["conntrack", "-D", "-p", "udp", "--dport", "30053", "--dst-nat", "10.244.1.53"]]
    # The service gone.
    state["services"], state["slices"] = [], []
    await proxier.sync()
    assert runner.named("conntrack")[-1] == ["conntrack", "-D", "--orig-dst", "10.96.0.10",
                                             "-p", "udp"]


async def test_run_syncs_at_once_then_paced_by_min_sync_period():
    state = {"services": [service()], "slices": []}
    health = ProxyHealth(timeout=60)
    proxier, runner = make_proxier(state, sync_period=30.0, min_sync_period=0.5,
                                   health=health)

    async def until(check, timeout=5.0):
        deadline = asyncio.get_running_loop().time() + timeout
        while not check():
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await asyncio.sleep(0.01)

    task = asyncio.create_task(proxier.run())
    try:
        await until(lambda: proxier.writes == 1)
        first = proxier._last_sync
        assert health.is_healthy() and health.oldest_pending is None
        state["slices"] = [slice_("web", "default", endpoint("10.244.1.5"))]
        for _ in range(5):                # a burst of events: one sync
            proxier.endpoints_changed()
        assert health.oldest_pending is not None
        await until(lambda: proxier.writes == 2)
        # Not before min_sync_period after the previous one, and the burst made one.
        assert proxier._last_sync - first >= 0.5
        assert proxier.syncs == 2 and health.oldest_pending is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_health_and_metrics_endpoints():
    now = [1000.0]
    health = ProxyHealth(timeout=60, clock=lambda: now[0])
    metrics = ProxyMetrics()
    proxier, _ = make_proxier({"services": [service()], "slices": []}, metrics=metrics,
                              health=health)
    await proxier.sync()
    async with TestClient(TestServer(health_app(health))) as client:
        response = await client.get("/healthz")
        body = await response.json()
        assert response.status == 200 and body["nodeEligible"] is True
        assert set(body) == {"lastUpdated", "currentTime", "nodeEligible"}
        health.queued()
        now[0] += 61                 # a queued update not done within the timeout
        assert (await client.get("/healthz")).status == 503
        assert (await client.get("/livez")).status == 503
        health.updated()
        health.node_eligible = False
        assert (await client.get("/healthz")).status == 503
        assert (await client.get("/livez")).status == 200
    async with TestClient(TestServer(metrics_app(metrics))) as client:
        text = await (await client.get("/metrics")).text()
        assert "kubeproxy_sync_proxy_rules_duration_seconds_bucket" in text
        assert 'kubeproxy_sync_proxy_rules_iptables_total{table="nat"}' in text
        assert await (await client.get("/proxyMode")).text() == "iptables"


def test_node_port_addresses():
    local = ["127.0.0.1", "192.168.50.2", "10.244.1.1"]
    assert node_port_ips([], local, []) is None
    assert node_port_ips(["all"], local, []) is None
    assert node_port_ips(["192.168.0.0/16"], local, []) == ["192.168.50.2"]
    assert node_port_ips(["localhost", "primary"], local, ["192.168.50.2"]) == \
        ["127.0.0.1", "192.168.50.2"]


def test_config_file_defaults_and_flag_overrides(tmp_path):
    path = tmp_path / "config.conf"
    path.write_text(textwrap.dedent("""\
        apiVersion: kubeproxy.config.k8s.io/v1alpha1
        kind: KubeProxyConfiguration
        clientConnection:
          kubeconfig: /etc/kubernetes/kube-proxy.conf
        hostnameOverride: from-file
        clusterCIDR: 10.244.0.0/16
        mode: iptables
        iptables:
          masqueradeBit: 15
          syncPeriod: 1m
          minSyncPeriod: 0s
          localhostNodePorts: false
        nodePortAddresses: [primary]
        conntrack:
          maxPerCore: 0
        """))
    config = proxy_config.parse([f"--config={path}", "--hostname-override=node-7"])
    assert config.kubeconfig == "/etc/kubernetes/kube-proxy.conf"
    assert config.hostname_override == "node-7"
    assert [str(c) for c in config.cluster_cidr] == ["10.244.0.0/16"]
    assert (config.masquerade_bit, config.sync_period, config.min_sync_period) == (15, 60.0, 0.0)
    assert config.localhost_node_ports is False and config.node_port_addresses == ["primary"]
    assert config.healthz_bind_address == "0.0.0.0:10256"
    assert config.metrics_bind_address == "127.0.0.1:10249"
    defaults = proxy_config.parse(["--kubeconfig=/k", "--cluster-cidr=10.244.0.0/16"])
    assert (defaults.masquerade_bit, defaults.sync_period, defaults.min_sync_period,
            defaults.localhost_node_ports) == (14, 30.0, 1.0, True)


@pytest.mark.parametrize("argv, message", [
    (["--kubeconfig=/k", "--proxy-mode=ipvs"], "only"),
    (["--kubeconfig=/k", "--iptables-masquerade-bit=40"], "masqueradeBit"),
    (["--kubeconfig=/k", "--nodeport-addresses=eth0"], "nodePortAddresses"),
    (["--cluster-cidr=10.244.0.0/16"], "kubeconfig"),
    (["--kubeconfig=/k", "--no-such-flag"], "unknown flag"),
])
def test_config_errors(argv, message, capsys):
    with pytest.raises(proxy_config.ConfigError, match=message):
        proxy_config.parse(argv)
    assert proxy_main(argv) == 2
    assert "Error:" in capsys.readouterr().err


async def test_network_programming_latency():
    metrics = ProxyMetrics()
    state = {"services": [service()], "slices": []}
    proxier, _ = make_proxier(state, metrics=metrics)
    old = slice_("web", "default", endpoint("10.244.1.5"))
    old["metadata"].update(resourceVersion="1", annotations={
        "endpoints.kubernetes.io/last-change-trigger-time": "2020-01-01T00:00:00Z"})
    state["slices"] = [old]
    proxier._started_at -= 5      # as if started a few seconds ago
    await proxier.sync()          # a change from before the start: not counted
    assert b"kubeproxy_network_programming_duration_seconds_count 0.0" in metrics.render()
    new = slice_("web", "default", endpoint("10.244.1.6"))
    trigger = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    new["metadata"].update(resourceVersion="2", annotations={
        "endpoints.kubernetes.io/last-change-trigger-time":
            trigger.strftime("%Y-%m-%dT%H:%M:%SZ")})
    state["slices"] = [new]
    await proxier.sync()
    await proxier.sync(full=True)     # the same slice version is counted once
    rendered = metrics.render().decode()
    assert "kubeproxy_network_programming_duration_seconds_count 1.0" in rendered
    assert 'kubeproxy_network_programming_duration_seconds_bucket{le="0.25"} 0.0' in rendered
