"""Unit tests of the kubelet's core: configuration, CRI configs from pod specs, pod
status computation, back-off, node conditions and static pods (no runtime, no API
server)."""
from __future__ import annotations

import copy
import os

import pytest

from kubesmith.cri import api
from kubesmith.kubelet import cgroups
from kubesmith.kubelet import runtime as cri
from kubesmith.kubelet.config import ConfigError, parse_args, parse_config
from kubesmith.kubelet.node import node_conditions, runtime_problems
from kubesmith.kubelet.pods import Backoff, image_registry, should_restart
from kubesmith.kubelet.static import mirror_manifest, read_static_pods
from kubesmith.kubelet.status import ContainerRecord, PodRuntime, pod_status, same_status

from tests.kubelet.conftest import make_pod


# --- configuration --------------------------------------------------------------------

def test_config_defaults_are_upstreams():
    config = parse_config({"apiVersion": "kubelet.config.k8s.io/v1beta1",
                           "kind": "KubeletConfiguration"})
    assert config.port == 10250 and config.address == "0.0.0.0"
    assert config.node_status_update_frequency == 10.0
    assert config.node_status_report_frequency == 300.0
    assert config.node_lease_duration_seconds == 40
    assert config.max_pods == 110
    assert config.container_log_max_size == 10 * 1024 * 1024
    assert config.container_log_max_files == 5
    assert config.cgroup_root == "/" and config.cgroup_driver == "cgroupfs"
    assert config.healthz_port == 10248 and config.healthz_bind_address == "127.0.0.1"


def test_config_fields_parsed_and_unknown_ones_tolerated():
    config = parse_config({
        "kind": "KubeletConfiguration", "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "address": "127.0.0.1", "port": 10251, "staticPodPath": "/etc/kubernetes/manifests",
        "clusterDNS": ["10.96.0.10"], "clusterDomain": "cluster.local",
        "cgroupRoot": "/kubesmith", "cgroupDriver": "cgroupfs",
        "tlsCertFile": "/pki/kubelet.crt", "tlsPrivateKeyFile": "/pki/kubelet.key",
        "authentication": {"x509": {"clientCAFile": "/pki/ca.crt"},
                           "webhook": {"enabled": True}},
        "authorization": {"mode": "Webhook"},
        "containerLogMaxSize": "5Mi", "containerLogMaxFiles": 3,
        "nodeStatusUpdateFrequency": "5s", "nodeStatusReportFrequency": "1m",
        "nodeLeaseDurationSeconds": 20, "maxPods": 50, "podPidsLimit": 1024,
        "registerWithTaints": [{"key": "node-role.kubernetes.io/control-plane",
                                "effect": "NoSchedule"}],
        "resolvConf": "/run/resolv.conf", "runtimeRequestTimeout": "2m",
        "syncFrequency": "30s", "evictionHard": {"memory.available": "100Mi"},
        "failSwapOn": False, "imageMinimumGCAge": "2m", "someFutureField": {"x": 1}})
    assert config.static_pod_path == "/etc/kubernetes/manifests"
    assert config.cluster_dns == ["10.96.0.10"] and config.cluster_domain == "cluster.local"
    assert config.client_ca_file == "/pki/ca.crt"
    assert config.container_log_max_size == 5 * 1024 * 1024
    assert config.node_status_update_frequency == 5.0
    assert config.node_status_report_frequency == 60.0
    assert config.runtime_request_timeout == 120.0 and config.sync_frequency == 30.0
    assert config.register_with_taints == [{"key": "node-role.kubernetes.io/control-plane",
                                            "effect": "NoSchedule"}]
    assert config.pod_pids_limit == 1024 and config.max_pods == 50


@pytest.mark.parametrize("doc, field", [
    ({"port": "ten"}, "port"),
    ({"port": 70000}, "port"),
    ({"nodeStatusUpdateFrequency": "often"}, "nodeStatusUpdateFrequency"),
    ({"clusterDNS": ["not-an-ip"]}, "clusterDNS"),
    ({"cgroupDriver": "systemd"}, "cgroupDriver"),
    ({"containerLogMaxSize": "lots"}, "containerLogMaxSize"),
    ({"maxPods": 0}, "maxPods"),
    ({"kind": "KubeProxyConfiguration"}, "kind"),
    ({"registerWithTaints": [{"key": "a", "effect": "Sometimes"}]}, "registerWithTaints"),
    ({"authorization": {"mode": "RBAC"}}, "authorization.mode"),
])
def test_config_bad_values_name_the_field(doc, field):
    with pytest.raises(ConfigError) as caught:
        parse_config(doc)
    assert field in str(caught.value)


