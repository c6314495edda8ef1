"""Authorization: a chain of authorizers, each allowing, denying or having no opinion.

The first Allow or Deny decides; when every authorizer abstains the request is denied.
Members of system:masters are always allowed (ahead of --authorization-mode), as upstream.
RBAC evaluates the roles and bindings held by the watch cache, so every request is
answered from memory.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from kubesmith.apiserver.authn import MASTERS, UserInfo

RBAC_GROUP = "rbac.authorization.k8s.io"


class Decision(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    NO_OPINION = "no-opinion"


@dataclass(frozen=True)
class Attributes:
    user: UserInfo
    verb: str
    is_resource: bool
    namespace: str = ""
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    path: str = ""

    @property
    def combined_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


class Authorizer(Protocol):
    def authorize(self, attrs: Attributes) -> tuple[Decision, str]: ...


def forbidden_reason(attrs: Attributes) -> str:
    """Upstream's wording of a denial (the part after "... is forbidden: ")."""
    user = attrs.user.name
    if not attrs.is_resource:
        return f'User "{user}" cannot {attrs.verb} path "{attrs.path}"'
    resource = attrs.combined_resource
    if attrs.namespace:
        return (f'User "{user}" cannot {attrs.verb} resource "{resource}" in API group '
                f'"{attrs.group}" in the namespace "{attrs.namespace}"')
    return (f'User "{user}" cannot {attrs.verb} resource "{resource}" in API group '
            f'"{attrs.group}" at the cluster scope')


class Chain:
    def __init__(self, authorizers: list[Authorizer]):
        self.authorizers = authorizers

    def authorize(self, attrs: Attributes) -> tuple[Decision, str]:
        reasons = []
        for authorizer in self.authorizers:
            decision, reason = authorizer.authorize(attrs)
            if decision is not Decision.NO_OPINION:
                return decision, reason
            if reason:
                reasons.append(reason)
        return Decision.DENY, "; ".join(reasons)


class PrivilegedGroups:
    def __init__(self, groups: tuple[str, ...] = (MASTERS,)):
        self.groups = groups

    def authorize(self, attrs: Attributes) -> tuple[Decision, str]:
        if any(g in self.groups for g in attrs.user.groups):
            return Decision.ALLOW, ""
        return Decision.NO_OPINION, ""


class AlwaysAllow:
    def authorize(self, attrs: Attributes) -> tuple[Decision, str]:
        return Decision.ALLOW, ""


class AlwaysDeny:
    def authorize(self, attrs: Attributes) -> tuple[Decision, str]:
        return Decision.DENY, "Everything is forbidden."


# --- RBAC rule matching ----------------------------------------------------------------

def _has(values, wanted: str) -> bool:
    return bool(values) and ("*" in values or wanted in values)


def rule_allows(rule: dict, attrs: Attributes) -> bool:
    if not _has(rule.get("verbs"), attrs.verb):
        return False
    if not attrs.is_resource:
        for url in rule.get("nonResourceURLs") or ():
            if url == "*" or url == attrs.path or (
                    url.endswith("*") and attrs.path.startswith(url[:-1])):
                return True
        return False
    if not _has(rule.get("apiGroups"), attrs.group):
        return False
    combined = attrs.combined_resource
    matched = False
    for resource in rule.get("resources") or ():
        if resource == "*" or resource == combined or (
                attrs.subresource and resource == f"*/{attrs.subresource}"):
            matched = True
            break
    if not matched:
        return False
    names = rule.get("resourceNames")
    return not names or attrs.name in names


