"""kube-controller-manager the process: flags, --controllers, /healthz, leader election
between two processes, exit codes."""
from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kubesmith.controllers import CONTROLLERS, main as kcm_main, options as flags
from kubesmith.controllers.manager import enabled_controllers, load_controllers, workers_for
from kubesmith.store.testing import free_port
from tests.controllers.conftest import manager_flags, wait_for

REPO = Path(__file__).resolve().parents[2]


# --- flags -----------------------------------------------------------------------------

def test_kubeadm_flags_parse_with_upstream_defaults():
    options = flags.parse([
        "--kubeconfig=/etc/kubernetes/controller-manager.conf",
        "--authentication-kubeconfig=/etc/kubernetes/controller-manager.conf",
        "--authorization-kubeconfig=/etc/kubernetes/controller-manager.conf",
        "--bind-address=127.0.0.1", "--leader-elect=true", "--cluster-name=kubesmith",
        "--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16",
        "--node-cidr-mask-size=24", "--service-cluster-ip-range=10.96.0.0/12",
        "--client-ca-file=/p/ca.crt", "--requestheader-client-ca-file=/p/front-proxy-ca.crt",
        "--root-ca-file=/p/ca.crt", "--cluster-signing-cert-file=/p/ca.crt",
        "--cluster-signing-key-file=/p/ca.key", "--service-account-private-key-file=/p/sa.key",
        "--use-service-account-credentials=true", "--controllers=*,bootstrapsigner,tokencleaner",
        "--v=2"])
    assert options.secure_port == 10257 and options.bind_address == "127.0.0.1"
    assert options.leader_elect and options.allocate_node_cidrs
    assert options.node_monitor_grace_period == 40.0 and options.node_monitor_period == 5.0
    assert options.terminated_pod_gc_threshold == 12500
    assert options.concurrent_deployment_syncs == 5 and options.concurrent_gc_syncs == 20
    assert [str(n) for n in options.cluster_cidr] == ["10.244.0.0/16"]
    assert options.mask_size(options.cluster_cidr[0]) == 24
    assert options.controllers == ["*", "bootstrapsigner", "tokencleaner"]


def test_go_durations_booleans_and_worker_counts():
    options = flags.parse(["--kubeconfig=k", "--node-monitor-grace-period=1m30s",
                           "--pod-eviction-timeout=5m0s", "--node-monitor-period", "500ms",
                           "--leader-elect", "--concurrent-replicaset-syncs=7",
                           "--concurrent-namespace-syncs", "3"])
    assert options.node_monitor_grace_period == 90.0
    assert options.pod_eviction_timeout == 300.0
    assert options.node_monitor_period == 0.5
    assert options.leader_elect is True
    assert workers_for("replicaset", options) == 7
    assert workers_for("namespace", options) == 3
    assert workers_for("serviceaccount", options) == 1


@pytest.mark.parametrize("argv, message", [
    (["--no-such-flag=1"], "unrecognized arguments"),
    (["--node-monitor-grace-period=40"], "invalid"),
    (["--leader-elect=maybe"], "invalid"),
    (["--controllers=*,nosuchcontroller"], "'nosuchcontroller' is not in the list"),
    (["--allocate-node-cidrs=true"], "--cluster-cidr is required"),
    (["--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=8"], "does not fit"),
])
def test_bad_command_lines_exit_2(argv, message, capsys):
    assert kcm_main.main(["--kubeconfig=k", *argv]) == 2
    assert message in capsys.readouterr().err


