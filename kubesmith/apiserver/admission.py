"""Admission: in-process plugins that may change (admit) and then check (validate) a write.

A plugin implements either or both coroutines and raises an APIError to refuse. The
chain runs every mutating step in order, then every validating step, as upstream does.
Plugins named in --enable-admission-plugins that kubesmith does not implement yet are
reported at start and skipped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from kubesmith.api.registry import ResourceType
from kubesmith.apiserver import errors
from kubesmith.apiserver.authn import UserInfo

log = logging.getLogger(__name__)

CREATE, UPDATE, DELETE, CONNECT = "CREATE", "UPDATE", "DELETE", "CONNECT"

# Namespaces that always exist and can never be deleted.
IMMORTAL_NAMESPACES = ("default", "kube-system", "kube-public")


@dataclass
class Request:
    operation: str
    rt: ResourceType
    subresource: str
    namespace: str
    name: str
    obj: dict | None
    old: dict | None
    user: UserInfo
    dry_run: bool = False


class Plugin:
    name = ""

    async def admit(self, request: Request) -> None:
        """Mutate request.obj in place; raise APIError to refuse."""

    async def validate(self, request: Request) -> None:
        """Check the final object; raise APIError to refuse."""


NamespaceGetter = Callable[[str], Awaitable[dict | None]]


class NamespaceLifecycle(Plugin):
    """No new objects in a missing or terminating namespace; some namespaces never go."""
    name = "NamespaceLifecycle"

    def __init__(self, get_namespace: NamespaceGetter):
        self.get_namespace = get_namespace

    async def admit(self, request: Request) -> None:
        rt = request.rt
        if rt.group == "" and rt.plural == "namespaces":
            if request.operation == DELETE and request.name in IMMORTAL_NAMESPACES:
                raise errors.forbidden("namespaces", "", request.name,
                                       "this namespace may not be deleted")
            return
        if request.operation != CREATE or not rt.namespaced or not request.namespace:
            return
        if rt.create_only and rt.group == "authorization.k8s.io":
            return  # access reviews only ask questions
        namespace = await self.get_namespace(request.namespace)
        if namespace is None:
            raise errors.not_found("namespaces", "", request.namespace)
        if (namespace.get("status") or {}).get("phase") == "Terminating" or \
                (namespace.get("metadata") or {}).get("deletionTimestamp"):
            raise errors.forbidden(
                request.rt.plural, request.rt.group, request.name,
                f"unable to create new content in namespace {request.namespace} because it "
                "is being terminated")


NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"


class DefaultTolerationSeconds(Plugin):
    """Every new pod tolerates the not-ready and unreachable NoExecute taints for a
    while (300 s by default), unless it says otherwise: a node that misses a few
    heartbeats does not have its pods evicted at once."""
    name = "DefaultTolerationSeconds"

    def __init__(self, not_ready_seconds: int, unreachable_seconds: int):
        self.seconds = {NOT_READY_TAINT: not_ready_seconds,
                        UNREACHABLE_TAINT: unreachable_seconds}

    async def admit(self, request: Request) -> None:
        rt = request.rt
        if request.operation != CREATE or request.subresource or rt.group != "" or \
                rt.plural != "pods" or not isinstance(request.obj, dict):
            return
        spec = request.obj.setdefault("spec", {})
        tolerations = spec.get("tolerations") or []
        for key, seconds in self.seconds.items():
            # A toleration that already covers the NoExecute taint (by key, or an
            # empty key with Exists, for any or NoExecute effect) is left as it is.
            if any(_tolerates_no_execute(t, key) for t in tolerations):
                continue
            tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute",
                                "tolerationSeconds": seconds})
        spec["tolerations"] = tolerations


def _tolerates_no_execute(toleration: dict, key: str) -> bool:
    if toleration.get("effect") not in (None, "", "NoExecute"):
        return False
    if not toleration.get("key"):
        return toleration.get("operator") == "Exists"
    return toleration.get("key") == key


class Chain:
    def __init__(self, plugins: list[Plugin]):
        self.plugins = plugins

    async def run(self, request: Request) -> None:
        for plugin in self.plugins:
            await plugin.admit(request)
        for plugin in self.plugins:
            await plugin.validate(request)


def build(enabled: list[str], get_namespace: NamespaceGetter, server=None) -> Chain:
    available: dict[str, Callable[[], Plugin]] = {
        "NamespaceLifecycle": lambda: NamespaceLifecycle(get_namespace),
    }
    if server is not None:
        from kubesmith.apiserver.limitranger import LimitRanger
        from kubesmith.apiserver.quota import ResourceQuota
        available["LimitRanger"] = lambda: LimitRanger(server)
        available["ResourceQuota"] = lambda: ResourceQuota(server)
    if server is not None:
        from kubesmith.apiserver import noderestriction, serviceaccount
        available["ServiceAccount"] = lambda: serviceaccount.ServiceAccountAdmission(server)
        available["NodeRestriction"] = lambda: noderestriction.NodeRestriction(server)
        from kubesmith.apiserver import priority
        available["Priority"] = lambda: priority.Priority(priority.StoredPriorityClasses(server))
    if server is not None:
        options = server.options
        available["DefaultTolerationSeconds"] = lambda: DefaultTolerationSeconds(
            options.default_not_ready_toleration_seconds,
            options.default_unreachable_toleration_seconds)
    plugins, skipped = [], []
    for name in enabled:
        factory = available.get(name)
        if factory is None:
            skipped.append(name)
        else:
            plugins.append(factory())
    if skipped:
        log.warning("admission plugins not implemented yet, skipped: %s", ", ".join(skipped))
    return Chain(plugins)