def subject_matches(subject: dict, user: UserInfo, binding_namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return name == user.name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return bool(namespace) and user.name == f"system:serviceaccount:{namespace}:{name}"
    return False


class RBACSource(Protocol):
    """Read access to the stored RBAC objects (the watch cache implements it)."""

    def cluster_roles(self) -> dict[str, dict]: ...
    def cluster_role_bindings(self) -> list[dict]: ...
    def roles(self, namespace: str) -> dict[str, dict]: ...
    def role_bindings(self, namespace: str) -> list[dict]: ...
    def generation(self) -> tuple: ...


class RBAC:
    def __init__(self, source: RBACSource):
        self.source = source
        self._memo: dict[tuple, list[dict]] = {}
        self._memo_generation: tuple | None = None

    def rules_for(self, user: UserInfo, namespace: str) -> list[dict]:
        """Every rule granted to the user, cluster-wide and in the namespace (memoized
        until an RBAC object changes)."""
        generation = self.source.generation()
        if generation != self._memo_generation:
            self._memo.clear()
            self._memo_generation = generation
        key = (user.name, user.groups, namespace)
        rules = self._memo.get(key)
        if rules is None:
            rules = self._collect(user, namespace)
            if len(self._memo) > 4096:
                self._memo.clear()
            self._memo[key] = rules
        return rules

    def _collect(self, user: UserInfo, namespace: str) -> list[dict]:
        rules: list[dict] = []
        cluster_roles = self.source.cluster_roles()
        for binding in self.source.cluster_role_bindings():
            if not any(subject_matches(s, user, "") for s in binding.get("subjects") or ()):
                continue
            ref = binding.get("roleRef") or {}
            if ref.get("kind") == "ClusterRole":
                role = cluster_roles.get(ref.get("name", ""))
                if role:
                    rules.extend(r for r in role.get("rules") or () if isinstance(r, dict))
        if namespace:
            roles = None
            for binding in self.source.role_bindings(namespace):
                if not any(subject_matches(s, user, namespace)
                           for s in binding.get("subjects") or ()):
                    continue
                ref = binding.get("roleRef") or {}
                if ref.get("kind") == "ClusterRole":
                    role = cluster_roles.get(ref.get("name", ""))
                elif ref.get("kind") == "Role":
                    if roles is None:
                        roles = self.source.roles(namespace)
                    role = roles.get(ref.get("name", ""))
                else:
                    role = None
                if role:
                    # Resource rules only: a RoleBinding never grants non-resource URLs.
                    rules.extend(r for r in role.get("rules") or ()
                                 if isinstance(r, dict) and not r.get("nonResourceURLs"))
        return rules

    def authorize(self, attrs: Attributes) -> tuple[Decision, str]:
        namespace = attrs.namespace if attrs.is_resource else ""
        for rule in self.rules_for(attrs.user, namespace):
            if rule_allows(rule, attrs):
                return Decision.ALLOW, ""
        return Decision.NO_OPINION, ""


# --- Node ------------------------------------------------------------------------------

NODES_GROUP = "system:nodes"
NODE_PREFIX = "system:node:"
NODE_LEASE_NAMESPACE = "kube-node-lease"


def node_name(user: UserInfo) -> str | None:
    """The node a user is (system:node:<name> in system:nodes), else None."""
    if NODES_GROUP not in user.groups or not user.name.startswith(NODE_PREFIX):
        return None
    return user.name[len(NODE_PREFIX):]


class NodeGraph(Protocol):
    """What the Node authorizer asks of the graph (nodegraph.CachedGraph)."""

    @property
    def ready(self) -> bool: ...

    def has_path(self, node: str, kind: str, namespace: str, name: str) -> bool: ...


class Node:
    """Upstream's Node authorizer: a node (system:node:<name> in system:nodes) reads only
    the secrets, config maps, volumes and claims its pods use and asks tokens only for
    their service accounts (the graph), reaches only its own Lease and CSINode, and gets
    the static system:node rules for everything else. Whether a write touches the node's
    own Node or pods is NodeRestriction's check (admission), as upstream splits it."""

    def __init__(self, node_rules: list[dict], graph: NodeGraph | None = None):
        self.node_rules = node_rules
        self.graph = graph

    def authorize(self, attrs: Attributes) -> tuple[Decision, str]:
        node = node_name(attrs.user)
        if node is None:
            return Decision.NO_OPINION, ""
        if not node:
            return Decision.NO_OPINION, "unknown node"
        if attrs.is_resource:
            key = (attrs.group, attrs.resource)
            if key == ("", "secrets"):
                return self._read_namespaced(node, "secret", attrs)
            if key == ("", "configmaps"):
                return self._read_namespaced(node, "configmap", attrs)
            if key == ("", "persistentvolumeclaims"):
                if attrs.subresource == "status":
                    if attrs.verb not in ("update", "patch"):
                        return Decision.NO_OPINION, "can only update or patch status"
                    return self._related(node, "pvc", attrs)
                return self._get(node, "pvc", attrs)
            if key == ("", "persistentvolumes"):
                return self._get(node, "pv", attrs)
            if key == ("resource.k8s.io", "resourceclaims"):
                return self._get(node, "resourceclaim", attrs)
            if key == ("", "serviceaccounts"):
                return self._service_account(node, attrs)
            if key == ("coordination.k8s.io", "leases"):
                return self._lease(node, attrs)
            if key == ("storage.k8s.io", "csinodes"):
                return self._csinode(node, attrs)
        if any(rule_allows(r, attrs) for r in self.node_rules):
            return Decision.ALLOW, ""
        return Decision.NO_OPINION, ""

    def _related(self, node: str, kind: str, attrs: Attributes) -> tuple[Decision, str]:
        if not attrs.name:
            return Decision.NO_OPINION, "No Object name found"
        if self.graph is not None and self.graph.ready and \
                self.graph.has_path(node, kind, attrs.namespace, attrs.name):
            return Decision.ALLOW, ""
        return Decision.NO_OPINION, (f"no relationship found between node '{node}' and this "
                                     "object")

    def _read_namespaced(self, node: str, kind: str, attrs: Attributes
                         ) -> tuple[Decision, str]:
        if attrs.verb not in ("get", "list", "watch"):
            return Decision.NO_OPINION, "can only read resources of this type"
        if attrs.subresource:
            return Decision.NO_OPINION, "cannot read subresource"
        if not attrs.namespace:
            return Decision.NO_OPINION, "can only read namespaced object of this type"
        # list and watch only of one named object (fieldSelector metadata.name=...).
        return self._related(node, kind, attrs)

    def _get(self, node: str, kind: str, attrs: Attributes) -> tuple[Decision, str]:
        if attrs.verb != "get":
            return Decision.NO_OPINION, "can only get individual resources of this type"
        if attrs.subresource:
            return Decision.NO_OPINION, "cannot get subresource"
        return self._related(node, kind, attrs)

    def _service_account(self, node: str, attrs: Attributes) -> tuple[Decision, str]:
        if attrs.subresource == "token":
            if attrs.verb != "create" or not attrs.name:
                return Decision.NO_OPINION, ("can only create tokens for individual service "
                                             "accounts")
            return self._related(node, "serviceaccount", attrs)
        if attrs.verb == "get" and not attrs.subresource:
            return self._related(node, "serviceaccount", attrs)
        return Decision.NO_OPINION, "can only create token subresource of serviceaccount"

    @staticmethod
    def _lease(node: str, attrs: Attributes) -> tuple[Decision, str]:
        if attrs.verb not in ("get", "create", "update", "patch", "delete"):
            return Decision.NO_OPINION, ("can only get, create, update, patch, or delete a "
                                         "node lease")
        if attrs.namespace != NODE_LEASE_NAMESPACE:
            return Decision.NO_OPINION, (f'can only access leases in the '
                                         f'"{NODE_LEASE_NAMESPACE}" system namespace')
        # A create names no object here; NodeRestriction checks the name it carries.
        if attrs.verb != "create" and attrs.name != node:
            return Decision.NO_OPINION, ("can only access node lease with the same name as "
                                         "the requesting node")
        return Decision.ALLOW, ""

    @staticmethod
    def _csinode(node: str, attrs: Attributes) -> tuple[Decision, str]:
        if attrs.verb not in ("get", "create", "update", "patch", "delete"):
            return Decision.NO_OPINION, ("can only get, create, update, patch, or delete a "
                                         "CSINode")
        if attrs.subresource:
            return Decision.NO_OPINION, "cannot authorize CSINode subresources"
        if attrs.verb != "create" and attrs.name != node:
            return Decision.NO_OPINION, ("can only access CSINode with the same name as the "
                                         "requesting node")
        return Decision.ALLOW, ""
