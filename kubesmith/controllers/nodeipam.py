"""The node IPAM controller (upstream's nodeipam with the RangeAllocator): with
--allocate-node-cidrs, every node gets spec.podCIDR and spec.podCIDRs, one subnet of
--node-cidr-mask-size from each --cluster-cidr, never the same one twice. The subnets of
existing nodes are taken first when the controller starts, and a node's subnets are
free again once it is deleted. The service range (--service-cluster-ip-range) is kept
out of the pod ranges where they overlap.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

from kubesmith.client.informers import DeletedFinalStateUnknown
from kubesmith.client.rest import ApiError, is_not_found
from kubesmith.client.workqueue import WorkQueue, run_workers
from kubesmith.controllers import register
from kubesmith.controllers.context import ControllerContext

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class CIDRSetFull(Exception):
    pass


class CIDRSet:
    """The subnets of one cluster CIDR, by index, with the ones in use marked."""

    def __init__(self, cluster_cidr: Network, mask_size: int):
        if mask_size < cluster_cidr.prefixlen:
            raise ValueError(f"node mask /{mask_size} is larger than {cluster_cidr}")
        self.cluster_cidr = cluster_cidr
        self.mask_size = mask_size
        self.size = 1 << (mask_size - cluster_cidr.prefixlen)
        self.step = 1 << (cluster_cidr.max_prefixlen - mask_size)
        self.used: set[int] = set()
        self.next = 0

    def subnet(self, index: int) -> Network:
        base = int(self.cluster_cidr.network_address) + index * self.step
        return ipaddress.ip_network((base, self.mask_size))

    def index_of(self, subnet: Network) -> int | None:
        if subnet.version != self.cluster_cidr.version or \
                subnet.prefixlen != self.mask_size or not subnet.subnet_of(self.cluster_cidr):
            return None
        return (int(subnet.network_address) - int(self.cluster_cidr.network_address)) \
            // self.step

    def occupy(self, subnet: Network) -> bool:
        """Mark a subnet used (or every subnet a larger range covers)."""
        if subnet.version != self.cluster_cidr.version or not subnet.overlaps(
                self.cluster_cidr):
            return False
        index = self.index_of(subnet)
        if index is not None:
            self.used.add(index)
            return True
        for index in range(self.size):
            if self.subnet(index).overlaps(subnet):
                self.used.add(index)
        return True

    def release(self, subnet: Network) -> None:
        index = self.index_of(subnet)
        if index is not None:
            self.used.discard(index)

    def allocate(self) -> Network:
        """The next free subnet after the last one given (upstream's round robin)."""
        for offset in range(self.size):
            index = (self.next + offset) % self.size
            if index not in self.used:
                self.used.add(index)
                self.next = (index + 1) % self.size
                return self.subnet(index)
        raise CIDRSetFull(f"no free /{self.mask_size} left in {self.cluster_cidr}")


def _name(node: Obj | DeletedFinalStateUnknown) -> str:
    if isinstance(node, DeletedFinalStateUnknown):
        node = node.obj
    return (node.get("metadata") or {}).get("name", "")


def pod_cidrs(node: Obj) -> list[str]:
    spec = node.get("spec") or {}
    return list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))


@register("nodeipam")
class NodeIpamController:
    def __init__(self, ctx: ControllerContext):
        self.client = ctx.client
        options = ctx.options
        self.enabled = bool(getattr(options, "allocate_node_cidrs", False))
        self.sets = [CIDRSet(net, options.mask_size(net))
                     for net in getattr(options, "cluster_cidr", None) or []]
        self.service_ranges = list(getattr(options, "service_cluster_ip_range", None) or [])
        self.nodes = ctx.informers.informer("v1 nodes")
        self.recorder = ctx.recorder("cidrAllocator")
        self.queue = WorkQueue(name="node_ipam")
        # name -> subnets this controller counts as the node's.
        self.allocated: dict[str, list[Network]] = {}
        if self.enabled:
            self.nodes.add_event_handler(
                on_add=lambda node: self.queue.add(_name(node)),
                on_update=lambda old, new: self.queue.add(_name(new)),
                on_delete=self._deleted)

    def _deleted(self, node: Obj | DeletedFinalStateUnknown) -> None:
        name = _name(node)
        for subnet in self.allocated.pop(name, []):
            for cidr_set in self.sets:
                cidr_set.release(subnet)
        log.info("released pod CIDRs of deleted node %s", name)

    def load_existing(self) -> None:
        """Mark the service ranges and every existing node's subnets as used."""
        for cidr_set in self.sets:
            for service_range in self.service_ranges:
                cidr_set.occupy(service_range)
        for node in self.nodes.lister.list():
            self._record(_name(node), pod_cidrs(node))

    def _record(self, name: str, cidrs: list[str]) -> None:
        subnets = []
        for text in cidrs:
            try:
                subnet = ipaddress.ip_network(text, strict=False)
            except ValueError:
                log.warning("node %s has an invalid pod CIDR %r", name, text)
                continue
            for cidr_set in self.sets:
                if cidr_set.occupy(subnet):
                    subnets.append(subnet)
        self.allocated[name] = subnets

    async def run(self, workers: int) -> None:
        if not self.enabled:
            log.info("--allocate-node-cidrs is off: node IPAM does nothing")
            await asyncio.Event().wait()     # nothing to do, but a controller runs
        self.load_existing()
        # One worker: allocation must see the previous one.
        await run_workers(self.queue, self.sync, 1)

    async def sync(self, name: str) -> None:
        node = self.nodes.lister.get(name)
        if node is None or (node.get("metadata") or {}).get("deletionTimestamp"):
            return
        existing = pod_cidrs(node)
        if existing:
            if name not in self.allocated:
                self._record(name, existing)
            return
        subnets = [str(s) for s in self.allocated.get(name) or []]
        if not subnets:
            taken: list[tuple[CIDRSet, Network]] = []
            try:
                for cidr_set in self.sets:
                    taken.append((cidr_set, cidr_set.allocate()))
            except CIDRSetFull as exc:
                for cidr_set, subnet in taken:     # all families or none
                    cidr_set.release(subnet)
                log.error("node %s: %s", name, exc)
                self.recorder.emit(node, "Normal", "CIDRNotAvailable",
                                   f"Node {name} status is now: CIDRNotAvailable")
                return
            subnets = [str(subnet) for _, subnet in taken]
            self.allocated[name] = [subnet for _, subnet in taken]
        try:
            await self.client.patch("v1 nodes", name, {"spec": {
                "podCIDR": subnets[0], "podCIDRs": subnets}}, patch_type="merge")
            log.info("node %s: pod CIDRs %s", name, ", ".join(subnets))
        except ApiError as exc:
            if is_not_found(exc):
                self._deleted(node)
                return
            raise
