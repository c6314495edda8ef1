"""What the API server creates at startup when it is absent: the system namespaces, the
default RBAC policy, the system priority classes, and the `kubernetes` Service in default
(with its Endpoints).

Objects are created when absent and never overwritten. Default roles and bindings that
still carry rbac.authorization.kubernetes.io/autoupdate "true" are reconciled as
upstream does at every start: rules and subjects a newer policy adds are added, nothing
an operator added is taken away; setting the annotation to "false" stops it.
"""
from __future__ import annotations

import copy
import ipaddress
import logging
from typing import TYPE_CHECKING

from kubesmith.api.kinds.scheduling import SYSTEM_PRIORITY_CLASSES
from kubesmith.api.registry import REGISTRY
from kubesmith.apiserver import bootstrap_policy, errors, rest

if TYPE_CHECKING:
    from kubesmith.apiserver.server import APIServer

log = logging.getLogger(__name__)

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
RBAC = "rbac.authorization.k8s.io"


async def ensure(srv: "APIServer", group: str, plural: str, obj: dict) -> bool:
    """Create obj unless an object of that name exists; True when created."""
    rt = REGISTRY.get(group, "v1", plural)
    if rt is None:
        log.warning("bootstrap: %s.%s is not a registered kind; skipped", plural, group)
        return False
    meta = obj.get("metadata") or {}
    target = rest.Target(rt, srv.storage.for_type(rt), meta.get("namespace", "") or "",
                         meta["name"], "")
    if await srv.store.get(target.key) is not None:
        return False
    try:
        await rest.create_object(srv, None, target, copy.deepcopy(obj), False,
                                 run_admission=False)
    except errors.APIError as exc:
        if exc.code == 409:
            return False
        raise
    log.info("bootstrap: created %s %s", rt.kind, "/".join(
        p for p in (meta.get("namespace"), meta["name"]) if p))
    return True


async def namespaces(srv: "APIServer") -> None:
    for name in SYSTEM_NAMESPACES:
        await ensure(srv, "", "namespaces",
                     {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


async def rbac(srv: "APIServer") -> None:
    for plural, objects in (("clusterroles", bootstrap_policy.cluster_roles()),
                            ("clusterrolebindings", bootstrap_policy.cluster_role_bindings()),
                            ("roles", bootstrap_policy.roles()),
                            ("rolebindings", bootstrap_policy.role_bindings())):
        for obj in objects:
            if not await ensure(srv, RBAC, plural, obj):
                await _reconcile(srv, plural, obj)


async def priority_classes(srv: "APIServer") -> None:
    """system-node-critical and system-cluster-critical, which system pods name; upstream
    creates them at every start, so one removed by hand in etcd comes back."""
    for obj in SYSTEM_PRIORITY_CLASSES.values():
        await ensure(srv, "scheduling.k8s.io", "priorityclasses", obj)


AUTOUPDATE = "rbac.authorization.kubernetes.io/autoupdate"


async def _reconcile(srv: "APIServer", plural: str, wanted: dict) -> None:
    """Add the policy's missing rules (roles) or subjects (bindings) to a stored default
    object that still allows it."""
    rt = REGISTRY.get(RBAC, "v1", plural)
    meta = wanted["metadata"]
    target = rest.Target(rt, srv.storage.for_type(rt), meta.get("namespace", "") or "",
                         meta["name"], "")
    field = "subjects" if plural.endswith("bindings") else "rules"
    changed: list[bool] = []

    def merge(current: dict) -> dict:
        changed.clear()
        annotations = (current.get("metadata") or {}).get("annotations") or {}
        if annotations.get(AUTOUPDATE, "true") != "true":
            return current
        have = current.get(field) or []
        missing = [item for item in wanted.get(field) or [] if item not in have]
        if missing:
            current[field] = have + missing
            changed.append(True)
        return current

    try:
        await rest.update_object(srv, None, target, merge, False, manage_fields=False)
    except errors.APIError as exc:
        log.warning("bootstrap: could not reconcile %s %s: %s", plural, meta["name"], exc)
        return
    if changed:
        log.info("bootstrap: reconciled %s %s (added %s)", plural, meta["name"], field)


def first_service_ip(ranges) -> str | None:
    """The first usable address of the (primary) service range: the kubernetes Service."""
    if not ranges:
        return None
    network = ranges[0]
    if network.num_addresses < 2:
        return None
    return str(network.network_address + 1)


async def kubernetes_service(srv: "APIServer") -> None:
    """The in-cluster name of the API (kubernetes.default.svc).

    The IP is fixed (the range's first address), so no allocator is needed for it; the
    Service IP allocator arrives with the services work and must treat it as taken.
    """
    options = srv.options
    ip = first_service_ip(options.service_cluster_ip_range)
    if ip is None:
        return
    family = "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"
    await ensure(srv, "", "services", {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                 "ipFamilies": [family], "ipFamilyPolicy": "SingleStack",
                 "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                            "targetPort": options.secure_port}]},
    })
    address = options.advertise_address
    if not address or address in ("0.0.0.0", "::"):
        return
    await ensure(srv, "", "endpoints", {
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": address}],
                     "ports": [{"name": "https", "port": options.secure_port,
                                "protocol": "TCP"}]}],
    })
    # Several masters: each adds its own address (upstream's lease reconciler also removes
    # addresses of API servers that stopped; that comes with the controller work).
    endpoints = REGISTRY.get("", "v1", "endpoints")
    if endpoints is None:
        return
    target = rest.Target(endpoints, srv.storage.for_type(endpoints), "default", "kubernetes", "")

    def add_self(current: dict) -> dict:
        subsets = current.get("subsets") or []
        if not subsets:
            subsets = [{"addresses": [], "ports": [{"name": "https", "port": options.secure_port,
                                                    "protocol": "TCP"}]}]
        addresses = subsets[0].setdefault("addresses", [])
        if not any(a.get("ip") == address for a in addresses):
            addresses.append({"ip": address})
            addresses.sort(key=lambda a: a.get("ip", ""))
        current["subsets"] = subsets
        current["metadata"].pop("resourceVersion", None)
        return current

    await rest.update_object(srv, None, target, add_self, False)