def test_flags_win_over_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n"
                    "containerRuntimeEndpoint: unix:///a.sock\nmaxPods: 20\n")
    options = parse_args(["--config", str(path), "--kubeconfig", "/k.conf",
                          "--hostname-override", "Node-1", "--node-ip", "10.0.0.5",
                          "--container-runtime-endpoint", "unix:///b.sock",
                          "--root-dir", str(tmp_path / "root"),
                          "--register-with-taints", "a=b:NoSchedule,c:NoExecute",
                          "--node-labels", "zone=x,node.kubernetes.io/pool=p", "--v", "4"])
    assert options.node_name == "node-1" and options.node_ip == "10.0.0.5"
    assert options.config.container_runtime_endpoint == "unix:///b.sock"
    assert options.config.max_pods == 20
    assert options.config.register_with_taints == [
        {"key": "a", "value": "b", "effect": "NoSchedule"}, {"key": "c", "effect": "NoExecute"}]
    assert options.config.node_labels == {"zone": "x", "node.kubernetes.io/pool": "p"}
    assert options.root_dir == str(tmp_path / "root") and options.verbosity == 4


@pytest.mark.parametrize("argv", [
    ["--kubeconfig", "k", "--node-labels", "node-role.kubernetes.io/worker="],
    ["--kubeconfig", "k", "--node-labels", "kubernetes.io/made-up=x"],
    ["--kubeconfig", "k", "--node-ip", "nope"],
    ["--kubeconfig", "k", "--no-such-flag"],
    ["--node-ip", "10.0.0.1"],
])
def test_bad_command_lines(argv):
    with pytest.raises(ConfigError):
        parse_args(argv)


def test_main_exits_1_on_a_bad_config(tmp_path, capsys):
    from kubesmith.kubelet.main import main
    path = tmp_path / "config.yaml"
    path.write_text("kind: KubeletConfiguration\nport: [1]\n")
    assert main(["--config", str(path), "--kubeconfig", "k"]) == 1
    assert "port" in capsys.readouterr().err


# --- CRI configs ----------------------------------------------------------------------

def settings(tmp_path, **kw):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\nsearch example.org\noptions edns0\n")
    defaults = dict(root_dir=str(tmp_path / "root"), cgroup_root="/kubesmith-unit",
                    cluster_dns=["10.96.0.10"], cluster_domain="cluster.local",
                    resolv_conf=str(resolv), memory_capacity=8 * 2 ** 30)
    defaults.update(kw)
    return cri.RuntimeSettings(**defaults)


