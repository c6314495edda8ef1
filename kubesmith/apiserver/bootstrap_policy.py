"""The default RBAC policy the API server creates at startup (when absent), as upstream's.

Roles carry upstream's bootstrapping label and autoupdate annotation. admin, edit and
view are aggregated roles: their rules are the union of the system:aggregate-to-* roles,
filled in here (later the aggregation controller keeps them up to date).
"""
from __future__ import annotations

RBAC = "rbac.authorization.k8s.io"
READ = ["get", "list", "watch"]
WRITE = ["create", "delete", "deletecollection", "patch", "update"]
EVENT_WRITE = ["create", "patch", "update"]
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def rule(verbs, groups=None, resources=None, names=None, urls=None) -> dict:
    out: dict = {"verbs": list(verbs)}
    if urls is not None:
        out["nonResourceURLs"] = list(urls)
        return out
    out["apiGroups"] = list(groups if groups is not None else [""])
    out["resources"] = list(resources or [])
    if names:
        out["resourceNames"] = list(names)
    return out


def _events() -> list[dict]:
    return [rule(EVENT_WRITE, ["", "events.k8s.io"], ["events"])]


_VIEW = [
    rule(READ, [""], ["configmaps", "endpoints", "persistentvolumeclaims",
                      "persistentvolumeclaims/status", "pods", "replicationcontrollers",
                      "replicationcontrollers/scale", "serviceaccounts", "services",
                      "services/status"]),
    rule(READ, [""], ["bindings", "events", "limitranges", "namespaces/status", "pods/log",
                      "pods/status", "replicationcontrollers/status", "resourcequotas",
                      "resourcequotas/status"]),
    rule(READ, [""], ["namespaces"]),
    rule(READ, ["discovery.k8s.io"], ["endpointslices"]),
    rule(READ, ["apps"], ["controllerrevisions", "daemonsets", "daemonsets/status",
                          "deployments", "deployments/scale", "deployments/status",
                          "replicasets", "replicasets/scale", "replicasets/status",
                          "statefulsets", "statefulsets/scale", "statefulsets/status"]),
    rule(READ, ["autoscaling"], ["horizontalpodautoscalers", "horizontalpodautoscalers/status"]),
    rule(READ, ["batch"], ["cronjobs", "cronjobs/status", "jobs", "jobs/status"]),
    rule(READ, ["extensions"], ["daemonsets", "daemonsets/status", "deployments",
                                "deployments/scale", "deployments/status", "ingresses",
                                "ingresses/status", "networkpolicies", "replicasets",
                                "replicasets/scale", "replicasets/status",
                                "replicationcontrollers/scale"]),
    rule(READ, ["policy"], ["poddisruptionbudgets", "poddisruptionbudgets/status"]),
    rule(READ, ["networking.k8s.io"], ["ingresses", "ingresses/status", "networkpolicies"]),
]

_EDIT = [
    rule(["create", "delete", "deletecollection", "patch", "update"], [""],
         ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"]),
    rule(["create"], [""], ["pods/eviction"]),
    rule(WRITE, [""], ["configmaps", "events", "persistentvolumeclaims", "replicationcontrollers",
                       "replicationcontrollers/scale", "secrets", "serviceaccounts", "services",
                       "services/proxy"]),
    rule(["create"], [""], ["serviceaccounts/token"]),
    rule(WRITE, ["apps"], ["daemonsets", "deployments", "deployments/rollback",
                           "deployments/scale", "replicasets", "replicasets/scale",
                           "statefulsets", "statefulsets/scale"]),
    rule(WRITE, ["autoscaling"], ["horizontalpodautoscalers"]),
    rule(WRITE, ["batch"], ["cronjobs", "jobs"]),
    rule(WRITE, ["extensions"], ["daemonsets", "deployments", "deployments/rollback",
                                 "deployments/scale", "ingresses", "networkpolicies",
                                 "replicasets", "replicasets/scale",
                                 "replicationcontrollers/scale"]),
    rule(WRITE, ["policy"], ["poddisruptionbudgets"]),
    rule(WRITE, ["networking.k8s.io"], ["ingresses", "networkpolicies"]),
    rule(READ + WRITE, ["coordination.k8s.io"], ["leases"]),
    rule(READ, [""], ["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets",
                      "services/proxy"]),
    rule(["impersonate"], [""], ["serviceaccounts"]),
]

_ADMIN = [
    rule(["create"], ["authorization.k8s.io"], ["localsubjectaccessreviews"]),
    rule(WRITE + READ, [RBAC], ["rolebindings", "roles"]),
]

_DISCOVERY_URLS = ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi",
                   "/openapi/*", "/readyz", "/version", "/version/"]
