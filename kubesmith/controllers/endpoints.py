"""Endpoints: for each Service with a selector, an Endpoints object of the same name
listing the selected pods (upstream's pkg/controller/endpoint, --controllers name
"endpoint").

Ready pods' IPs are `addresses`, the others `notReadyAddresses` (all are addresses when
the Service says publishNotReadyAddresses), each with nodeName, targetRef and, for pods
whose subdomain is the Service's name, hostname. Ports are the Service's ports with
named targetPorts looked up in the pod's containers; pods that have not all the same
ports go into subsets of their own (upstream's RepackSubsets). Services without a
selector are left alone (their Endpoints are someone else's), and the Endpoints of a
deleted Service are deleted. Past 1000 addresses the object is truncated and annotated
endpoints.kubernetes.io/over-capacity: truncated, as upstream.
"""
from __future__ import annotations

import logging

from kubesmith.client.informers import split_key
from kubesmith.client.rest import ApiError, is_already_exists, is_conflict, is_not_found
from kubesmith.controllers import register
from kubesmith.controllers.common import (
    Obj,
    ServicePodTracker,
    find_port,
    include_in_endpoints,
    is_pod_ready,
    meta,
    pod_ips,
    pod_reference,
)
from kubesmith.controllers.context import ControllerContext

log = logging.getLogger(__name__)

TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
HEADLESS_LABEL = "service.kubernetes.io/headless"
OVER_CAPACITY = "endpoints.kubernetes.io/over-capacity"
MAX_ADDRESSES = 1000    # upstream's maxCapacity: more go to EndpointSlices only


def is_headless(service: Obj) -> bool:
    return (service.get("spec") or {}).get("clusterIP") == "None"


def endpoint_address(pod: Obj, ip: str, service: Obj) -> Obj:
    address: Obj = {"ip": ip, "targetRef": pod_reference(pod)}
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        address["nodeName"] = spec["nodeName"]
    if spec.get("hostname") and spec.get("subdomain") == meta(service)["name"]:
        address["hostname"] = spec["hostname"]
    return address


def desired_subsets(service: Obj, pods: list[Obj]) -> list[Obj]:
    spec = service.get("spec") or {}
    publish = bool(spec.get("publishNotReadyAddresses"))
    service_ports = spec.get("ports") or []
    # port set -> (ready addresses, not ready addresses)
    groups: dict[tuple, tuple[list[Obj], list[Obj]]] = {}
    for pod in pods:
        if not include_in_endpoints(pod, publish):
            continue
        ips = [ip for ip in pod_ips(pod) if ":" not in ip] or pod_ips(pod)[:1]
        ports: list[Obj] = []
        for sp in service_ports:
            number = find_port(pod, sp)
            if number is None:
                continue
            port = {"port": number, "protocol": sp.get("protocol", "TCP")}
            if sp.get("name"):
                port["name"] = sp["name"]
            if sp.get("appProtocol"):
                port["appProtocol"] = sp["appProtocol"]
            ports.append(port)
        if service_ports and not ports:
            continue
        key = tuple(sorted((p.get("name", ""), p["port"], p["protocol"]) for p in ports))
        ready, not_ready = groups.setdefault(key, ([], []))
        for ip in ips[:1]:
            address = endpoint_address(pod, ip, service)
            (ready if publish or is_pod_ready(pod) else not_ready).append(
                (address, ports))
    subsets = []
    for key in sorted(groups):
        ready, not_ready = groups[key]
        ports = (ready or not_ready)[0][1]
        subset: Obj = {}
        if ready:
            subset["addresses"] = sorted((a for a, _ in ready), key=lambda a: a["ip"])
        if not_ready:
            subset["notReadyAddresses"] = sorted((a for a, _ in not_ready),
                                                 key=lambda a: a["ip"])
        if ports:
            subset["ports"] = sorted(ports, key=lambda p: (p.get("name", ""), p["port"]))
        subsets.append(subset)
    return subsets


