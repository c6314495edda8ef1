"""Components are described once and rendered to systemd units and supervisor programs."""
import configparser

import pytest

from provision import components, render
from provision.components import Component
from provision.settings import load_settings
from provision.topology import Machine, Topology

THREE = Topology(tuple(Machine(f"master-{i}", f"10.240.0.{10 + i}", frozenset({"masters", "etcd"}))
                       for i in (1, 2, 3)))


def etcd_member(i=1):
    return components.etcd(load_settings({}), THREE, THREE.masters[i - 1])


def test_etcd_flags_require_client_certs_everywhere():
    flags = dict(etcd_member(2).flags)
    assert flags["--name"] == "master-2"
    assert flags["--client-cert-auth"] == "true" and flags["--peer-client-cert-auth"] == "true"
    assert flags["--listen-client-urls"] == "https://10.240.0.12:2379,https://127.0.0.1:2379"
    assert flags["--initial-cluster"] == ",".join(
        f"master-{i}=https://10.240.0.{10 + i}:2380" for i in (1, 2, 3))
    assert all(v.startswith("https://") for k, v in flags.items() if k.endswith("-urls"))
    assert flags["--data-dir"].startswith("/var/lib/etcd/")


def test_supervisor_program_renders_the_component():
    member = etcd_member()
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(render.supervisor_program(member))
    program = parser["program:etcd"]
    assert program["command"] == member.command_line
    assert program["user"] == "etcd"
    assert program["autorestart"] == "true"
    assert program["stdout_logfile"] == "/var/log/kubesmith/etcd.log"


def test_systemd_unit_renders_the_component():
    member = etcd_member()
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read_string(render.systemd_unit(member))
    service = parser["Service"]
    assert service["ExecStart"] == member.command_line
    assert service["User"] == "etcd" and service["Restart"] == "always"
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_unsafe_flag_values_are_refused():
    with pytest.raises(ValueError):
        Component(name="x", description="x", executable="/bin/x", flags=(("--a", "two words"),))


def test_control_plane_components_use_kubeadm_paths_and_flags():
    settings = load_settings({})
    master = THREE.masters[0]
    apiserver = dict(components.kube_apiserver(settings, THREE, master).flags)
    assert apiserver["--etcd-servers"] == ",".join(
        f"https://10.240.0.{10 + i}:2379" for i in (1, 2, 3))
    assert apiserver["--anonymous-auth"] == "false"
    assert apiserver["--authorization-mode"] == "Node,RBAC"
    assert "NodeRestriction" in apiserver["--enable-admission-plugins"]
    scheduler = components.kube_scheduler(settings, master)
    assert dict(scheduler.flags)["--kubeconfig"] == "/etc/kubernetes/scheduler.conf"
    assert dict(scheduler.flags)["--leader-elect"] == "true"
    manager = components.kube_controller_manager(settings, master)
    flags = dict(manager.flags)
    assert flags["--cluster-cidr"] == "10.244.0.0/16"
    assert flags["--service-cluster-ip-range"] == "10.96.0.0/12"
    assert flags["--service-account-private-key-file"] == "/etc/kubernetes/pki/sa.key"
    assert "/etc/kubernetes/pki/ca.key" in manager.files
    for component in (scheduler, manager):
        assert component.executable.startswith("/opt/kubesmith/venv/bin/kube-")


def test_scheduler_and_controller_manager_serve_healthz_on_loopback_only():
    settings = load_settings({})
    master = THREE.masters[1]
    for component in (components.kube_scheduler(settings, master),
                      components.kube_controller_manager(settings, master)):
        flags = dict(component.flags)
        assert flags["--bind-address"] == "127.0.0.1"
        assert flags["--leader-elect"] == "true"
        assert flags["--authentication-kubeconfig"] == flags["--kubeconfig"]
        assert flags["--kubeconfig"] in component.files
    assert (components.SCHEDULER_PORT, components.CONTROLLER_MANAGER_PORT) == (10259, 10257)


