"""A pod on its own network: containerd's CRI plugin calls Debian's bridge + host-local
CNI plugins (as on the nodes), the sandbox gets an IP, its hostname and resolv.conf,
and a python container serves HTTP on the pod IP, reached from the host over the bridge.

The bridge, its subnet and the IPAM leases are the test's own and removed after it."""
from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
import urllib.request
import uuid

import pytest

from kubesmith.cri import api
from kubesmith.cri.testing import import_image, start_containerd
from provision.images import BUSYBOX_IMAGE, PAUSE_IMAGE, PYTHON_IMAGE
from tests.cri.conftest import run
from tests.cri.test_cri_runtime import pod, wait_for


def free_subnet() -> str:
    """A /24 in 10.199.0.0/16 that no route of this machine touches."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                            text=True, check=True).stdout
    for _ in range(50):
        third = secrets.randbelow(256)
        if f"10.199.{third}." not in routes:
            return f"10.199.{third}"
    pytest.skip("no free subnet in 10.199.0.0/16")


@pytest.fixture
def pod_network(tmp_path):
    """(CNI conf dir, bridge name, subnet prefix); the bridge is deleted afterwards."""
    bridge = f"ks-t{secrets.token_hex(3)}"
    prefix = free_subnet()
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    (conf_dir / "10-test.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0",
        "name": bridge,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                      "ranges": [[{"subnet": f"{prefix}.0/24"}]]}},
            {"type": "loopback"},
        ],
    }))
    try:
        yield conf_dir, bridge, prefix
    finally:
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True)


def test_pod_gets_an_ip_hostname_and_dns_config(image_tarballs, pod_network, tmp_path):
    conf_dir, bridge, prefix = pod_network
    with start_containerd(tmp_path / "containerd", cni_conf_dir=conf_dir) as running:
        for ref in (PAUSE_IMAGE, BUSYBOX_IMAGE, PYTHON_IMAGE):
            import_image(running, image_tarballs[ref])
        parent = running.cgroup_parent()

        async def main():
            async with running.client() as client:
                async def network_ready():
                    status = await client.status()
                    return {c.type: c.status for c in status.status.conditions}.get("NetworkReady")
                await wait_for(network_ready)      # containerd picks the CNI config up by itself

                uid = str(uuid.uuid4())
                config = api.PodSandboxConfig(
                    metadata=api.PodSandboxMetadata(name="web-0", uid=uid, namespace="default"),
                    hostname="web-0",
                    log_directory=str(tmp_path / "logs" / f"default_web-0_{uid}"),
                    dns_config=api.DNSConfig(servers=["10.96.0.10"],
                                             searches=["default.svc.cluster.local", "svc.cluster.local",
                                                       "cluster.local"],
                                             options=["ndots:5"]),
                    labels={"io.kubernetes.pod.uid": uid},
                    linux=api.LinuxPodSandboxConfig(cgroup_parent=parent))
                async with pod(client, config) as sandbox_id:
                    status = await client.pod_sandbox_status(sandbox_id)
                    pod_ip = status.status.network.ip
                    assert pod_ip.startswith(prefix + ".")

                    container = api.ContainerConfig(
                        metadata=api.ContainerMetadata(name="web"),
                        image=api.ImageSpec(image=PYTHON_IMAGE),
                        command=["python3", "-m", "http.server", "8080", "--directory", "/etc"],
                        log_path="web/0.log")
                    container_id = await client.create_container(sandbox_id, container, config)
                    await client.start_container(container_id)

                    assert await client.exec_sync(container_id, ["hostname"], 5) == (0, b"web-0\n", b"")
                    _, resolv, _ = await client.exec_sync(container_id, ["cat", "/etc/resolv.conf"], 5)
                    assert b"nameserver 10.96.0.10" in resolv
                    assert b"search default.svc.cluster.local svc.cluster.local cluster.local" in resolv
                    assert b"options ndots:5" in resolv
                    _, addresses, _ = await client.exec_sync(container_id, ["ip", "-4", "addr", "show", "eth0"], 5)
                    assert f"inet {pod_ip}/24".encode() in addresses

                    def fetch():
                        give_up = time.monotonic() + 10
                        while True:
                            try:
                                with urllib.request.urlopen(f"http://{pod_ip}:8080/hostname", timeout=2) as reply:
                                    return reply.read()
                            except OSError:
                                if time.monotonic() > give_up:
                                    raise
                                time.sleep(0.1)
                    assert await asyncio.to_thread(fetch) == b"web-0\n"
                # Removing the sandbox removed its network namespace (and the veth in it).
                assert not list(running.state.glob("**/netns/*"))
                ports = subprocess.run(["ip", "-br", "link", "show", "master", bridge],
                                       capture_output=True, text=True, check=True).stdout
                assert ports.strip() == ""
        run(main(), timeout=60)
