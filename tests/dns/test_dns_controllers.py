"""The controller manager's EndpointSlice and Endpoints controllers leave the DNS
servers' own slices of the selectorless kube-dns Service alone."""
from __future__ import annotations

import asyncio

from tests.client.helpers import eventually
from tests.controllers.conftest import ManagerThread, manager_flags
from tests.dns.test_dns_cluster import SLICES, dns_server


def test_endpointslice_controller_leaves_the_dns_slices_alone(cluster, dns_kubeconfig, admin,
                                                              kube_dns_service, tmp_path):
    manager = ManagerThread(manager_flags(
        cluster, "--controllers=endpointslice,endpoint")).start()
    try:
        async def main():
            async with admin() as api, dns_server(dns_kubeconfig, tmp_path, "dns-f"):
                async def dns_slices():
                    listed = await api.list(SLICES, "kube-system",
                                            label_selector="kubernetes.io/service-name=kube-dns")
                    return listed["items"]
                await eventually(dns_slices, timeout=5)
                # The controller is at work: a Service with a selector gets its slice.
                await api.create("v1 services", {
                    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe"},
                    "spec": {"selector": {"app": "probe"}, "ports": [{"port": 80}]}},
                    "kube-system")

                async def controller_slices():
                    listed = await api.list(SLICES, "kube-system",
                                            label_selector="kubernetes.io/service-name=probe")
                    return listed["items"]
                try:
                    made = await eventually(controller_slices, timeout=10)
                    assert made[0]["metadata"]["labels"][
                        "endpointslice.kubernetes.io/managed-by"] == \
                        "endpointslice-controller.k8s.io"
                finally:
                    await api.delete("v1 services", "probe", "kube-system")
                # A resync of the Service by the controllers (a label change queues it).
                service = await api.get("v1 services", "kube-dns", "kube-system")
                service["metadata"].setdefault("labels", {})["touched"] = "yes"
                await api.update("v1 services", service, "kube-system")
                await asyncio.sleep(2)
                items = await dns_slices()
                assert [s["metadata"]["name"] for s in items] == ["kube-dns-dns-f"]
                assert items[0]["metadata"]["labels"][
                    "endpointslice.kubernetes.io/managed-by"] == "kubesmith-dns"
                assert items[0]["endpoints"][0]["addresses"] == ["127.0.0.1"]
        asyncio.run(main())
    finally:
        manager.stop()
