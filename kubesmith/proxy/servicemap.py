"""What kube-proxy proxies, read from Service and EndpointSlice dicts: one ServicePort per
(service, port) with a ClusterIP, and its endpoints, as upstream's service and endpoints
change trackers see them (pkg/proxy/servicechangetracker.go, endpointslicecache.go).

Only IPv4 is proxied (the cluster is single-stack IPv4). Chain names are upstream's, so
`iptables-save` on a kubesmith node reads like on any other cluster:

    KUBE-SVC-<hash>  the service port's endpoints for Cluster traffic policy
    KUBE-SVL-<hash>  its node-local endpoints (Local traffic policy)
    KUBE-EXT-<hash>  traffic to the NodePort / external IPs / load-balancer IPs
    KUBE-FW-<hash>   loadBalancerSourceRanges filtering
    KUBE-SEP-<hash>  one endpoint (DNAT)

with hash = the first 16 characters of base32(sha256(port name + protocol [+ endpoint])),
port name being "<namespace>/<service>[:<port name>]" and protocol lower case.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable

Obj = dict[str, Any]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# Upstream's kube-proxy watches only objects without these labels.
SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
HEADLESS_LABEL = "service.kubernetes.io/headless"
INFORMER_LABEL_SELECTOR = f"!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}"

DEFAULT_STICKY_SECONDS = 10800   # sessionAffinityConfig.clientIP.timeoutSeconds default


def port_proto_hash(name: str, protocol: str) -> str:
    digest = hashlib.sha256((name + protocol).encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def endpoint_chain_name(name: str, protocol: str, endpoint: str) -> str:
    digest = hashlib.sha256((name + protocol + endpoint).encode()).digest()
    return "KUBE-SEP-" + base64.b32encode(digest).decode()[:16]


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    is_local: bool = False
    chain: str = ""

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass
class ServicePort:
    namespace: str
    service: str
    port_name: str
    protocol: str            # TCP, UDP or SCTP
    cluster_ip: str
    port: int
    node_port: int = 0
    external_ips: list[str] = field(default_factory=list)
    load_balancer_ips: list[str] = field(default_factory=list)
    load_balancer_source_ranges: list[str] = field(default_factory=list)
    session_affinity_seconds: int = 0      # 0: no ClientIP affinity
    external_policy_local: bool = False
    internal_policy_local: bool = False
    health_check_node_port: int = 0
    endpoints: list[Endpoint] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Upstream's ServicePortName string: "<namespace>/<service>[:<port name>]"."""
        base = f"{self.namespace}/{self.service}"
        return f"{base}:{self.port_name}" if self.port_name else base

    @property
    def proto(self) -> str:
        return self.protocol.lower()

    def _chain(self, prefix: str) -> str:
        return prefix + port_proto_hash(self.name, self.proto)

    @property
    def cluster_chain(self) -> str:
        return self._chain("KUBE-SVC-")

    @property
    def local_chain(self) -> str:
        return self._chain("KUBE-SVL-")

    @property
    def external_chain(self) -> str:
        return self._chain("KUBE-EXT-")

    @property
    def firewall_chain(self) -> str:
        return self._chain("KUBE-FW-")

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)

    def uses_cluster_endpoints(self) -> bool:
        # External traffic with Local policy still needs them for the short-circuit of
        # traffic from pods and from the node itself.
        return not self.internal_policy_local or self.externally_accessible

    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or (self.external_policy_local
                                              and self.externally_accessible)


@dataclass
class Categorized:
    cluster: list[Endpoint]
    local: list[Endpoint]
    reachable: list[Endpoint]       # every endpoint some rule sends traffic to
    has_any: bool                   # usable endpoints anywhere in the cluster


def categorize(svc: ServicePort) -> Categorized:
    """Upstream's CategorizeEndpoints (without topology hints): ready endpoints, or
    when none is ready, the serving and terminating ones."""
    endpoints = svc.endpoints
    cluster: list[Endpoint] = []
    local: list[Endpoint] = []
    has_any = False
    if svc.uses_cluster_endpoints():
        cluster = [ep for ep in endpoints if ep.ready]
        if not cluster:
            cluster = [ep for ep in endpoints if ep.serving and ep.terminating]
        has_any = bool(cluster)
    if not svc.uses_local_endpoints():
        return Categorized(cluster, [], cluster, has_any)
    local_ready = local_terminating = False
    for ep in endpoints:
        if ep.ready:
            has_any = True
            local_ready = local_ready or ep.is_local
        elif ep.serving and ep.terminating:
            has_any = True
            local_terminating = local_terminating or ep.is_local
    if local_ready:
        local = [ep for ep in endpoints if ep.is_local and ep.ready]
    elif local_terminating:
        local = [ep for ep in endpoints if ep.is_local and ep.serving and ep.terminating]
    if not svc.uses_cluster_endpoints():
        return Categorized([], local, local, has_any)
    seen = {str(ep) for ep in cluster}
    reachable = cluster + [ep for ep in local if str(ep) not in seen]
    return Categorized(cluster, local, reachable, has_any)