_PUBLIC_URLS = ["/healthz", "/livez", "/readyz", "/version", "/version/"]

_SCHEDULER = _events() + [
    rule(["create"], ["coordination.k8s.io"], ["leases"]),
    rule(["get", "update"], ["coordination.k8s.io"], ["leases"], ["kube-scheduler"]),
    rule(["create"], [""], ["endpoints"]),
    rule(["get", "update"], [""], ["endpoints"], ["kube-scheduler"]),
    rule(READ, [""], ["nodes"]),
    rule(["delete", "get", "list", "watch"], [""], ["pods"]),
    rule(["create"], [""], ["bindings", "pods/binding"]),
    rule(["patch", "update"], [""], ["pods/status"]),
    rule(READ, [""], ["replicationcontrollers", "services"]),
    rule(READ, ["apps", "extensions"], ["replicasets"]),
    rule(READ, ["apps"], ["statefulsets"]),
    rule(READ, ["policy"], ["poddisruptionbudgets"]),
    rule(READ, [""], ["persistentvolumeclaims", "persistentvolumes"]),
    rule(["create"], ["authentication.k8s.io"], ["tokenreviews"]),
    rule(["create"], ["authorization.k8s.io"], ["subjectaccessreviews"]),
    rule(READ, ["storage.k8s.io"], ["csinodes"]),
    rule(READ, [""], ["namespaces"]),
    rule(READ, ["storage.k8s.io"], ["csidrivers"]),
    rule(READ, ["storage.k8s.io"], ["csistoragecapacities"]),
]

_CONTROLLER_MANAGER = _events() + [
    rule(["create"], ["coordination.k8s.io"], ["leases"]),
    rule(["get", "update"], ["coordination.k8s.io"], ["leases"], ["kube-controller-manager"]),
    rule(["create"], [""], ["endpoints"]),
    rule(["get", "update"], [""], ["endpoints"], ["kube-controller-manager"]),
    rule(["create"], [""], ["secrets", "serviceaccounts"]),
    rule(["delete"], [""], ["secrets"]),
    rule(["get"], [""], ["configmaps", "namespaces", "secrets", "serviceaccounts"]),
    rule(["update"], [""], ["secrets", "serviceaccounts"]),
    rule(["create"], ["authentication.k8s.io"], ["tokenreviews"]),
    rule(["create"], ["authorization.k8s.io"], ["subjectaccessreviews"]),
    rule(["list", "watch"], ["*"], ["*"]),
    rule(["create"], [""], ["serviceaccounts/token"]),
]

_NODE = [
    rule(["create"], ["authentication.k8s.io"], ["tokenreviews"]),
    rule(["create"], ["authorization.k8s.io"], ["localsubjectaccessreviews",
                                                "subjectaccessreviews"]),
    rule(READ, [""], ["services"]),
    rule(["create", "get", "list", "watch"], [""], ["nodes"]),
    rule(["patch", "update"], [""], ["nodes/status"]),
    rule(["patch", "update"], [""], ["nodes"]),
    *_events(),
    rule(READ, [""], ["pods"]),
    rule(["create", "delete"], [""], ["pods"]),
    rule(["patch", "update"], [""], ["pods/status"]),
    rule(["create"], [""], ["pods/eviction"]),
    rule(READ, [""], ["configmaps", "secrets"]),
    rule(["get"], [""], ["persistentvolumeclaims", "persistentvolumes"]),
    rule(["get"], [""], ["endpoints"]),
    rule(["create", "get", "list", "watch"], ["certificates.k8s.io"],
         ["certificatesigningrequests"]),
    rule(["create", "delete", "get", "patch", "update"], ["coordination.k8s.io"], ["leases"]),
    rule(["get"], ["storage.k8s.io"], ["volumeattachments"]),
    rule(["create"], [""], ["serviceaccounts/token"]),
    rule(["get", "patch", "update"], [""], ["persistentvolumeclaims/status"]),
    rule(READ, ["storage.k8s.io"], ["csidrivers"]),
    rule(["create", "delete", "get", "patch", "update"], ["storage.k8s.io"], ["csinodes"]),
    rule(READ, ["node.k8s.io"], ["runtimeclasses"]),
]

