"""Every host, masters included: containerd, the node images, kube-proxy, the pod-network
agent and the kubelet.

In order:
- Debian's containerd, runc, CNI plugins, iptables and conntrack; IPv4 forwarding on,
  and bridged traffic through iptables (br_netfilter) where the kernel has it, so
  Service traffic between pods of one bridge is NATed both ways;
- containerd with kubesmith's config.toml (CRI on, cgroupfs, the local pause image),
  run as a component; after a (re)start the deploy waits for its socket;
- the OCI image tarballs built on the operator's machine (pause, busybox, python),
  uploaded to /opt/kubesmith/images and imported into containerd's k8s.io namespace,
  each only when its tarball changed or containerd lacks it;
- on a host without a default route (the lab's hosts, some air-gapped sites), a route
  for the Service range through the node address's interface: a packet the host itself
  sends is routed before kube-proxy's DNAT rewrites its destination, so without any
  route to a ClusterIP it fails at once ("network unreachable"); after the DNAT the
  kernel routes it again, to the real endpoint;
- kube-proxy and the pod-network agent (the deploy waits until each stays running after
  a (re)start), then the kubelet (the deploy waits for its /healthz on 127.0.0.1:10248).

A lab host's kubelet gets the cgroup root the inventory names (`kubelet_cgroup_root`
host data; lab hosts share the machine's cgroup tree), every other host "/".
Masters register tainted (node-role.kubernetes.io/control-plane:NoSchedule); their
control-plane label is set by `label_control_plane` with the admin kubeconfig, since
NodeRestriction forbids a kubelet to set node-role labels on itself.
"""
from __future__ import annotations

import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, server

from provision import cluster, components
from provision.components import Component
from roles.facts import command_output
from roles.files import FileSpec, put_files, remove_files
from roles.services import run_component

PACKAGES = ["containerd", "runc", "containernetworking-plugins", "iptables", "conntrack"]
SYSCTL_FILE = "/etc/sysctl.d/99-kubesmith.conf"
MODULES_FILE = "/etc/modules-load.d/kubesmith.conf"
BRIDGE_SYSCTL = "net.bridge.bridge-nf-call-iptables"
CTR = f"ctr --address {components.CONTAINERD_SOCKET} --namespace k8s.io"
ADMIN_KUBECONFIG = "/etc/kubernetes/admin.conf"
FOLDERS = ("/etc/containerd", components.CNI_CONF_DIR, "/var/lib/kubelet",
           "/var/lib/kube-proxy", components.STATIC_POD_PATH, components.IMAGES_DIR,
           "/var/log/pods")

# How long the deploy waits for containerd's socket after a (re)start ...
RUNTIME_TIMEOUT_SECONDS = 30
# ... for the kubelet's /healthz ...
KUBELET_TIMEOUT_SECONDS = 60
# ... for kube-proxy, the pod-network agent and cluster DNS to stay running ...
RUNNING_TIMEOUT_SECONDS = 30
# ... and for a master's Node to register before it is labelled.
REGISTER_TIMEOUT_SECONDS = 90


def cgroup_root() -> str:
    """The kubelet's cgroupRoot on this host: the inventory's `kubelet_cgroup_root`, or /."""
    return str(host.data.get("kubelet_cgroup_root") or "/")


def _triggers(component: Component, uploads: dict[str, OperationMeta],
              *more: OperationMeta | None) -> list[OperationMeta]:
    triggers = [op for path, op in uploads.items() if path in component.files]
    return triggers + [op for op in more if op is not None]


def _put_text(text: str, dest: str, mode: str = "644") -> OperationMeta:
    return files.put(name=dest, src=StringIO(text), dest=dest, mode=mode)


