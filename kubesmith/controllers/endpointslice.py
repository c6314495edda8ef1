"""EndpointSlices: discovery.k8s.io/v1 slices of the pods each Service with a selector
selects (upstream's pkg/controller/endpointslice).

Slices are labelled kubernetes.io/service-name=<service> and
endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io, owned by the
Service, named "<service>-<random>", addressType IPv4, at most 100 endpoints each
(--max-endpoints-per-slice), one set of slices per distinct port set. An endpoint is a
pod: its IPv4 address, conditions ready (ready and not terminating, or the Service
publishes not-ready addresses), serving (ready) and terminating, nodeName, targetRef,
zone from the node's topology.kubernetes.io/zone label, hostname under the Service's
subdomain. Existing slices are rewritten in place, surplus ones deleted; only slices
this controller manages are touched.
"""
from __future__ import annotations

import logging

from kubesmith.client.informers import split_key
from kubesmith.client.rest import ApiError, is_not_found
from kubesmith.controllers import register
from kubesmith.controllers.common import (
    Obj,
    ServicePodTracker,
    find_port,
    include_in_endpoints,
    is_pod_ready,
    is_terminating,
    meta,
    owner_reference,
    pod_ips,
    pod_reference,
)
from kubesmith.controllers.context import ControllerContext
from kubesmith.controllers.endpoints import HEADLESS_LABEL, TRIGGER_TIME, is_headless

log = logging.getLogger(__name__)

SLICES = "discovery.k8s.io/v1 endpointslices"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS_PER_SLICE = 100
ZONE_LABEL = "topology.kubernetes.io/zone"


def slice_ports(service: Obj, pod: Obj) -> list[Obj] | None:
    ports = []
    for sp in (service.get("spec") or {}).get("ports") or []:
        number = find_port(pod, sp)
        if number is None:
            continue
        port: Obj = {"name": sp.get("name", ""), "port": number,
                     "protocol": sp.get("protocol", "TCP")}
        if sp.get("appProtocol"):
            port["appProtocol"] = sp["appProtocol"]
        ports.append(port)
    return sorted(ports, key=lambda p: (p["name"], p["port"]))


def endpoint_of(service: Obj, pod: Obj, ip: str, zone: str | None) -> Obj:
    publish = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
    terminating = is_terminating(pod)
    ready = is_pod_ready(pod)
    endpoint: Obj = {"addresses": [ip],
                     "conditions": {"ready": publish or (ready and not terminating),
                                    "serving": ready, "terminating": terminating},
                     "targetRef": pod_reference(pod)}
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        endpoint["nodeName"] = spec["nodeName"]
    if zone:
        endpoint["zone"] = zone
    if spec.get("hostname") and spec.get("subdomain") == meta(service)["name"]:
        endpoint["hostname"] = spec["hostname"]
    return endpoint