_NODE_PROXIER = [
    rule(["list", "watch"], [""], ["endpoints", "services"]),
    rule(READ, [""], ["nodes"]),
    *_events(),
    rule(["list", "watch"], ["discovery.k8s.io"], ["endpointslices"]),
]


def node_rules() -> list[dict]:
    """The system:node rules (the Node authorizer grants them to every node)."""
    return [dict(r) for r in _NODE]


def _meta(name: str, labels: dict | None = None, namespace: str | None = None) -> dict:
    meta = {"name": name,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults", **(labels or {})},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def _cluster_role(name: str, rules: list[dict], labels: dict | None = None,
                  aggregate: str | None = None) -> dict:
    role = {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRole",
            "metadata": _meta(name, labels), "rules": rules}
    if aggregate:
        role["aggregationRule"] = {"clusterRoleSelectors": [
            {"matchLabels": {AGGREGATE + aggregate: "true"}}]}
    return role


def _subject(kind: str, name: str, namespace: str | None = None) -> dict:
    if kind == "ServiceAccount":
        return {"kind": kind, "name": name, "namespace": namespace}
    return {"kind": kind, "apiGroup": RBAC, "name": name}


def _binding(name: str, role: str, subjects: list[dict], namespace: str | None = None,
             role_kind: str = "ClusterRole", labels: bool = True) -> dict:
    kind = "RoleBinding" if namespace else "ClusterRoleBinding"
    meta = _meta(name, namespace=namespace) if labels else {"name": name}
    return {"apiVersion": f"{RBAC}/v1", "kind": kind, "metadata": meta,
            "roleRef": {"apiGroup": RBAC, "kind": role_kind, "name": role},
            "subjects": subjects}


