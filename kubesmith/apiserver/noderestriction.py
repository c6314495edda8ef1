"""The NodeRestriction admission plugin: what a node (system:node:<name>) may change.

The Node authorizer lets every node write nodes, pods, leases and tokens; this plugin
narrows each write to the node's own objects, as upstream:

  * nodes: only its own Node; no labels outside the kubelet's set (kubernetes.io/hostname,
    topology, instance type, os/arch, kubelet.kubernetes.io/* and node.kubernetes.io/*;
    never node-restriction.kubernetes.io/*), and no taint changes after registration;
  * pods: only mirror pods (kubernetes.io/config.mirror) bound to itself, referencing no
    secrets, config maps, claims or service accounts, owned by nothing but its Node; delete
    only its own pods; status only of its own pods; evict only its own pods;
  * leases: only kube-node-lease/<node>; CSINodes: only its own;
  * tokens: only bound to a pod running on it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kubesmith.apiserver import admission, errors
from kubesmith.apiserver.authz import NODE_LEASE_NAMESPACE, node_name
from kubesmith.apiserver.serviceaccount import MIRROR_ANNOTATION, is_mirror_pod, setup

if TYPE_CHECKING:
    from kubesmith.apiserver.server import APIServer

# Labels a kubelet may set on its own Node (upstream's kubelet label set).
KUBELET_LABELS = frozenset((
    "kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch",
    "beta.kubernetes.io/os", "beta.kubernetes.io/arch", "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type", "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
))
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
RESTRICTED_NAMESPACE = "node-restriction.kubernetes.io"


def _in_namespace(namespace: str, domain: str) -> bool:
    return namespace == domain or namespace.endswith("." + domain)


def is_kubelet_label(key: str) -> bool:
    if key in KUBELET_LABELS:
        return True
    namespace = key.split("/", 1)[0] if "/" in key else ""
    return any(_in_namespace(namespace, ns) for ns in KUBELET_LABEL_NAMESPACES)


def forbidden_labels(keys) -> list[str]:
    """The labels of `keys` a node may not set or change on itself."""
    bad = []
    for key in keys:
        namespace = key.split("/", 1)[0] if "/" in key else ""
        if _in_namespace(namespace, RESTRICTED_NAMESPACE):
            bad.append(key)
        elif (_in_namespace(namespace, "kubernetes.io") or _in_namespace(namespace, "k8s.io")) \
                and not is_kubelet_label(key):
            bad.append(key)
    return sorted(bad)


def modified_labels(new: dict | None, old: dict | None) -> set[str]:
    new, old = new or {}, old or {}
    return {k for k in set(new) | set(old) if new.get(k) != old.get(k)}


def _meta(obj: dict | None) -> dict:
    return (obj or {}).get("metadata") or {}


def _spec(obj: dict | None) -> dict:
    return (obj or {}).get("spec") or {}


class NodeRestriction(admission.Plugin):
    name = "NodeRestriction"

    def __init__(self, srv: "APIServer"):
        self.objects = setup(srv).objects

    async def admit(self, request: admission.Request) -> None:
        node = node_name(request.user)
        if node is None:
            return
        rt = request.rt
        key = (rt.group, rt.plural)
        if key == ("", "pods"):
            await self._pod(node, request)
        elif key == ("", "nodes"):
            self._node(node, request)
        elif key == ("", "serviceaccounts") and request.subresource == "token":
            await self._token(node, request)
        elif key == ("coordination.k8s.io", "leases"):
            self._lease(node, request)
        elif key == ("storage.k8s.io", "csinodes"):
            if request.name != node:
                raise self._deny(request, f'node "{node}" is not allowed to modify CSINode '
                                          f'"{request.name}"')
        elif key == ("", "persistentvolumeclaims") and request.subresource == "status":
            self._claim_status(node, request)

    @staticmethod
    def _deny(request: admission.Request, message: str) -> errors.APIError:
        resource = request.rt.plural + (f"/{request.subresource}" if request.subresource
                                        else "")
        return errors.forbidden(resource, request.rt.group, request.name, message)

    # --- pods ----------------------------------------------------------------------------

    async def _pod(self, node: str, request: admission.Request) -> None:
        sub = request.subresource
        if sub == "":
            if request.operation == admission.CREATE:
                self._mirror_pod(node, request)
            elif request.operation == admission.DELETE:
                if _spec(request.old).get("nodeName") != node:
                    raise self._deny(request, f'node "{node}" can only delete pods with '
                                              "spec.nodeName set to itself")
            else:
                raise self._deny(request, f'unexpected operation {request.operation}, node '
                                          f'"{node}" can only create and delete mirror pods')
        elif sub == "status":
            if request.operation != admission.UPDATE:
                raise self._deny(request, f"unexpected operation {request.operation}")
            if _spec(request.old).get("nodeName") != node:
                raise self._deny(request, f'node "{node}" can only update pod status for pods '
                                          "with spec.nodeName set to itself")
        elif sub == "eviction":
            pod = await self.objects.get("pods", request.namespace, request.name)
            if pod is None:
                return      # the eviction answers 404 itself
            if _spec(pod).get("nodeName") != node:
                raise self._deny(request, f"node {node} can only evict pods with "
                                          "spec.nodeName set to itself")
        else:
            raise self._deny(request, f'unexpected pod subresource "{sub}", only "status" and '
                                      '"eviction" are allowed')

    def _mirror_pod(self, node: str, request: admission.Request) -> None:
        from kubesmith.apiserver.nodegraph import pod_references
        pod = request.obj or {}
        if not is_mirror_pod(pod):
            raise self._deny(request, f'pod does not have "{MIRROR_ANNOTATION}" annotation, '
                                      f'node "{node}" can only create mirror pods')
        if _spec(pod).get("nodeName") != node:
            raise self._deny(request, f'node "{node}" can only create pods with spec.nodeName '
                                      "set to itself")
        for owner in _meta(pod).get("ownerReferences") or []:
            if not isinstance(owner, dict) or owner.get("apiVersion") != "v1" or \
                    owner.get("kind") != "Node" or owner.get("name") != node:
                raise self._deny(request, f'node "{node}" can only create pods with an owner '
                                          "reference set to itself")
        spec = _spec(pod)
        if spec.get("serviceAccountName") or spec.get("serviceAccount"):
            raise self._deny(request, f'node "{node}" can not create pods that use service '
                                      "accounts")
        kinds = {kind for kind, _, _ in pod_references(pod)}
        for kind, word in (("secret", "secrets"), ("configmap", "configmaps"),
                           ("pvc", "persistentvolumeclaims"),
                           ("resourceclaim", "resourceclaims")):
            if kind in kinds:
                raise self._deny(request, f'node "{node}" can not create pods that reference '
                                          f"{word}")

    # --- nodes ---------------------------------------------------------------------------

    def _node(self, node: str, request: admission.Request) -> None:
        if request.name != node:
            raise self._deny(request, f'node "{node}" is not allowed to modify node '
                                      f'"{request.name}"')
        if request.operation == admission.CREATE:
            if _spec(request.obj).get("configSource") is not None:
                raise self._deny(request, f'node "{node}" is not allowed to create pods with a '
                                          "non-nil configSource")
            bad = forbidden_labels(modified_labels(_meta(request.obj).get("labels"), None))
            if bad:
                raise self._deny(request, f'node "{node}" is not allowed to set the following '
                                          f"labels: {', '.join(bad)}")
        elif request.operation == admission.UPDATE:
            new, old = request.obj, request.old
            source = _spec(new).get("configSource")
            if source is not None and source != _spec(old).get("configSource"):
                raise self._deny(request, f'node "{node}" is not allowed to update configSource '
                                          "to a new non-nil configSource")
            if (_spec(new).get("taints") or []) != (_spec(old).get("taints") or []):
                raise self._deny(request, f'node "{node}" is not allowed to modify taints')
            bad = forbidden_labels(modified_labels(_meta(new).get("labels"),
                                                   _meta(old).get("labels")))
            if bad:
                raise self._deny(request, f"is not allowed to modify labels: {', '.join(bad)}")

    # --- the rest ------------------------------------------------------------------------

    async def _token(self, node: str, request: admission.Request) -> None:
        ref = _spec(request.obj).get("boundObjectRef")
        if not isinstance(ref, dict) or ref.get("kind") != "Pod":
            raise self._deny(request, "node requested token not bound to a pod")
        if not ref.get("uid"):
            raise self._deny(request, "node requested token with a pod binding without a uid")
        pod = await self.objects.get("pods", request.namespace, ref.get("name") or "",
                                     ref["uid"])
        if pod is None:
            raise errors.not_found("pods", "", ref.get("name") or "")
        if _meta(pod).get("uid") != ref["uid"]:
            raise self._deny(request, "the UID in the bound object reference "
                                      f"({ref['uid']}) does not match the UID in record. The "
                                      "object might have been deleted and then recreated")
        if _spec(pod).get("nodeName") != node:
            raise self._deny(request, "node requested token bound to a pod scheduled on a "
                                      "different node")

    def _lease(self, node: str, request: admission.Request) -> None:
        if request.operation not in (admission.CREATE, admission.UPDATE):
            return
        if request.namespace != NODE_LEASE_NAMESPACE:
            raise self._deny(request, f'can only access leases in the "{NODE_LEASE_NAMESPACE}" '
                                      "system namespace")
        if request.name != node:
            raise self._deny(request, "can only access node lease with the same name as the "
                                      "requesting node")

    def _claim_status(self, node: str, request: admission.Request) -> None:
        if request.operation != admission.UPDATE:
            raise self._deny(request, f"unexpected operation {request.operation}")

        def rest_of(obj: dict | None) -> dict:
            # Everything but what the kubelet reports after resizing a volume.
            obj = dict(obj or {})
            obj["metadata"] = {k: v for k, v in _meta(obj).items() if k != "resourceVersion"}
            obj["status"] = {k: v for k, v in ((obj.get("status") or {}).items())
                             if k not in ("capacity", "conditions")}
            return obj
        if rest_of(request.obj) != rest_of(request.old):
            raise self._deny(request, f'node "{node}" is not allowed to update fields other '
                                      "than status.capacity and status.conditions")
