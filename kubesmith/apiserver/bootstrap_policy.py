"""The default RBAC policy the API server creates at startup (when absent), as upstream's.

Roles carry upstream's bootstrapping label and autoupdate annotation. admin, edit and
view are aggregated roles: their rules are the union of the system:aggregate-to-* roles,
filled in here (later the aggregation controller keeps them up to date).

Each controller of kube-controller-manager has a ClusterRole system:controller:<account>
bound to ServiceAccount kube-system/<account>: with --use-service-account-credentials the
manager itself only lists and watches, and each controller writes as its own account.
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
# Service-account issuer discovery (issuerdiscovery.py), readable by every service account.
_ISSUER_DISCOVERY_URLS = ["/.well-known/openid-configuration", "/openid/v1/jwks"]

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


# --- the controllers' own identities (kube-controller-manager
# --use-service-account-credentials): ClusterRole system:controller:<account>, bound to
# ServiceAccount kube-system/<account>, with upstream's rules (controller_policy.go).

CONTROLLER_ROLE_PREFIX = "system:controller:"
_SIGNERS = ["kubernetes.io/legacy-unknown", "kubernetes.io/kube-apiserver-client",
            "kubernetes.io/kube-apiserver-client-kubelet", "kubernetes.io/kubelet-serving"]
# The ConfigMap the API server keeps while legacy (Secret) tokens are tracked.
LEGACY_TOKEN_TRACKING_CONFIGMAP = "kube-apiserver-legacy-service-account-token-tracking"

_CONTROLLER_RULES: dict[str, list[dict]] = {
    "clusterrole-aggregation-controller": [
        rule(["escalate", "get", "list", "watch", "update", "patch"], [RBAC],
             ["clusterroles"])],
    "cronjob-controller": [
        rule(["get", "list", "watch", "update"], ["batch"], ["cronjobs"]),
        rule(["get", "list", "watch", "create", "update", "delete", "patch"], ["batch"],
             ["jobs"]),
        rule(["update"], ["batch"], ["cronjobs/status"]),
        rule(["update"], ["batch"], ["cronjobs/finalizers"]),
        rule(["list", "watch", "delete"], [""], ["pods"]),
        *_events()],
    "daemon-set-controller": [
        rule(READ, ["extensions", "apps"], ["daemonsets"]),
        rule(["update"], ["extensions", "apps"], ["daemonsets/status"]),
        rule(["update"], ["extensions", "apps"], ["daemonsets/finalizers"]),
        rule(["list", "watch"], [""], ["nodes"]),
        rule(["list", "watch", "create", "delete", "patch"], [""], ["pods"]),
        rule(["create"], [""], ["pods/binding"]),
        rule(["get", "list", "watch", "create", "delete", "update", "patch"], ["apps"],
             ["controllerrevisions"]),
        *_events()],
    "deployment-controller": [
        rule(["get", "list", "watch", "update"], ["extensions", "apps"], ["deployments"]),
        rule(["update"], ["extensions", "apps"], ["deployments/status"]),
        rule(["update"], ["extensions", "apps"], ["deployments/finalizers"]),
        rule(["get", "list", "watch", "create", "update", "patch", "delete"],
             ["apps", "extensions"], ["replicasets"]),
        rule(["get", "list", "watch", "update"], [""], ["pods"]),
        *_events()],
    "disruption-controller": [
        rule(READ, ["extensions", "apps"], ["deployments"]),
        rule(READ, ["apps", "extensions"], ["replicasets"]),
        rule(READ, [""], ["replicationcontrollers"]),
        rule(READ, ["policy"], ["poddisruptionbudgets"]),
        rule(READ, ["apps"], ["statefulsets"]),
        rule(["update"], ["policy"], ["poddisruptionbudgets/status"]),
        rule(["patch", "update"], [""], ["pods/status"]),
        rule(["get"], ["*"], ["*/scale"]),
        *_events()],
    "endpoint-controller": [
        rule(READ, [""], ["services", "pods"]),
        rule(["get", "list", "watch", "create", "update", "delete"], [""], ["endpoints"]),
        rule(["create"], [""], ["endpoints/restricted"]),
        *_events()],
    "endpointslice-controller": [
        rule(READ, [""], ["services", "pods", "nodes"]),
        # An EndpointSlice owned by its Service with blockOwnerDeletion needs this.
        rule(["update"], [""], ["services/finalizers"]),
        rule(["get", "list", "watch", "create", "update", "delete"], ["discovery.k8s.io"],
             ["endpointslices"]),
        *_events()],
    "endpointslicemirroring-controller": [
        rule(READ, [""], ["services", "endpoints"]),
        rule(["update"], [""], ["services/finalizers"]),
        rule(["update"], [""], ["endpoints/finalizers"]),
        rule(["get", "list", "watch", "create", "update", "delete"], ["discovery.k8s.io"],
             ["endpointslices"]),
        *_events()],
    "generic-garbage-collector": [
        rule(["get", "list", "watch", "patch", "update", "delete"], ["*"], ["*"]),
        *_events()],
    "job-controller": [
        rule(["get", "list", "watch", "update", "patch"], ["batch"], ["jobs"]),
        rule(["update"], ["batch"], ["jobs/status"]),
        rule(["update"], ["batch"], ["jobs/finalizers"]),
        rule(["list", "watch", "create", "delete", "patch"], [""], ["pods"]),
        *_events()],
    "namespace-controller": [
        rule(["get", "list", "watch", "delete"], [""], ["namespaces"]),
        rule(["update"], [""], ["namespaces/finalize", "namespaces/status"]),
        rule(["get", "list", "watch", "delete", "deletecollection"], ["*"], ["*"])],
    "node-controller": [
        rule(["get", "list", "watch", "update", "delete", "patch"], [""], ["nodes"]),
        rule(["patch", "update"], [""], ["nodes/status"]),
        rule(["patch", "update"], [""], ["pods/status"]),
        rule(["list", "watch", "get", "delete"], [""], ["pods"]),
        *_events()],
    "pod-garbage-collector": [
        rule(["list", "watch", "delete"], [""], ["pods"]),
        rule(READ, [""], ["nodes"]),
        rule(["patch"], [""], ["pods/status"])],
    "replicaset-controller": [
        rule(["get", "list", "watch", "update"], ["apps", "extensions"], ["replicasets"]),
        rule(["update"], ["apps", "extensions"], ["replicasets/status"]),
        rule(["update"], ["apps", "extensions"], ["replicasets/finalizers"]),
        rule(["list", "watch", "patch", "create", "delete"], [""], ["pods"]),
        *_events()],
    "replication-controller": [
        rule(["get", "list", "watch", "update"], [""], ["replicationcontrollers"]),
        rule(["update"], [""], ["replicationcontrollers/status"]),
        rule(["update"], [""], ["replicationcontrollers/finalizers"]),
        rule(["list", "watch", "patch", "create", "delete"], [""], ["pods"]),
        *_events()],
    "resourcequota-controller": [
        # Quota can count anything, so it reads everything.
        rule(["list", "watch"], ["*"], ["*"]),
        rule(["update"], [""], ["resourcequotas/status"]),
        *_events()],
    "service-account-controller": [
        rule(["create"], [""], ["serviceaccounts"]),
        *_events()],
    "statefulset-controller": [
        rule(["list", "watch"], [""], ["pods"]),
        rule(READ, ["apps"], ["statefulsets"]),
        rule(["update"], ["apps"], ["statefulsets/status"]),
        rule(["update"], ["apps"], ["statefulsets/finalizers"]),
        rule(["get", "create", "delete", "update", "patch"], [""], ["pods"]),
        rule(["get", "create", "delete", "update", "patch", "list", "watch"], ["apps"],
             ["controllerrevisions"]),
        rule(["get", "create", "list", "watch"], [""], ["persistentvolumeclaims"]),
        rule(["update", "delete"], [""], ["persistentvolumeclaims"]),
        rule(["update"], [""], ["pods/finalizers"]),
        *_events()],
    "ttl-controller": [
        rule(["update", "patch", "list", "watch"], [""], ["nodes"]),
        *_events()],
    "certificate-controller": [
        rule(["get", "list", "watch", "delete"], ["certificates.k8s.io"],
             ["certificatesigningrequests"]),
        rule(["update"], ["certificates.k8s.io"],
             ["certificatesigningrequests/status", "certificatesigningrequests/approval"]),
        rule(["approve"], ["certificates.k8s.io"], ["signers"],
             ["kubernetes.io/kube-apiserver-client-kubelet"]),
        rule(["sign"], ["certificates.k8s.io"], ["signers"], _SIGNERS),
        rule(["create"], ["authorization.k8s.io"], ["subjectaccessreviews"]),
        *_events()],
    "ttl-after-finished-controller": [
        rule(["get", "list", "watch", "delete"], ["batch"], ["jobs"]),
        *_events()],
    "root-ca-cert-publisher": [
        rule(["create", "update"], [""], ["configmaps"]),
        *_events()],
    "legacy-service-account-token-cleaner": [
        rule(["get"], [""], ["configmaps"], [LEGACY_TOKEN_TRACKING_CONFIGMAP]),
        rule(["patch", "delete"], [""], ["secrets"])],
}


def controller_service_accounts() -> list[str]:
    """The kube-system ServiceAccounts that have a system:controller:<name> ClusterRole."""
    return list(_CONTROLLER_RULES)


def _controller_roles() -> list[dict]:
    return [_cluster_role(CONTROLLER_ROLE_PREFIX + account, [dict(r) for r in rules])
            for account, rules in _CONTROLLER_RULES.items()]


def _controller_role_bindings() -> list[dict]:
    return [_binding(CONTROLLER_ROLE_PREFIX + account, CONTROLLER_ROLE_PREFIX + account,
                     [_subject("ServiceAccount", account, "kube-system")])
            for account in _CONTROLLER_RULES]


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
        _cluster_role("system:service-account-issuer-discovery",
                      [rule(["get"], urls=_ISSUER_DISCOVERY_URLS)]),
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
        *_controller_roles(),
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
        _binding("system:service-account-issuer-discovery",
                 "system:service-account-issuer-discovery",
                 [_subject("Group", "system:serviceaccounts")]),
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
        *_controller_role_bindings(),
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
        # The bootstrap signer reads the bootstrap token Secrets; the token cleaner
        # removes expired ones (only in kube-system).
        _role("system:controller:bootstrap-signer", "kube-system", [
            rule(READ, [""], ["secrets"])]),
        _role("system:controller:token-cleaner", "kube-system", [
            rule(["delete", "get", "list", "watch"], [""], ["secrets"]), *_events()]),
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
                 namespace="kube-system", role_kind="Role"),
        _binding("system:controller:token-cleaner", "system:controller:token-cleaner",
                 [_subject("ServiceAccount", "token-cleaner", "kube-system")],
                 namespace="kube-system", role_kind="Role"),
        _binding("system:controller:bootstrap-signer", "system:controller:bootstrap-signer",
                 [_subject("ServiceAccount", "bootstrap-signer", "kube-system")],
                 namespace="kube-public", role_kind="Role"),
    ]