def cluster_roles() -> list[dict]:
    view = _VIEW
    edit = _EDIT + view
    admin = _ADMIN + edit
    return [
        _cluster_role("cluster-admin", [rule(["*"], ["*"], ["*"]), rule(["*"], urls=["*"])]),
        _cluster_role("admin", admin, aggregate="admin"),
        _cluster_role("edit", edit, {AGGREGATE + "admin": "true"}, aggregate="edit"),
        _cluster_role("view", view, {AGGREGATE + "edit": "true"}, aggregate="view"),
        _cluster_role("system:aggregate-to-admin", _ADMIN, {AGGREGATE + "admin": "true"}),
        _cluster_role("system:aggregate-to-edit", _EDIT,
                      {AGGREGATE + "admin": "true", AGGREGATE + "edit": "true"}),
        _cluster_role("system:aggregate-to-view", _VIEW,
                      {AGGREGATE + "admin": "true", AGGREGATE + "edit": "true",
                       AGGREGATE + "view": "true"}),
        _cluster_role("system:discovery", [rule(["get"], urls=_DISCOVERY_URLS)]),
        _cluster_role("system:basic-user", [
            rule(["create"], ["authorization.k8s.io"],
                 ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
            rule(["create"], ["authentication.k8s.io"], ["selfsubjectreviews"])]),
        _cluster_role("system:public-info-viewer", [rule(["get"], urls=_PUBLIC_URLS)]),
        _cluster_role("system:monitoring", [
            rule(["get"], urls=["/healthz", "/healthz/*", "/livez", "/livez/*", "/metrics",
                                "/metrics/slis", "/readyz", "/readyz/*"])]),
        _cluster_role("system:auth-delegator", [
            rule(["create"], ["authentication.k8s.io"], ["tokenreviews"]),
            rule(["create"], ["authorization.k8s.io"], ["subjectaccessreviews"])]),
        _cluster_role("system:kube-scheduler", _SCHEDULER),
        _cluster_role("system:volume-scheduler", [
            rule(["get", "list", "patch", "update", "watch"], [""], ["persistentvolumes"]),
            rule(READ, ["storage.k8s.io"], ["storageclasses"]),
            rule(["get", "list", "patch", "update", "watch"], [""],
                 ["persistentvolumeclaims"])]),
        _cluster_role("system:kube-controller-manager", _CONTROLLER_MANAGER),
        _cluster_role("system:node", _NODE),
        _cluster_role("system:node-proxier", _NODE_PROXIER),
        _cluster_role("system:kube-dns", [rule(["list", "watch"], [""],
                                               ["endpoints", "services"])]),
        _cluster_role("system:node-bootstrapper", [
            rule(["create", "get", "list", "watch"], ["certificates.k8s.io"],
                 ["certificatesigningrequests"])]),
        _cluster_role("system:certificates.k8s.io:certificatesigningrequests:nodeclient", [
            rule(["create"], ["certificates.k8s.io"],
                 ["certificatesigningrequests/nodeclient"])]),
        _cluster_role("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", [
            rule(["create"], ["certificates.k8s.io"],
                 ["certificatesigningrequests/selfnodeclient"])]),
    ]


def cluster_role_bindings() -> list[dict]:
    authenticated = _subject("Group", "system:authenticated")
    return [
        _binding("cluster-admin", "cluster-admin", [_subject("Group", "system:masters")]),
        _binding("system:discovery", "system:discovery", [authenticated]),
        _binding("system:basic-user", "system:basic-user", [authenticated]),
        _binding("system:public-info-viewer", "system:public-info-viewer",
                 [authenticated, _subject("Group", "system:unauthenticated")]),
        _binding("system:monitoring", "system:monitoring",
                 [_subject("Group", "system:monitoring")]),
        _binding("system:kube-scheduler", "system:kube-scheduler",
                 [_subject("User", "system:kube-scheduler")]),
        _binding("system:volume-scheduler", "system:volume-scheduler",
                 [_subject("User", "system:kube-scheduler")]),
        _binding("system:kube-controller-manager", "system:kube-controller-manager",
                 [_subject("User", "system:kube-controller-manager")]),
        _binding("system:node", "system:node", []),
        _binding("system:node-proxier", "system:node-proxier",
                 [_subject("User", "system:kube-proxy")]),
        _binding("system:kube-dns", "system:kube-dns",
                 [_subject("ServiceAccount", "kube-dns", "kube-system")]),
        # kubeadm's: admin.conf's user (kubernetes-admin) is in this group.
        _binding("kubeadm:cluster-admins", "cluster-admin",
                 [_subject("Group", "kubeadm:cluster-admins")], labels=False),
    ]


def _role(name: str, namespace: str, rules: list[dict]) -> dict:
    return {"apiVersion": f"{RBAC}/v1", "kind": "Role",
            "metadata": _meta(name, namespace=namespace), "rules": rules}


def roles() -> list[dict]:
    return [
        _role("extension-apiserver-authentication-reader", "kube-system", [
            rule(READ, [""], ["configmaps"], ["extension-apiserver-authentication"])]),
        _role("system::leader-locking-kube-controller-manager", "kube-system", [
            rule(["watch"], [""], ["configmaps"]),
            rule(["get", "update"], [""], ["configmaps"], ["kube-controller-manager"])]),
        _role("system::leader-locking-kube-scheduler", "kube-system", [
            rule(["watch"], [""], ["configmaps"]),
            rule(["get", "update"], [""], ["configmaps"], ["kube-scheduler"])]),
        _role("system:controller:bootstrap-signer", "kube-public", [
            rule(READ, [""], ["configmaps"]),
            rule(["update"], [""], ["configmaps"], ["cluster-info"]), *_events()]),
    ]


def role_bindings() -> list[dict]:
    return [
        _binding("system::extension-apiserver-authentication-reader",
                 "extension-apiserver-authentication-reader",
                 [_subject("User", "system:kube-controller-manager"),
                  _subject("User", "system:kube-scheduler")],
                 namespace="kube-system", role_kind="Role"),
        _binding("system::leader-locking-kube-controller-manager",
                 "system::leader-locking-kube-controller-manager",
                 [_subject("User", "system:kube-controller-manager"),
                  _subject("ServiceAccount", "kube-controller-manager", "kube-system")],
                 namespace="kube-system", role_kind="Role"),
        _binding("system::leader-locking-kube-scheduler",
                 "system::leader-locking-kube-scheduler",
                 [_subject("User", "system:kube-scheduler"),
                  _subject("ServiceAccount", "kube-scheduler", "kube-system")],
                 namespace="kube-system", role_kind="Role"),
        _binding("system:controller:bootstrap-signer", "system:controller:bootstrap-signer",
                 [_subject("ServiceAccount", "bootstrap-signer", "kube-system")],
                 namespace="kube-public", role_kind="Role"),
    ]