def truncate(subsets: list[Obj], limit: int = MAX_ADDRESSES) -> tuple[list[Obj], bool]:
    """At most `limit` addresses, ready ones kept first, shared out over the subsets in
    proportion to their sizes (upstream's truncateEndpoints); (subsets, truncated)."""
    total = sum(len(s.get("addresses") or []) + len(s.get("notReadyAddresses") or [])
                for s in subsets)
    if total <= limit:
        return subsets, False
    out = []
    for subset in subsets:
        size = len(subset.get("addresses") or []) + len(subset.get("notReadyAddresses") or [])
        keep = size * limit // total
        trimmed = dict(subset)
        ready = (subset.get("addresses") or [])[:keep]
        not_ready = (subset.get("notReadyAddresses") or [])[:keep - len(ready)]
        trimmed.pop("addresses", None)
        trimmed.pop("notReadyAddresses", None)
        if ready:
            trimmed["addresses"] = ready
        if not_ready:
            trimmed["notReadyAddresses"] = not_ready
        out.append(trimmed)
    return out, True


@register("endpoint")
class EndpointsController(ServicePodTracker):
    queue_name = "endpoint"

    def __init__(self, ctx: ControllerContext):
        self.client = ctx.client
        self.endpoints = ctx.informers.informer("v1 endpoints")
        super().__init__(ctx.informers.informer("v1 services"), ctx.informers.informer("v1 pods"))
        # An Endpoints object changed or deleted by someone else is put right.
        self.endpoints.add_event_handler(on_update=lambda old, new: self.queue.add(
            f"{meta(new).get('namespace')}/{meta(new).get('name')}"),
            on_delete=self._touch)

    async def sync(self, key: str) -> float | None:
        namespace, name = split_key(key)
        trigger = self.trigger_times.pop(key, None)
        service = self.services.lister.get(name, namespace)
        if service is None:
            if self.endpoints.lister.get(name, namespace) is not None:
                try:
                    await self.client.delete("v1 endpoints", name, namespace)
                except ApiError as exc:
                    if not is_not_found(exc):
                        raise
            return None
        spec = service.get("spec") or {}
        if not spec.get("selector") or spec.get("type") == "ExternalName":
            # Not this controller's: no selector, or a name rather than endpoints.
            return None
        subsets, over_capacity = truncate(desired_subsets(service, self.selected_pods(service)))
        current = self.endpoints.lister.get(name, namespace)
        labels = dict(meta(service).get("labels") or {})
        if is_headless(service):
            labels[HEADLESS_LABEL] = ""
        if current is not None and (current.get("subsets") or []) == subsets \
                and (meta(current).get("labels") or {}) == labels \
                and ((meta(current).get("annotations") or {}).get(OVER_CAPACITY) is not None) \
                == over_capacity:
            return None
        annotations = dict((meta(current).get("annotations") or {}) if current else {})
        if over_capacity:
            annotations[OVER_CAPACITY] = "truncated"
        else:
            annotations.pop(OVER_CAPACITY, None)
        if trigger:
            annotations[TRIGGER_TIME] = trigger
        else:
            annotations.pop(TRIGGER_TIME, None)
        body: Obj = {"apiVersion": "v1", "kind": "Endpoints",
                     "metadata": {"name": name, "namespace": namespace, "labels": labels,
                                  "annotations": annotations},
                     "subsets": subsets}
        try:
            if current is None:
                await self.client.create("v1 endpoints", body, namespace)
            else:
                body["metadata"]["resourceVersion"] = meta(current)["resourceVersion"]
                await self.client.update("v1 endpoints", body, namespace)
        except ApiError as exc:
            if is_already_exists(exc) or is_conflict(exc) or is_not_found(exc):
                # The cache is behind: try again once it caught up.
                self.trigger_times.setdefault(key, trigger or "")
            raise
        return None