def test_unknown_flag_of_the_console_script_exits_2():
    result = subprocess.run([sys.executable, "-m", "kubesmith.controllers.main",
                             "--kubeconfig=k", "--bogus"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert "--bogus" in result.stderr


# --- --controllers ---------------------------------------------------------------------

def test_controllers_star_enables_defaults_only():
    assert flags.is_enabled("namespace", ["*"], [])
    assert not flags.is_enabled("bootstrapsigner", ["*"], ["bootstrap-signer-controller"])
    assert flags.is_enabled("bootstrapsigner", ["*", "bootstrapsigner"],
                            ["bootstrap-signer-controller"])


def test_controllers_names_and_aliases_are_one():
    assert not flags.is_enabled("garbagecollector", ["*", "-garbage-collector-controller"], [])
    assert not flags.is_enabled("garbage-collector-controller", ["*", "-garbagecollector"], [])
    assert flags.is_enabled("podgc", ["pod-garbage-collector-controller"], [])
    # Without "*", only what is named runs.
    assert not flags.is_enabled("namespace", ["podgc"], [])
    # The first mention wins, as upstream's loop returns on it.
    assert flags.is_enabled("podgc", ["podgc", "-podgc"], [])


def test_controller_names_checked_against_upstream_and_registry():
    assert flags.check_controller_names(["*", "-nodeipam", "tokencleaner", "ttl"], []) == []
    assert flags.check_controller_names(["kubesmith-extra"], ["kubesmith-extra"]) == []
    problems = flags.check_controller_names(["*", "-typo"], [])
    assert problems == ["--controllers: 'typo' is not in the list of known controllers"]


def test_enabled_controllers_from_the_registry():
    load_controllers()
    every = enabled_controllers(flags.parse(["--kubeconfig=k"]))
    for name in ("serviceaccount", "root-ca-cert-publisher", "namespace", "garbagecollector",
                 "podgc", "nodeipam", "nodelifecycle", "taint-eviction-controller"):
        assert name in every and name in CONTROLLERS
    fewer = enabled_controllers(flags.parse(["--kubeconfig=k",
                                             "--controllers=*,-garbagecollector,-podgc"]))
    assert set(every) - set(fewer) == {"garbagecollector", "podgc"}
    only = enabled_controllers(flags.parse(["--kubeconfig=k",
                                            "--controllers=serviceaccount,node-ipam-controller"]))
    assert only == ["nodeipam", "serviceaccount"]


def test_a_crashing_controller_is_rebuilt_and_run_again_after_a_backoff():
    from kubesmith.controllers.manager import ControllerManager

    instances: list = []

    class Flaky:
        def __init__(self, ctx):
            self.runs: list[int] = []
            self.handler = ctx.informers.informer("v1 configmaps").add_event_handler(
                on_add=lambda obj: None)
            instances.append(self)

        async def run(self, workers: int) -> None:
            self.runs.append(workers)
            if len(instances) == 1:
                raise RuntimeError("boom")
            await asyncio.Event().wait()

    async def main():
        manager = ControllerManager(None, flags.parse(["--kubeconfig=k",
                                                       "--concurrent-namespace-syncs=4"]),
                                    host="h", restart_backoff=0.01)
        informer = manager.informers.informer("v1 configmaps")
        # No API server here: nothing is started and the cache counts as synced.
        manager.informers.start = lambda: None
        informer._synced.set()
        manager.construct("namespace")
        task = asyncio.create_task(manager._supervise("namespace"))
        deadline = time.monotonic() + 5
        while len(instances) < 2 or not instances[1].runs:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return manager, informer

    load_controllers()
    original = CONTROLLERS["namespace"]
    CONTROLLERS["namespace"] = Flaky
    try:
        manager, informer = asyncio.run(main())
    finally:
        CONTROLLERS["namespace"] = original
    first, second = instances
    assert first.runs == [4] and second.runs == [4]
    assert manager.restarts == {"namespace": 1}
    assert manager.controllers["namespace"] is second
    # The crashed instance's handlers are gone from the shared informer.
    assert informer._handlers == [second.handler]


# --- the process -----------------------------------------------------------------------

class Process:
    """kube-controller-manager as a subprocess, its stderr in a file."""

    def __init__(self, base: Path, name: str, argv: list[str]):
        self.log = base / f"{name}.log"
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "kubesmith.controllers.main", *argv], cwd=REPO,
                stdout=subprocess.DEVNULL, stderr=out, stdin=subprocess.DEVNULL)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def leading(self) -> bool:
        return "acquired lease" in self.text()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


def _lease(cluster, namespace: str) -> dict:
    answer = cluster.request(
        "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/"
        "kube-controller-manager")
    return answer.json() if answer.status == 200 else {}


def _elect_flags(cluster, namespace: str, *extra: str) -> list[str]:
    argv = [f for f in manager_flags(cluster) if not f.startswith("--leader-elect")]
    return argv + ["--leader-elect=true", "--leader-elect-lease-duration=3s",
                   "--leader-elect-renew-deadline=2s", "--leader-elect-retry-period=500ms",
                   f"--leader-elect-resource-namespace={namespace}",
                   "--controllers=serviceaccount", *extra]


def test_two_managers_one_leads_and_the_other_takes_over(cluster, tmp_path):
    namespace = cluster.new_namespace("kcm-lease-")
    port = free_port()
    one = Process(tmp_path, "one", [f for f in _elect_flags(cluster, namespace)
                                    if f != "--secure-port=0"]
                  + [f"--secure-port={port}", "--bind-address=127.0.0.1"])
    two = None
    try:
        wait_for(one.leading, timeout=30, what="first manager leads")
        two = Process(tmp_path, "two", _elect_flags(cluster, namespace))
        holder = _lease(cluster, namespace)["spec"]["holderIdentity"]
        # /healthz over HTTPS with the self-signed certificate.
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context,
                                    timeout=10) as answer:
            assert answer.read() == b"ok"
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context,
                                    timeout=10) as answer:
            metrics = answer.read().decode()
        assert 'leader_election_master_status{name="kube-controller-manager"} 1' in metrics
        assert 'workqueue_depth{name="serviceaccount"}' in metrics
        # The second one keeps trying while the lease is renewed.
        wait_for(lambda: "trying to acquire lease" in two.text(), timeout=30)
        time.sleep(2)
        assert not two.leading()
        assert _lease(cluster, namespace)["spec"]["holderIdentity"] == holder
        one.popen.kill()            # a crash: the lease expires after its 3 s
        one.popen.wait(10)
        wait_for(two.leading, timeout=20, what="second manager takes over")
        lease = _lease(cluster, namespace)["spec"]
        assert lease["holderIdentity"] != holder and lease["leaseTransitions"] >= 1
        # SIGTERM: the lease is released and the process ends with 0.
        two.popen.send_signal(signal.SIGTERM)
        assert two.popen.wait(20) == 0
        assert _lease(cluster, namespace)["spec"].get("holderIdentity", "") == ""
    finally:
        one.stop()
        if two is not None:
            two.stop()


def test_losing_the_lease_ends_the_process_non_zero(cluster, tmp_path):
    namespace = cluster.new_namespace("kcm-lost-")
    one = Process(tmp_path, "one", _elect_flags(cluster, namespace))
    try:
        wait_for(one.leading, timeout=30, what="manager leads")
        path = (f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/"
                "kube-controller-manager")
        # Another holder takes the lease over (as after a partition).
        for _ in range(10):
            lease = cluster.request("GET", path).json()
            lease["spec"]["holderIdentity"] = "someone-else"
            lease["spec"]["leaseDurationSeconds"] = 60
            if cluster.request("PUT", path, lease).status == 200:
                break
        assert one.popen.wait(30) == 1
        assert "leaderelection lost" in one.text()
    finally:
        one.stop()