# --- from API objects -----------------------------------------------------------------

def _ipv4(value: Any) -> str | None:
    try:
        address = ipaddress.ip_address(str(value))
    except ValueError:
        return None
    return str(address) if address.version == 4 else None


def service_ports(service: Obj) -> list[ServicePort]:
    """The proxied ports of one Service: none for headless, ExternalName or IP-less ones."""
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return []
    cluster_ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
    cluster_ip = next((ip for ip in map(_ipv4, cluster_ips) if ip), None)
    if not cluster_ip:
        return []      # "None" (headless), empty, or IPv6 only
    svc_type = spec.get("type") or "ClusterIP"
    externally = svc_type in ("NodePort", "LoadBalancer") or bool(spec.get("externalIPs"))
    affinity = 0
    if spec.get("sessionAffinity") == "ClientIP":
        affinity = int((((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {})
                        .get("timeoutSeconds")) or DEFAULT_STICKY_SECONDS)
    lb_ips = [ip for ip in (_ipv4(i.get("ip")) for i in
                            ((service.get("status") or {}).get("loadBalancer") or {})
                            .get("ingress") or [] if isinstance(i, dict)) if ip]
    ports = []
    for port in spec.get("ports") or []:
        ports.append(ServicePort(
            namespace=meta.get("namespace") or "default", service=meta.get("name", ""),
            port_name=port.get("name") or "", protocol=port.get("protocol") or "TCP",
            cluster_ip=cluster_ip, port=int(port.get("port") or 0),
            node_port=int(port.get("nodePort") or 0) if svc_type != "ClusterIP" else 0,
            external_ips=[ip for ip in map(_ipv4, spec.get("externalIPs") or []) if ip],
            load_balancer_ips=lb_ips if svc_type == "LoadBalancer" else [],
            load_balancer_source_ranges=list(spec.get("loadBalancerSourceRanges") or []),
            session_affinity_seconds=affinity,
            external_policy_local=externally
            and spec.get("externalTrafficPolicy") == "Local",
            internal_policy_local=spec.get("internalTrafficPolicy") == "Local",
            health_check_node_port=int(spec.get("healthCheckNodePort") or 0)))
    return ports


PortKey = tuple[str, str, str, str]       # namespace, service, port name, protocol


def endpoints_by_port(slices: Iterable[Obj], node_name: str) -> dict[PortKey, list[Endpoint]]:
    """Endpoints of every service port, merged over the service's IPv4 slices.

    An address in several slices counts once, ready if any slice says so (as
    upstream's endpointSliceCache). Endpoints come sorted by address."""
    merged: dict[PortKey, dict[str, Endpoint]] = {}
    for eps in slices:
        meta = eps.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not service or eps.get("addressType", "IPv4") != "IPv4":
            continue
        namespace = meta.get("namespace") or "default"
        for port in eps.get("ports") or []:
            number = port.get("port")
            if not number:
                continue
            key = (namespace, service, port.get("name") or "", port.get("protocol") or "TCP")
            name = f"{namespace}/{service}" + (f":{key[2]}" if key[2] else "")
            bucket = merged.setdefault(key, {})
            for endpoint in eps.get("endpoints") or []:
                addresses = endpoint.get("addresses") or []
                ip = _ipv4(addresses[0]) if addresses else None
                if not ip:
                    continue
                conditions = endpoint.get("conditions") or {}
                ready = conditions.get("ready") is not False
                serving = conditions.get("serving")
                serving = ready if serving is None else bool(serving)
                endpoint_name = f"{ip}:{number}"
                old = bucket.get(endpoint_name)
                if old is not None and old.ready and not ready:
                    continue
                node = endpoint.get("nodeName") or ""
                bucket[endpoint_name] = Endpoint(
                    ip=ip, port=int(number), ready=ready, serving=serving,
                    terminating=bool(conditions.get("terminating")), node_name=node,
                    is_local=bool(node) and node == node_name,
                    chain=endpoint_chain_name(name, key[3].lower(), endpoint_name))
    return {key: sorted(bucket.values(), key=lambda ep: (ipaddress.ip_address(ep.ip), ep.port))
            for key, bucket in merged.items()}


def build(services: Iterable[Obj], slices: Iterable[Obj], node_name: str) -> list[ServicePort]:
    """Every proxied service port with its endpoints, sorted by name (so that the same
    cluster state always gives the same rules)."""
    endpoints = endpoints_by_port(slices, node_name)
    result = []
    for service in services:
        labels = (service.get("metadata") or {}).get("labels") or {}
        if SERVICE_PROXY_NAME_LABEL in labels:
            continue
        for svc in service_ports(service):
            svc.endpoints = endpoints.get((svc.namespace, svc.service, svc.port_name,
                                           svc.protocol), [])
            result.append(svc)
    result.sort(key=lambda svc: (svc.name, svc.proto))
    return result