@deploy("Node packages and kernel settings")
def prepare_node() -> None:
    apt.packages(name="Install containerd, runc, CNI plugins, iptables, conntrack",
                 packages=PACKAGES)
    for path in FOLDERS:
        files.directory(name=path, path=path, mode="755")
    _put_text(sysctl_conf(), SYSCTL_FILE)
    _put_text("overlay\nbr_netfilter\n", MODULES_FILE)
    server.sysctl(name="IPv4 forwarding on", key="net.ipv4.ip_forward", value=1)
    # br_netfilter is per network namespace and may be built in, loadable, or missing
    # (then Service traffic between pods of one node's bridge is not NATed back).
    bridge = command_output(
        f"test -e /proc/sys/{BRIDGE_SYSCTL.replace('.', '/')} && echo present || "
        "(modprobe --dry-run --quiet br_netfilter 2>/dev/null && echo loadable || echo absent)")
    if bridge == "present":
        server.sysctl(name="Bridged traffic through iptables", key=BRIDGE_SYSCTL, value=1)
    elif bridge == "loadable":
        server.shell(name="Load br_netfilter",
                     commands=["modprobe br_netfilter", f"sysctl -w {BRIDGE_SYSCTL}=1"])


def sysctl_conf() -> str:
    return ("# Written by kubesmith's deploy: what the node components need at boot.\n"
            "net.ipv4.ip_forward = 1\n"
            f"{BRIDGE_SYSCTL} = 1\n")


@deploy("containerd")
def run_containerd(plan: cluster.ClusterPlan, name: str, manager: str) -> OperationMeta:
    config = _put_text(components.containerd_config(plan.settings),
                       components.CONTAINERD_CONFIG)
    component = components.containerd(plan.settings, plan.machine(name))
    started = run_component(component, manager, [config])
    server.shell(name="Wait for containerd's socket", commands=[runtime_ready_command()],
                 _if=started.did_change)
    return started


@deploy("Node images")
def import_images(plan: cluster.ClusterPlan) -> None:
    """Upload the image tarballs that differ, and import each one containerd lacks or
    whose tarball changed (what containerd holds is read before the run)."""
    remote = {ref: f"{components.IMAGES_DIR}/{path.name}" for ref, path in plan.images.items()}
    uploads = put_files([FileSpec(local=path, remote=remote[ref])
                         for ref, path in sorted(plan.images.items())])
    remove_files(components.IMAGES_DIR, keep={path.name for path in plan.images.values()})
    present = set(command_output(f"{CTR} images list --quiet 2>/dev/null || true").split())
    for ref in sorted(remote):
        if remote[ref] in uploads or ref not in present:
            server.shell(name=f"Import image {ref}",
                         commands=[f"{CTR} images import {shlex.quote(remote[ref])}"])


@deploy("Service range route")
def service_route(plan: cluster.ClusterPlan, name: str) -> None:
    """Only where there is no default route, and only when the route is missing."""
    cidr = str(plan.settings.service_cidr)
    family = "-6" if plan.settings.service_cidr.version == 6 else "-4"
    routes = command_output(f"ip {family} route show default; ip {family} route show {cidr}")
    if not routes:
        server.shell(name=f"Route {cidr} through the node's interface",
                     commands=[service_route_command(plan.machine(name).address, cidr, family)])


def service_route_command(address: str, cidr: str, family: str = "-4") -> str:
    return (f"dev=$(ip -o {family} addr show to {address} | awk '{{print $2; exit}}') && "
            f"test -n \"$dev\" && ip {family} route replace {cidr} dev \"$dev\" proto static")


@deploy("Node components")
def node_components(plan: cluster.ClusterPlan, name: str, manager: str,
                    uploads: dict[str, OperationMeta], wheel: OperationMeta | None) -> None:
    machine = plan.machine(name)
    settings = plan.settings

    proxy_config = _put_text(components.kube_proxy_config(settings), components.KUBE_PROXY_CONFIG)
    proxy = components.kube_proxy(settings, machine)
    started = run_component(proxy, manager, _triggers(proxy, uploads, wheel, proxy_config))
    wait_running(proxy, manager, started)

    network = components.pod_network(settings, machine)
    started = run_component(network, manager, _triggers(network, uploads, wheel))
    wait_running(network, manager, started)

    kubelet_config = _put_text(components.kubelet_config(settings, cgroup_root()),
                               components.KUBELET_CONFIG)
    kubelet = components.kubelet(settings, machine)
    started = run_component(kubelet, manager, _triggers(kubelet, uploads, wheel, kubelet_config))
    server.shell(name="Wait for kubelet /healthz", commands=[kubelet_healthy_command()],
                 _if=started.did_change)


