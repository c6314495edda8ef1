"""Self-registration: each DNS server is an endpoint of the cluster DNS Service.

The kube-system/kube-dns Service has no selector (the servers run on the masters under
the service manager, not as pods), so nothing else fills its endpoints. Each server
keeps one discovery.k8s.io/v1 EndpointSlice of its own:

    kube-system/kube-dns-<node name>
      labels: kubernetes.io/service-name=kube-dns
              endpointslice.kubernetes.io/managed-by=kubesmith-dns
      addressType: IPv4 (IPv6 for an IPv6 --advertise-address)
      endpoints: [{addresses: [--advertise-address], nodeName: <node name>,
                   conditions: {ready: true, serving: true, terminating: false}}]
      ports: dns <port>/UDP, dns-tcp <port>/TCP, metrics <metrics port>/TCP
      ownerReferences: the Service (when it exists), so deleting it takes the slices

The slice is written once the informers have synced (the server then answers the
cluster's names, and the slice cache is complete, so nothing is created blindly).
kube-proxy programs the Service's ClusterIP to every ready endpoint of its slices. The
EndpointSlice controller only touches slices labelled managed-by
endpointslice-controller.k8s.io, so these stay as written. The slice is put back when
someone changes or deletes it (the slices informer wakes the loop) and checked every
30 s; on shutdown the server deletes it, so clients stop being sent to it.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

from kubesmith.client.informers import Lister
from kubesmith.client.rest import ApiClient, ApiError, is_already_exists, is_not_found

log = logging.getLogger("kubesmith-dns.registration")

Obj = dict[str, Any]
SLICES = "discovery.k8s.io/v1 endpointslices"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGER = "kubesmith-dns"
RECHECK_PERIOD = 30.0
RETRY_DELAY = 1.0


class SliceRegistration:
    """Keeps this server's EndpointSlice as it should be (see the module docstring)."""

    def __init__(self, client: ApiClient, *, slices: Lister, services: Lister,
                 service: str, node_name: str, address: str, dns_port: int,
                 metrics_port: int):
        self.client = client
        self.slices = slices
        self.services = services
        self.namespace, _, self.service_name = service.partition("/")
        self.name = f"{self.service_name}-{node_name}"
        self.node_name = node_name
        self.address = address
        self.dns_port = dns_port
        self.metrics_port = metrics_port
        self.ready = False
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Check the slice soon (the slice or the Service changed, or readiness did)."""
        self._wake.set()

    def is_ours(self, obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        return meta.get("namespace") == self.namespace and meta.get("name") == self.name

    def desired(self) -> Obj:
        family = ipaddress.ip_address(self.address).version
        ports = [{"name": "dns", "port": self.dns_port, "protocol": "UDP"},
                 {"name": "dns-tcp", "port": self.dns_port, "protocol": "TCP"}]
        if self.metrics_port:
            ports.append({"name": "metrics", "port": self.metrics_port, "protocol": "TCP"})
        meta: Obj = {"name": self.name, "namespace": self.namespace,
                     "labels": {SERVICE_NAME_LABEL: self.service_name,
                                MANAGED_BY_LABEL: MANAGER}}
        service = self.services.get(self.service_name, self.namespace)
        if service is not None:
            meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Service",
                                        "name": self.service_name,
                                        "uid": service["metadata"]["uid"]}]
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": meta, "addressType": "IPv4" if family == 4 else "IPv6",
                "endpoints": [{"addresses": [self.address], "nodeName": self.node_name,
                               "conditions": {"ready": self.ready, "serving": self.ready,
                                              "terminating": False}}],
                "ports": ports}

    @staticmethod
    def _differs(current: Obj, wanted: Obj) -> bool:
        cur_meta, want_meta = current.get("metadata") or {}, wanted["metadata"]
        labels = cur_meta.get("labels") or {}
        return (any(labels.get(k) != v for k, v in want_meta["labels"].items())
                or (cur_meta.get("ownerReferences") or []) != want_meta.get("ownerReferences", [])
                or current.get("addressType") != wanted["addressType"]
                or (current.get("endpoints") or []) != wanted["endpoints"]
                or (current.get("ports") or []) != wanted["ports"])

    async def sync(self) -> None:
        """One comparison of the cached slice with the wanted one, and the write."""
        wanted = self.desired()
        current = self.slices.get(self.name, self.namespace)
        if current is None:
            try:
                await self.client.create(SLICES, wanted, self.namespace)
                log.info("registered %s/%s (ready=%s)", self.namespace, self.name, self.ready)
            except ApiError as exc:
                if not is_already_exists(exc):     # the cache is behind: it will catch up
                    raise
            return
        if not self._differs(current, wanted):
            return
        body = dict(current, addressType=wanted["addressType"],
                    endpoints=wanted["endpoints"], ports=wanted["ports"])
        meta = dict(current["metadata"])
        meta["labels"] = dict(meta.get("labels") or {}, **wanted["metadata"]["labels"])
        if "ownerReferences" in wanted["metadata"]:
            meta["ownerReferences"] = wanted["metadata"]["ownerReferences"]
        else:
            meta.pop("ownerReferences", None)
        body["metadata"] = meta
        await self.client.update(SLICES, body, self.namespace)
        log.info("updated %s/%s (ready=%s)", self.namespace, self.name, self.ready)

    async def run(self) -> None:
        """Keep the slice right until cancelled."""
        while True:
            self._wake.clear()
            delay = RECHECK_PERIOD
            try:
                await self.sync()
            except (ApiError, ConnectionError) as exc:
                # A conflict means the cache is behind; other failures are retried too.
                log.warning("EndpointSlice %s/%s: %s", self.namespace, self.name, exc)
                delay = RETRY_DELAY
            except Exception:
                log.exception("EndpointSlice %s/%s", self.namespace, self.name)
                delay = RETRY_DELAY
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def withdraw(self) -> None:
        """Delete the slice (on shutdown)."""
        try:
            await self.client.delete(SLICES, self.name, self.namespace)
            log.info("withdrew %s/%s", self.namespace, self.name)
        except ApiError as exc:
            if not is_not_found(exc):
                log.warning("withdrawing %s/%s: %s", self.namespace, self.name, exc)
        except ConnectionError as exc:
            log.warning("withdrawing %s/%s: %s", self.namespace, self.name, exc)