def test_qos_classes_and_cgroup_parents(tmp_path):
    s = settings(tmp_path)
    besteffort = make_pod()
    burstable = make_pod(containers=[{"name": "a", "image": "x",
                                      "resources": {"requests": {"cpu": "100m"}}}])
    guaranteed = make_pod(containers=[{"name": "a", "image": "x", "resources": {
        "limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}}])
    limits_only = make_pod(containers=[{"name": "a", "image": "x", "resources": {
        "limits": {"cpu": "500m", "memory": "128Mi"}}}])
    assert cri.qos_class(besteffort) == "BestEffort"
    assert cri.qos_class(burstable) == "Burstable"
    assert cri.qos_class(guaranteed) == "Guaranteed"
    assert cri.qos_class(limits_only) == "Guaranteed"
    assert cri.pod_cgroup_parent(besteffort, s) == "/kubesmith-unit/kubepods/besteffort/poduid-1"
    assert cri.pod_cgroup_parent(burstable, s) == "/kubesmith-unit/kubepods/burstable/poduid-1"
    assert cri.pod_cgroup_parent(guaranteed, s) == "/kubesmith-unit/kubepods/poduid-1"
    assert cri.pod_cgroup_parent(guaranteed, settings(tmp_path, cgroup_root="/")) \
        == "/kubepods/poduid-1"


def test_cluster_first_dns(tmp_path):
    pod = make_pod(namespace="shop")
    dns = cri.dns_config(pod, settings(tmp_path))
    assert list(dns.servers) == ["10.96.0.10"]
    assert list(dns.searches) == ["shop.svc.cluster.local", "svc.cluster.local",
                                  "cluster.local", "example.org"]
    assert list(dns.options) == ["ndots:5"]


def test_dns_policies(tmp_path):
    s = settings(tmp_path)
    default = cri.dns_config(make_pod(dnsPolicy="Default"), s)
    assert list(default.servers) == ["192.0.2.53"] and list(default.searches) == ["example.org"]
    assert list(default.options) == ["edns0"]
    # ClusterFirst on the host network falls back to the host's resolv.conf...
    host = cri.dns_config(make_pod(hostNetwork=True), s)
    assert list(host.servers) == ["192.0.2.53"]
    # ... unless ClusterFirstWithHostNet.
    with_host = cri.dns_config(make_pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"), s)
    assert list(with_host.servers) == ["10.96.0.10"]
    none = cri.dns_config(make_pod(dnsPolicy="None", dnsConfig={
        "nameservers": ["1.2.3.4"], "searches": ["a.b"],
        "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}), s)
    assert list(none.servers) == ["1.2.3.4"] and list(none.searches) == ["a.b"]
    assert list(none.options) == ["ndots:2", "rotate"]
    merged = cri.dns_config(make_pod(dnsConfig={"options": [{"name": "ndots", "value": "1"}]}), s)
    assert list(merged.options) == ["ndots:1"]


def test_sandbox_config(tmp_path):
    pod = make_pod(hostname="h1", containers=[{
        "name": "web", "image": "x",
        "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "TCP"},
                  {"containerPort": 53, "protocol": "UDP"}]}],
        securityContext={"runAsUser": 1000, "sysctls": [{"name": "net.core.somaxconn",
                                                         "value": "1024"}]})
    pod["metadata"]["labels"] = {"app": "web"}
    pod["metadata"]["annotations"] = {"note": "x"}
    config = cri.sandbox_config(pod, settings(tmp_path), attempt=2)
    assert config.metadata.name == "web" and config.metadata.uid == "uid-1"
    assert config.metadata.attempt == 2 and config.hostname == "h1"
    assert config.log_directory == "/var/log/pods/default_web_uid-1"
    assert dict(config.labels) == {"app": "web", "io.kubernetes.pod.name": "web",
                                   "io.kubernetes.pod.namespace": "default",
                                   "io.kubernetes.pod.uid": "uid-1"}
    assert dict(config.annotations) == {"note": "x"}
    assert [(p.container_port, p.host_port, p.protocol) for p in config.port_mappings] == \
        [(80, 8080, api.TCP), (53, 0, api.UDP)]
    assert config.linux.cgroup_parent == "/kubesmith-unit/kubepods/besteffort/poduid-1"
    assert config.linux.security_context.namespace_options.network == api.POD
    assert config.linux.security_context.run_as_user.value == 1000
    assert dict(config.linux.sysctls) == {"net.core.somaxconn": "1024"}
    host = cri.sandbox_config(make_pod(hostNetwork=True), settings(tmp_path))
    assert host.linux.security_context.namespace_options.network == api.NODE
    assert host.hostname == ""


def test_container_config_resources_and_command(tmp_path):
    pod = make_pod(containers=[{
        "name": "app", "image": "busybox:1.36", "command": ["sh", "-c"],
        "args": ["echo $(GREETING) $(MISSING) $$(GREETING)"], "workingDir": "/w",
        "tty": True, "stdin": True,
        "resources": {"requests": {"cpu": "250m", "memory": "64Mi"},
                      "limits": {"cpu": "500m", "memory": "128Mi"}},
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "1"]}}}}])
    container = pod["spec"]["containers"][0]
    envs = [api.KeyValue(key="GREETING", value="hello")]
    config = cri.container_config(pod, container, settings(tmp_path), attempt=3,
                                  image_ref="sha256:abc", envs=envs, mounts=[])
    assert config.metadata.name == "app" and config.metadata.attempt == 3
    assert config.image.image == "sha256:abc"
    assert config.image.user_specified_image == "busybox:1.36"
    assert list(config.command) == ["sh", "-c"]
    assert list(config.args) == ["echo hello $(MISSING) $(GREETING)"]
    assert config.working_dir == "/w" and config.tty and config.stdin
    assert config.log_path == "app/3.log"
    resources = config.linux.resources
    assert resources.cpu_shares == 256
    assert resources.cpu_period == 100000 and resources.cpu_quota == 50000
    assert resources.memory_limit_in_bytes == 128 * 2 ** 20
    expected_oom = 1000 - (1000 * 64 * 2 ** 20) // (8 * 2 ** 30)
    assert resources.oom_score_adj == expected_oom
    annotations = dict(config.annotations)
    assert annotations["io.kubernetes.container.restartCount"] == "3"
    assert annotations["io.kubernetes.container.terminationMessagePath"] == \
        "/dev/termination-log"
    assert annotations["io.kubernetes.pod.terminationGracePeriod"] == "30"
    assert '"sleep"' in annotations["io.kubernetes.container.preStopHandler"]
    assert dict(config.labels)["io.kubernetes.container.name"] == "app"


def test_resource_conversion_edges():
    assert cri.milli_cpu_to_shares(0) == 2
    assert cri.milli_cpu_to_shares(1) == 2
    assert cri.milli_cpu_to_shares(1000) == 1024
    assert cri.milli_cpu_to_quota(1) == 1000
    assert cri.milli_cpu_to_quota(2000) == 200000
    guaranteed = make_pod(containers=[{"name": "a", "image": "x", "resources": {
        "limits": {"cpu": "1", "memory": "1Gi"}}}])
    assert cri.oom_score_adjust(guaranteed, guaranteed["spec"]["containers"][0], 0) == -997
    besteffort = make_pod()
    assert cri.oom_score_adjust(besteffort, besteffort["spec"]["containers"][0], 0) == 1000


def test_container_security_context(tmp_path):
    pod = make_pod(securityContext={"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000,
                                    "supplementalGroups": [4000]},
                   containers=[{"name": "app", "image": "x", "securityContext": {
                       "runAsUser": 2000, "readOnlyRootFilesystem": True,
                       "allowPrivilegeEscalation": False,
                       "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}}}])
    config = cri.container_config(pod, pod["spec"]["containers"][0], settings(tmp_path),
                                  attempt=0, image_ref="i", envs=[], mounts=[])
    security = config.linux.security_context
    assert security.run_as_user.value == 2000 and security.run_as_group.value == 3000
    assert list(security.supplemental_groups) == [4000, 2000]
    assert security.readonly_rootfs and security.no_new_privs and not security.privileged
    assert list(security.capabilities.add_capabilities) == ["NET_ADMIN"]
    assert list(security.capabilities.drop_capabilities) == ["ALL"]
    assert "/proc/kcore" in security.masked_paths and "/proc/sys" in security.readonly_paths
    privileged = make_pod(containers=[{"name": "app", "image": "x",
                                       "securityContext": {"privileged": True}}])
    config = cri.container_config(privileged, privileged["spec"]["containers"][0],
                                  settings(tmp_path), attempt=0, image_ref="i", envs=[],
                                  mounts=[])
    assert config.linux.security_context.privileged
    assert not config.linux.security_context.masked_paths
    assert cri.sandbox_config(privileged, settings(tmp_path)).linux.security_context.privileged


def test_run_as_non_root_checks(tmp_path):
    s = settings(tmp_path)

    def build(security, image):
        pod = make_pod(containers=[{"name": "app", "image": "x", "securityContext": security}])
        return cri.container_config(pod, pod["spec"]["containers"][0], s, attempt=0,
                                    image_ref="i", envs=[], mounts=[], image=image)
    root_image = api.Image(id="i")
    root_image.uid.value = 0
    user_image = api.Image(id="i")
    user_image.uid.value = 65534
    named_image = api.Image(id="i", username="nobody")
    with pytest.raises(cri.ContainerConfigError, match="will run as root"):
        build({"runAsNonRoot": True}, root_image)
    with pytest.raises(cri.ContainerConfigError, match="non-numeric user"):
        build({"runAsNonRoot": True}, named_image)
    with pytest.raises(cri.ContainerConfigError, match="runAsUser breaks non-root"):
        build({"runAsNonRoot": True, "runAsUser": 0}, user_image)
    build({"runAsNonRoot": True}, user_image)
    build({"runAsNonRoot": True, "runAsUser": 1000}, root_image)


def test_hosts_file_and_managed_mounts(tmp_path):
    pod = make_pod(hostname="h", subdomain="sub", hostAliases=[
        {"ip": "10.1.1.1", "hostnames": ["foo", "bar"]}])
    text = cri.hosts_file_content(pod, ["10.244.0.5"], "cluster.local")
    assert text.startswith("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n")
    assert "10.244.0.5\th.sub.default.svc.cluster.local\th\n" in text
    assert text.endswith("# Entries added by HostAliases.\n10.1.1.1\tfoo\tbar\n")
    s = settings(tmp_path)
    container = pod["spec"]["containers"][0]
    mounts = cri.managed_mounts(pod, container, s, ["10.244.0.5"], restart_count=2)
    assert [m.container_path for m in mounts] == ["/etc/hosts", "/dev/termination-log"]
    assert open(mounts[0].host_path).read() == text
    assert mounts[1].host_path == cri.termination_message_file(s.root_dir, "uid-1", "app", 2)
    assert os.stat(mounts[1].host_path).st_mode & 0o777 == 0o666


def test_pod_cgroup_limits():
    pod = make_pod(containers=[
        {"name": "a", "image": "x", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}},
        {"name": "b", "image": "x", "resources": {"requests": {"cpu": "250m"},
                                                  "limits": {"cpu": "1", "memory": "64Mi"}}}])
    limits = cgroups.pod_limits(pod, pids_limit=100)
    assert limits == {"cpu.shares": str(750 * 1024 // 1000), "cpu.cfs_period_us": "100000",
                      "cpu.cfs_quota_us": "150000",
                      "memory.limit_in_bytes": str(128 * 2 ** 20), "pids.max": "100"}
    assert cgroups.pod_limits(make_pod()) == {"cpu.shares": "2"}


# --- status ---------------------------------------------------------------------------

def record(name, state, *, restart=0, exit_code=0, created=1.0, init=False, cid=None):
    return ContainerRecord(id=cid or f"{name}-{restart}", name=name, state=state,
                           restart_count=restart, created_at=created, started_at=created,
                           finished_at=created + 1 if state == "exited" else 0,
                           exit_code=exit_code, image="busybox:1.36", image_id="sha256:x",
                           init=init)


def conditions(status):
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_status_of_a_running_pod():
    pod = make_pod()
    runtime = PodRuntime(sandbox_ready=True, pod_ips=["10.244.0.5"],
                         containers=[record("app", "running")])
    status = pod_status(pod, runtime, host_ip="192.0.2.1", now="2026-01-01T00:00:00Z")
    assert status["phase"] == "Running"
    assert status["podIP"] == "10.244.0.5" and status["podIPs"] == [{"ip": "10.244.0.5"}]
    assert status["hostIP"] == "192.0.2.1" and status["hostIPs"] == [{"ip": "192.0.2.1"}]
    assert conditions(status) == {"PodScheduled": "True", "PodReadyToStartContainers": "True",
                                  "Initialized": "True", "ContainersReady": "True",
                                  "Ready": "True"}
    entry = status["containerStatuses"][0]
    assert entry["state"] == {"running": {"startedAt": "1970-01-01T00:00:01Z"}}
    assert entry["ready"] and entry["started"] and entry["restartCount"] == 0
    assert entry["containerID"] == "containerd://app-0" and entry["imageID"] == "sha256:x"


def test_status_keeps_transition_times_and_others_conditions():
    pod = make_pod()
    pod["status"] = {"phase": "Running", "startTime": "2025-01-01T00:00:00Z", "conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"},
        {"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-02T00:00:00Z"},
        {"type": "example.com/gate", "status": "True"}]}
    pod["spec"]["readinessGates"] = [{"conditionType": "example.com/gate"}]
    runtime = PodRuntime(sandbox_ready=True, pod_ips=["10.0.0.1"],
                         containers=[record("app", "running")])
    status = pod_status(pod, runtime, host_ip="h", now="2026-01-01T00:00:00Z")
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["Ready"]["lastTransitionTime"] == "2025-01-02T00:00:00Z"
    assert by_type["PodScheduled"]["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    assert by_type["ContainersReady"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert by_type["example.com/gate"]["status"] == "True"
    assert status["startTime"] == "2025-01-01T00:00:00Z"
    pod["status"]["conditions"][2]["status"] = "False"
    gated = pod_status(pod, runtime, host_ip="h")
    assert conditions(gated)["Ready"] == "False"
    assert {c["type"]: c for c in gated["conditions"]}["Ready"]["reason"] == \
        "ReadinessGatesNotReady"


def test_status_unready_and_waiting():
    pod = make_pod(containers=[{"name": "a", "image": "x"}, {"name": "b", "image": "x"}])
    runtime = PodRuntime(sandbox_ready=True, containers=[record("a", "running")])
    status = pod_status(pod, runtime, host_ip="h",
                        waiting={"b": ("ErrImagePull", "no registry")},
                        ready=lambda name: False)
    assert status["phase"] == "Pending"
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["ContainersReady"]["message"] == "containers with unready status: [a b]"
    b = status["containerStatuses"][1]
    assert b["state"] == {"waiting": {"reason": "ErrImagePull", "message": "no registry"}}
    fresh = pod_status(pod, PodRuntime(), host_ip="h")
    assert fresh["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}


def test_status_crash_loop_keeps_the_exit_as_last_state():
    pod = make_pod()
    runtime = PodRuntime(sandbox_ready=True, containers=[
        record("app", "exited", restart=0, exit_code=1, created=1.0),
        record("app", "exited", restart=1, exit_code=2, created=5.0)])
    status = pod_status(pod, runtime, host_ip="h",
                        waiting={"app": ("CrashLoopBackOff", "back-off 10s ...")})
    entry = status["containerStatuses"][0]
    assert entry["restartCount"] == 1
    assert entry["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert entry["lastState"]["terminated"]["exitCode"] == 2
    assert entry["lastState"]["terminated"]["reason"] == "Error"
    assert status["phase"] == "Running"     # restartPolicy Always: still running


@pytest.mark.parametrize("policy, codes, phase", [
    ("Never", [0], "Succeeded"), ("Never", [1], "Failed"), ("OnFailure", [0], "Succeeded"),
    ("OnFailure", [1], "Running"), ("Always", [0], "Running"), ("Never", [0, 1], "Failed"),
])
def test_phase_of_exited_containers(policy, codes, phase):
    containers = [{"name": f"c{i}", "image": "x"} for i in range(len(codes))]
    pod = make_pod(containers=containers, restartPolicy=policy)
    runtime = PodRuntime(containers=[record(f"c{i}", "exited", exit_code=code)
                                     for i, code in enumerate(codes)])
    assert pod_status(pod, runtime, host_ip="h")["phase"] == phase


def test_init_containers_status():
    pod = make_pod(initContainers=[{"name": "i1", "image": "x"}, {"name": "i2", "image": "x"}])
    runtime = PodRuntime(sandbox_ready=True, containers=[
        record("i1", "exited", exit_code=0, init=True), record("i2", "running", init=True)])
    status = pod_status(pod, runtime, host_ip="h")
    assert status["phase"] == "Pending"
    assert conditions(status)["Initialized"] == "False"
    assert {c["type"]: c for c in status["conditions"]}["Initialized"]["message"] == \
        "containers with incomplete status: [i2]"
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    assert status["initContainerStatuses"][0]["ready"] is True
    assert status["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    failed = PodRuntime(containers=[record("i1", "exited", exit_code=3, init=True)])
    never = copy.deepcopy(pod)
    never["spec"]["restartPolicy"] = "Never"
    assert pod_status(never, failed, host_ip="h")["phase"] == "Failed"
    assert pod_status(pod, failed, host_ip="h")["phase"] == "Pending"


def test_terminal_phase_sticks_and_same_status_ignores_probe_times():
    pod = make_pod()
    pod["status"]["phase"] = "Succeeded"
    status = pod_status(pod, PodRuntime(containers=[record("app", "running")]), host_ip="h")
    assert status["phase"] == "Succeeded"
    other = copy.deepcopy(status)
    other["conditions"][0]["lastProbeTime"] = "2030-01-01T00:00:00Z"
    assert same_status(status, other)
    other["phase"] = "Failed"
    assert not same_status(status, other)


# --- restarts and images --------------------------------------------------------------

def test_backoff_doubles_caps_and_resets():
    now = [1000.0]
    backoff = Backoff(clock=lambda: now[0])
    key = ("uid", "app")
    assert backoff.remaining(key, since=now[0]) == 0        # first restart at once
    assert backoff.next(key) == 10
    assert backoff.remaining(key, since=now[0]) == 10
    now[0] += 4
    assert backoff.remaining(key, since=now[0] - 4) == 6
    delays = [backoff.next(key) for _ in range(6)]
    assert delays == [20, 40, 80, 160, 300, 300]
    now[0] += 601                                          # 10 min without a restart
    assert backoff.remaining(key, since=now[0]) == 0
    assert backoff.next(key) == 10


def test_restart_policy_and_registry():
    assert should_restart("Always", 0) and should_restart("OnFailure", 1)
    assert not should_restart("OnFailure", 0) and not should_restart("Never", 1)
    assert image_registry("kubesmith.local/busybox:latest") == "kubesmith.local"
    assert image_registry("busybox") == "" and image_registry("library/busybox") == ""
    assert image_registry("localhost:5000/x") == "localhost:5000"


# --- node -----------------------------------------------------------------------------

def test_node_ready_follows_the_runtime_network():
    status = api.StatusResponse(status=api.RuntimeStatus(conditions=[
        api.RuntimeCondition(type="RuntimeReady", status=True),
        api.RuntimeCondition(type="NetworkReady", status=False, reason="NetworkPluginNotReady",
                             message="Network plugin returns error: cni plugin not initialized")]))
    problems = runtime_problems(status)
    assert problems == ["container runtime network not ready: NetworkReady=false "
                        "reason:NetworkPluginNotReady message:Network plugin returns error: "
                        "cni plugin not initialized"]
    conds = node_conditions("2026-01-01T00:00:00Z", [], problems)
    ready = {c["type"]: c for c in conds}["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "KubeletNotReady"
    assert ready["message"] == problems[0]
    later = node_conditions("2026-01-01T00:01:00Z", conds, [])
    ready = {c["type"]: c for c in later}["Ready"]
    assert ready["status"] == "True" and ready["lastTransitionTime"] == "2026-01-01T00:01:00Z"
    pressure = {c["type"]: c for c in later}["MemoryPressure"]
    assert pressure["status"] == "False"
    assert pressure["lastTransitionTime"] == "2026-01-01T00:00:00Z"


# --- static pods ----------------------------------------------------------------------

def test_static_pods_from_a_folder(tmp_path):
    (tmp_path / "web.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n"
        "  - name: app\n    image: busybox:1.36\n")
    (tmp_path / ".hidden.yaml").write_text("not: [a pod")
    (tmp_path / "broken.yaml").write_text("kind: Pod\nmetadata: {}\n")
    pods = read_static_pods(str(tmp_path), "Node-1")
    assert len(pods) == 1
    uid, pod = next(iter(pods.items()))
    assert pod["metadata"]["name"] == "web-node-1" and pod["metadata"]["namespace"] == "default"
    assert pod["spec"]["nodeName"] == "Node-1"
    assert pod["metadata"]["annotations"]["kubernetes.io/config.hash"] == uid
    assert pod["metadata"]["annotations"]["kubernetes.io/config.source"] == "file"
    assert pod["spec"]["restartPolicy"] == "Always"     # the API server's defaults
    assert {"operator": "Exists", "effect": "NoExecute"} in pod["spec"]["tolerations"]
    assert read_static_pods(str(tmp_path), "Node-1").keys() == pods.keys()   # stable uid
    (tmp_path / "web.yaml").write_text((tmp_path / "web.yaml").read_text()
                                       .replace("1.36", "1.37"))
    assert read_static_pods(str(tmp_path), "Node-1").keys() != pods.keys()
    mirror = mirror_manifest(pod, "Node-1", "node-uid")
    assert mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"] == uid
    assert "uid" not in mirror["metadata"]
    assert mirror["metadata"]["ownerReferences"][0] == {
        "apiVersion": "v1", "kind": "Node", "name": "Node-1", "uid": "node-uid",
        "controller": True}


def test_node_events_and_images():
    from kubesmith.kubelet.node import condition_events, node_images
    first = node_conditions("t0", [], ["network down"])
    assert condition_events([], first) == ["NodeHasSufficientMemory", "NodeHasNoDiskPressure",
                                           "NodeHasSufficientPID", "NodeNotReady"]
    later = node_conditions("t1", first, [])
    assert condition_events(first, later) == ["NodeReady"]
    assert condition_events(later, node_conditions("t2", later, [])) == []
    images = [api.Image(id="a", repo_tags=["small:1"], size=10),
              api.Image(id="b", repo_tags=["big:1"], repo_digests=["big@sha256:x"], size=99),
              api.Image(id="c", size=5)]
    assert node_images(images) == [{"names": ["big@sha256:x", "big:1"], "sizeBytes": 99},
                                   {"names": ["small:1"], "sizeBytes": 10}]


def test_pull_credentials_from_image_pull_secrets():
    import base64
    import json
    from kubesmith.kubelet.pullsecrets import credentials_for, split_image

    def secret(kind, payload):
        key = ".dockerconfigjson" if kind.endswith("json") else ".dockercfg"
        return {"type": f"kubernetes.io/{kind}",
                "data": {key: base64.b64encode(json.dumps(payload).encode()).decode()}}
    assert split_image("busybox") == ("docker.io", "library/busybox")
    assert split_image("busybox:1.36") == ("docker.io", "library/busybox")
    assert split_image("registry.example.com:5000/team/app:1") == \
        ("registry.example.com:5000", "team/app")
    assert split_image("example.com/app@sha256:abc") == ("example.com", "app")
    secrets = [
        secret("dockerconfigjson", {"auths": {
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
            "example.com": {"username": "any", "password": "p1"},
            "example.com/team": {"username": "team", "password": "p2"}}}),
        secret("dockercfg", {"other.org": {"username": "o", "password": "p3"}}),
        {"type": "Opaque", "data": {"x": "eQ=="}}]
    assert [a.username for a in credentials_for("example.com/team/app:1", secrets)] == \
        ["team", "any"]
    assert [a.username for a in credentials_for("example.com/solo:1", secrets)] == ["any"]
    hub = credentials_for("busybox:1.36", secrets)
    assert [(a.username, a.password) for a in hub] == [("hub", "pw")]
    assert [a.username for a in credentials_for("other.org/x", secrets)] == ["o"]
    assert credentials_for("nowhere.net/x", secrets) == []


def test_node_agent_registers_heartbeats_and_reports_changes(tmp_path):
    import asyncio
    from kubesmith.client.rest import ApiError
    from kubesmith.kubelet.config import KubeletConfig, KubeletOptions
    from kubesmith.kubelet.node import NodeAgent
    from tests.kubelet.conftest import FakeRuntime

    class Client:
        """Nodes and Leases in memory, answering as the API server would."""
        def __init__(self):
            self.nodes, self.leases, self.writes = {}, {}, []

        async def create(self, resource, body, namespace=None):
            store = self.nodes if "nodes" in resource else self.leases
            name = body["metadata"]["name"]
            if name in store:
                raise ApiError({"reason": "AlreadyExists", "code": 409})
            body = dict(body, metadata=dict(body["metadata"], uid=f"uid-{name}",
                                            resourceVersion="1"))
            store[name] = body
            self.writes.append(("create", resource))
            return body

        async def get(self, resource, name, namespace=None):
            store = self.nodes if "nodes" in resource else self.leases
            if name not in store:
                raise ApiError({"reason": "NotFound", "code": 404})
            return store[name]

        async def update(self, resource, body, namespace=None):
            self.leases[body["metadata"]["name"]] = body
            self.writes.append(("update", resource))
            return body

        async def patch(self, resource, name, patch, namespace=None, **kw):
            node = self.nodes[name]
            if "status" in patch:
                conditions = {c["type"]: c for c in node["status"].get("conditions", [])}
                conditions.update({c["type"]: c for c in patch["status"]["conditions"]})
                node["status"] = dict(node["status"], **patch["status"])
                node["status"]["conditions"] = list(conditions.values())
            if "metadata" in patch:
                node["metadata"]["labels"].update(patch["metadata"].get("labels") or {})
            self.writes.append(("patch", kw.get("subresource", "")))
            return node

    async def main():
        runtime = FakeRuntime()
        runtime.network_ready = False
        client = Client()
        options = KubeletOptions(config=KubeletConfig(max_pods=42, node_labels={"a": "b"},
                                                      register_with_taints=[
                                                          {"key": "k", "effect": "NoSchedule"}]),
                                 kubeconfig="", node_name="node-1", node_ip="192.0.2.7",
                                 root_dir=str(tmp_path))
        cidrs = []
        agent = NodeAgent(client, runtime, options, on_pod_cidr=cidrs.append)
        node = await agent.register()
        assert node["metadata"]["labels"]["a"] == "b"
        assert node["spec"]["taints"] == [{"key": "k", "effect": "NoSchedule"}]
        assert node["status"]["capacity"]["pods"] == "42"
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"] == "containerd://1.6.20"
        assert node["status"]["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
        await agent.renew_lease()
        await agent.renew_lease()
        lease = client.leases["node-1"]
        assert lease["spec"]["holderIdentity"] == "node-1"
        assert lease["spec"]["leaseDurationSeconds"] == 40
        assert lease["metadata"]["ownerReferences"][0]["uid"] == "uid-node-1"
        # Nothing changed: no write. The network comes up: Ready is written at once.
        writes = len(client.writes)
        assert not await agent.update_status()
        assert len(client.writes) == writes
        runtime.network_ready = True
        assert await agent.update_status()
        ready = {c["type"]: c for c in client.nodes["node-1"]["status"]["conditions"]}["Ready"]
        assert ready["status"] == "True"
        # The node lifecycle controller marks it Unknown: the kubelet writes it back.
        client.nodes["node-1"]["status"]["conditions"] = [
            dict(c, status="Unknown") if c["type"] == "Ready" else c
            for c in client.nodes["node-1"]["status"]["conditions"]]
        assert await agent.update_status()
        # The controller manager's podCIDR reaches the runtime hook.
        client.nodes["node-1"]["spec"]["podCIDR"] = "10.244.3.0/24"
        await agent.update_status()
        assert cidrs == ["10.244.3.0/24"]
        # A restart adopts the Node.
        again = NodeAgent(client, runtime, options)
        await again.register()
        assert again.uid == "uid-node-1"
    asyncio.run(main())