@deploy("Control-plane label")
def label_control_plane(plan: cluster.ClusterPlan, name: str) -> None:
    """Label this master's Node node-role.kubernetes.io/control-plane="" (as kubeadm)
    unless it already carries the label (read before the run)."""
    label = components.CONTROL_PLANE_LABEL
    port = plan.settings.api_port
    probe = (f"{components.VENV}/bin/python -m kubesmith.client.probe "
             f"--kubeconfig {ADMIN_KUBECONFIG} --server https://127.0.0.1:{port} "
             f"/api/v1/nodes/{name}")
    labelled = command_output(
        f"{probe} 2>/dev/null | grep -q '\"{label}\"' && echo yes || echo no")
    if labelled != "yes":
        server.shell(name=f"Label {name} {label}",
                     commands=[label_command(name, port)])


def label_command(name: str, port: int) -> str:
    return (f"{components.VENV}/bin/python -m kubesmith.client.apply "
            f"--kubeconfig {ADMIN_KUBECONFIG} --timeout {REGISTER_TIMEOUT_SECONDS} "
            f"--label-node {name} {components.CONTROL_PLANE_LABEL}= "
            f"--server https://127.0.0.1:{port}")


def runtime_ready_command() -> str:
    return (f"for i in $(seq {RUNTIME_TIMEOUT_SECONDS}); do {CTR} version >/dev/null 2>&1 "
            f"&& exit 0; sleep 1; done; echo 'containerd not answering on "
            f"{components.CONTAINERD_SOCKET} within {RUNTIME_TIMEOUT_SECONDS}s' >&2; exit 1")


def kubelet_healthy_command() -> str:
    """Poll the kubelet's plain-HTTP http://127.0.0.1:10248/healthz (upstream's healthz
    port); on a timeout, show the end of its log."""
    url = f"http://127.0.0.1:{components.KUBELET_HEALTHZ_PORT}/healthz"
    fetch = (f"{components.VENV}/bin/python -c \"import sys, urllib.request; "
             f"sys.exit(urllib.request.urlopen('{url}', timeout=2).status != 200)\" "
             ">/dev/null 2>&1")
    log = f"{components.LOG_DIR}/kubelet.log"
    return (f"for i in $(seq {KUBELET_TIMEOUT_SECONDS}); do {fetch} && exit 0; sleep 1; "
            f"done; echo 'kubelet not healthy within {KUBELET_TIMEOUT_SECONDS}s "
            f"({url}); the end of {log}:' >&2; tail -n 20 {log} >&2; exit 1")


def running_command(name: str, manager: str, timeout: int = RUNNING_TIMEOUT_SECONDS) -> str:
    """Wait until a component is running and still is 3 s later (a program that fails
    at start is restarted by its service manager, so one look is not enough); on a
    timeout, show the end of its log."""
    if manager == "systemd":
        check = f"systemctl is-active --quiet {name}"
        log = f"journalctl -u {name} -n 20 --no-pager"
    else:
        check = f"supervisorctl status {name} | grep -q RUNNING"
        log = f"tail -n 20 {components.LOG_DIR}/{name}.log"
    return (f"for i in $(seq {timeout}); do if {check}; then sleep 3; {check} && exit 0; fi; "
            f"sleep 1; done; echo '{name} is not running after {timeout}s; the end of its "
            f"log:' >&2; {log} >&2; exit 1")


def wait_running(component: Component, manager: str, started) -> None:
    server.shell(name=f"Wait for {component.name} to run",
                 commands=[running_command(component.name, manager)],
                 _if=started.did_change)