@pytest.fixture
def healthz_server():
    """An HTTPS server with a certificate no client trusts (as the components' own
    self-signed one): /healthz answers 200, anything else 404."""
    import http.server
    import ssl
    import threading

    import trustme

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_healthz_wait_command_runs_in_a_shell(healthz_server, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    from roles import control_plane

    # The command runs the venv's python; here, the one running the tests.
    monkeypatch.setattr(components, "VENV", str(Path(sys.executable).parent.parent))
    monkeypatch.setattr(control_plane, "HEALTHY_TIMEOUT_SECONDS", 2)
    command = control_plane.healthy_command("kube-scheduler", healthz_server)
    assert subprocess.run(["sh", "-c", command], timeout=30).returncode == 0
    closed = control_plane.healthy_command("kube-scheduler", healthz_server + 1
                                           if healthz_server < 65535 else 1)
    failed = subprocess.run(["sh", "-c", closed], capture_output=True, text=True, timeout=30)
    assert failed.returncode == 1
    assert "kube-scheduler not healthy within 2s" in failed.stderr


# --------------------------------------------------------------------------- nodes

MASTER = Machine("master-1", "10.240.0.11", frozenset({"masters", "etcd"}))
WORKER = Machine("worker-1", "10.240.0.12", frozenset({"workers"}))


def test_kubelet_uses_upstream_flags_and_masters_register_tainted():
    settings = load_settings({})
    worker = components.kubelet(settings, WORKER)
    flags = dict(worker.flags)
    assert flags == {
        "--config": "/var/lib/kubelet/config.yaml",
        "--kubeconfig": "/etc/kubernetes/kubelet.conf",
        "--container-runtime-endpoint": "unix:///run/containerd/containerd.sock",
        "--hostname-override": "worker-1",
        "--node-ip": "10.240.0.12",
    }
    assert worker.executable == "/opt/kubesmith/venv/bin/kubelet"
    for path in ("/var/lib/kubelet/config.yaml", "/etc/kubernetes/kubelet.conf",
                 "/var/lib/kubelet/pki/kubelet.crt", "/var/lib/kubelet/pki/kubelet.key",
                 "/etc/kubernetes/pki/ca.crt"):
        assert path in worker.files
    master = dict(components.kubelet(settings, MASTER).flags)
    assert master["--register-with-taints"] == "node-role.kubernetes.io/control-plane:NoSchedule"


def test_node_agents_flags():
    settings = load_settings({"pod_cidr": "10.200.0.0/16"})
    proxy = components.kube_proxy(settings, WORKER)
    assert dict(proxy.flags) == {"--config": "/var/lib/kube-proxy/config.conf",
                                 "--hostname-override": "worker-1"}
    assert "/etc/kubernetes/kube-proxy.conf" in proxy.files
    network = dict(components.pod_network(settings, WORKER).flags)
    assert network["--kubeconfig"] == "/etc/kubernetes/kubelet.conf"
    assert network["--node-name"] == "worker-1"
    assert network["--cluster-cidr"] == "10.200.0.0/16"
    assert network["--cni-bin-dir"] == "/usr/lib/cni"
    dns = components.kube_dns(load_settings({"dns_domain": "example.internal"}), MASTER)
    flags = dict(dns.flags)
    assert flags["--kubeconfig"] == "/etc/kubernetes/kube-dns.conf"
    assert flags["--cluster-domain"] == "example.internal"
    assert flags["--bind-address"] == "10.240.0.11"
    assert flags["--node-name"] == "master-1"
    assert flags["--reverse-cidrs"] == "10.96.0.0/12,10.244.0.0/16"
    for component in (proxy, components.pod_network(settings, WORKER), dns,
                      components.kubelet(settings, WORKER), components.containerd(settings, WORKER)):
        assert dict(component.environment)["PATH"].startswith("/usr/local/sbin:")


def test_containerd_keeps_its_shims_when_it_stops_under_systemd():
    containerd = components.containerd(load_settings({}), WORKER)
    assert containerd.command_line == "/usr/bin/containerd --config=/etc/containerd/config.toml"
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read_string(render.systemd_unit(containerd))
    assert parser["Service"]["KillMode"] == "process"
    assert parser["Service"]["Delegate"] == "yes"
    kubelet = configparser.ConfigParser(interpolation=None, strict=False)
    kubelet.optionxform = str
    kubelet.read_string(render.systemd_unit(components.kubelet(load_settings({}), WORKER)))
    assert "KillMode" not in kubelet["Service"]
    program = configparser.ConfigParser(interpolation=None)
    program.read_string(render.supervisor_program(containerd))
    assert program["program:containerd"]["environment"].startswith('PATH="/usr/local/sbin:')


def test_containerd_config_has_cri_on_with_cgroupfs_and_the_local_pause_image():
    import tomllib

    config = tomllib.loads(components.containerd_config(load_settings({})))
    assert config["version"] == 2
    assert config["grpc"]["address"] == "/run/containerd/containerd.sock"
    assert "io.containerd.grpc.v1.cri" not in config.get("disabled_plugins", [])
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "kubesmith.local/pause:latest"
    assert (cri["stream_server_address"], cri["stream_server_port"]) == ("127.0.0.1", "0")
    assert cri["containerd"]["snapshotter"] == "overlayfs"
    runc = cri["containerd"]["runtimes"][cri["containerd"]["default_runtime_name"]]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is False
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": "/etc/cni/net.d"}


def test_kubelet_configuration():
    import yaml

    settings = load_settings({"dns_ip": "10.96.0.53", "dns_domain": "corp.example"})
    config = yaml.safe_load(components.kubelet_config(settings))
    assert (config["apiVersion"], config["kind"]) == (
        "kubelet.config.k8s.io/v1beta1", "KubeletConfiguration")
    assert config["authentication"] == {
        "anonymous": {"enabled": False}, "webhook": {"enabled": True},
        "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"}}
    assert config["authorization"] == {"mode": "Webhook"}
    assert config["clusterDNS"] == ["10.96.0.53"]
    assert config["clusterDomain"] == "corp.example"
    assert config["cgroupDriver"] == "cgroupfs" and config["cgroupRoot"] == "/"
    assert config["tlsCertFile"] == "/var/lib/kubelet/pki/kubelet.crt"
    assert config["tlsPrivateKeyFile"] == "/var/lib/kubelet/pki/kubelet.key"
    assert config["staticPodPath"] == "/etc/kubernetes/manifests"
    assert (config["containerLogMaxSize"], config["containerLogMaxFiles"]) == ("10Mi", 5)
    assert config["resolvConf"] == "/etc/resolv.conf"
    assert (config["healthzBindAddress"], config["healthzPort"]) == ("127.0.0.1", 10248)
    assert config["containerRuntimeEndpoint"] == "unix:///run/containerd/containerd.sock"
    lab = yaml.safe_load(components.kubelet_config(settings, "/kubesmith-lab-lab-worker-1"))
    assert lab["cgroupRoot"] == "/kubesmith-lab-lab-worker-1"
    with pytest.raises(ValueError):
        components.kubelet_config(settings, "kubesmith-lab-lab-worker-1")


def test_kube_proxy_configuration():
    import yaml

    config = yaml.safe_load(components.kube_proxy_config(load_settings({"pod_cidr": "10.32.0.0/16"})))
    assert (config["apiVersion"], config["kind"]) == (
        "kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration")
    assert config["clientConnection"]["kubeconfig"] == "/etc/kubernetes/kube-proxy.conf"
    assert config["mode"] == "iptables"
    assert config["clusterCIDR"] == "10.32.0.0/16"
    assert "hostnameOverride" not in config   # per node, by flag