@register("endpointslice")
class EndpointSliceController(ServicePodTracker):
    queue_name = "endpointslice"

    def __init__(self, ctx: ControllerContext, max_endpoints: int = MAX_ENDPOINTS_PER_SLICE):
        self.client = ctx.client
        self.max_endpoints = max_endpoints
        self.slices = ctx.informers.informer(SLICES, label_selector=f"{MANAGED_BY_LABEL}="
                                                                    f"{CONTROLLER_NAME}")
        self.nodes = ctx.informers.informer("v1 nodes")
        super().__init__(ctx.informers.informer("v1 services"), ctx.informers.informer("v1 pods"))
        # A slice appearing brings its service back too: one made twice by syncs that ran
        # before the cache showed the first is then deleted (upstream's slice tracker
        # resyncs on an unexpected add as well).
        self.slices.add_event_handler(
            on_add=self._slice_changed,
            on_update=lambda old, new: self._slice_changed(new),
            on_delete=lambda obj: self._slice_changed(getattr(obj, "obj", obj)))
        # Endpoints carry their node's zone: a node seen (or relabelled) after its pods
        # were put in slices brings their services back.
        self.nodes.add_event_handler(on_add=self._node_changed,
                                     on_update=lambda old, new: self._node_changed(new, old))

    def _node_changed(self, node: Obj, old: Obj | None = None) -> None:
        zone = ((meta(node).get("labels") or {}).get(ZONE_LABEL))
        if old is not None and zone == (meta(old).get("labels") or {}).get(ZONE_LABEL):
            return
        name = meta(node).get("name")
        for pod in self.pods.lister.list():
            if (pod.get("spec") or {}).get("nodeName") == name:
                self._pod_changed(pod)

    def _slice_changed(self, obj: Obj) -> None:
        service = (meta(obj).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service:
            self.queue.add(f"{meta(obj).get('namespace')}/{service}")

    def _zone(self, pod: Obj) -> str | None:
        node = self.nodes.lister.get((pod.get("spec") or {}).get("nodeName") or "")
        return ((node or {}).get("metadata") or {}).get("labels", {}).get(ZONE_LABEL)

    def desired(self, service: Obj) -> list[tuple[list[Obj], list[Obj]]]:
        """(ports, endpoints) of every slice the service should have, in a stable order."""
        groups: dict[tuple, tuple[list[Obj], list[Obj]]] = {}
        for pod in self.selected_pods(service):
            # Terminating pods stay in slices, marked terminating (upstream does too).
            if not include_in_endpoints(pod, True):
                continue
            ips = [ip for ip in pod_ips(pod) if ":" not in ip]
            if not ips:
                continue
            ports = slice_ports(service, pod)
            key = tuple((p["name"], p["port"], p["protocol"]) for p in ports)
            group = groups.setdefault(key, (ports, []))
            group[1].append(endpoint_of(service, pod, ips[0], self._zone(pod)))
        out = []
        for key in sorted(groups):
            ports, endpoints = groups[key]
            endpoints.sort(key=lambda e: (e["targetRef"]["name"], e["addresses"][0]))
            for start in range(0, len(endpoints), self.max_endpoints):
                out.append((ports, endpoints[start:start + self.max_endpoints]))
        return out

    async def sync(self, key: str) -> float | None:
        namespace, name = split_key(key)
        trigger = self.trigger_times.pop(key, None)
        service = self.services.lister.get(name, namespace)
        existing = sorted((s for s in self.slices.lister.list(namespace)
                           if (meta(s).get("labels") or {}).get(SERVICE_NAME_LABEL) == name),
                          key=lambda s: meta(s)["name"])
        spec = (service or {}).get("spec") or {}
        if service is None or not spec.get("selector") or spec.get("type") == "ExternalName":
            # Gone (the garbage collector would also take them) or not ours to fill.
            for obj in existing:
                await self._delete(obj)
            return None
        labels = {k: v for k, v in (meta(service).get("labels") or {}).items()
                  if k not in (SERVICE_NAME_LABEL, MANAGED_BY_LABEL)}
        labels.update({SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: CONTROLLER_NAME})
        if is_headless(service):
            labels[HEADLESS_LABEL] = ""
        wanted = self.desired(service)
        if not wanted:
            wanted = [([], [])]   # upstream keeps one empty slice (a placeholder)
        for i, (ports, endpoints) in enumerate(wanted):
            body: Obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                         "metadata": {"namespace": namespace, "labels": labels,
                                      "ownerReferences": [owner_reference(service)]},
                         "addressType": "IPv4", "endpoints": endpoints, "ports": ports}
            if i < len(existing):
                current = existing[i]
                if (current.get("endpoints") or []) == endpoints \
                        and (current.get("ports") or []) == ports \
                        and (meta(current).get("labels") or {}) == labels:
                    continue
                annotations = dict(meta(current).get("annotations") or {})
                if trigger:
                    annotations[TRIGGER_TIME] = trigger
                body["metadata"].update(name=meta(current)["name"], annotations=annotations,
                                        resourceVersion=meta(current)["resourceVersion"])
                await self.client.update(SLICES, body, namespace)
            else:
                body["metadata"]["generateName"] = f"{name}-"
                if trigger:
                    body["metadata"]["annotations"] = {TRIGGER_TIME: trigger}
                await self.client.create(SLICES, body, namespace)
        for obj in existing[len(wanted):]:
            await self._delete(obj)
        return None

    async def _delete(self, obj: Obj) -> None:
        try:
            await self.client.delete(SLICES, meta(obj)["name"], meta(obj)["namespace"])
        except ApiError as exc:
            if not is_not_found(exc):
                raise
