"""Every built-in kind is registered with upstream's discovery facts and etcd layout."""
from __future__ import annotations

import pytest

from kubesmith.api import REGISTRY
from kubesmith.api.registry import AGE_COLUMN, NAME_COLUMN

STANDARD = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

# (group, plural): kind, namespaced, short names, categories, storage, subresources
EXPECTED = {
    ("", "namespaces"): ("Namespace", False, ("ns",), (), "namespaces", ("status", "finalize")),
    ("", "pods"): ("Pod", True, ("po",), ("all",), "pods",
                   ("status", "binding", "eviction", "log", "exec", "attach", "portforward",
                    "proxy", "ephemeralcontainers")),
    ("", "nodes"): ("Node", False, ("no",), (), "minions", ("status", "proxy")),
    ("", "services"): ("Service", True, ("svc",), ("all",), "services/specs",
                       ("status", "proxy")),
    ("", "endpoints"): ("Endpoints", True, ("ep",), (), "services/endpoints", ()),
    ("", "configmaps"): ("ConfigMap", True, ("cm",), (), "configmaps", ()),
    ("", "secrets"): ("Secret", True, (), (), "secrets", ()),
    ("", "serviceaccounts"): ("ServiceAccount", True, ("sa",), (), "serviceaccounts",
                              ("token",)),
    ("", "events"): ("Event", True, ("ev",), (), "events", ()),
    ("", "replicationcontrollers"): ("ReplicationController", True, ("rc",), ("all",),
                                     "controllers", ("status", "scale")),
    ("", "limitranges"): ("LimitRange", True, ("limits",), (), "limitranges", ()),
    ("", "resourcequotas"): ("ResourceQuota", True, ("quota",), (), "resourcequotas",
                             ("status",)),
    ("apps", "deployments"): ("Deployment", True, ("deploy",), ("all",), "deployments",
                              ("status", "scale")),
    ("apps", "replicasets"): ("ReplicaSet", True, ("rs",), ("all",), "replicasets",
                              ("status", "scale")),
    ("apps", "daemonsets"): ("DaemonSet", True, ("ds",), ("all",), "daemonsets", ("status",)),
    ("apps", "statefulsets"): ("StatefulSet", True, ("sts",), ("all",), "statefulsets",
                               ("status", "scale")),
    ("apps", "controllerrevisions"): ("ControllerRevision", True, (), (), "controllerrevisions",
                                      ()),
    ("batch", "jobs"): ("Job", True, (), ("all",), "jobs", ("status",)),
    ("batch", "cronjobs"): ("CronJob", True, ("cj",), ("all",), "cronjobs", ("status",)),
    ("coordination.k8s.io", "leases"): ("Lease", True, (), (), "leases", ()),
    ("rbac.authorization.k8s.io", "roles"): ("Role", True, (), (), "roles", ()),
    ("rbac.authorization.k8s.io", "rolebindings"): ("RoleBinding", True, (), (), "rolebindings",
                                                    ()),
    ("rbac.authorization.k8s.io", "clusterroles"): ("ClusterRole", False, (), (), "clusterroles",
                                                    ()),
    ("rbac.authorization.k8s.io", "clusterrolebindings"): ("ClusterRoleBinding", False, (), (),
                                                           "clusterrolebindings", ()),
    ("discovery.k8s.io", "endpointslices"): ("EndpointSlice", True, (), (), "endpointslices", ()),
    ("events.k8s.io", "events"): ("Event", True, ("ev",), (), "events", ()),
    ("policy", "poddisruptionbudgets"): ("PodDisruptionBudget", True, ("pdb",), (),
                                         "poddisruptionbudgets", ("status",)),
}

CREATE_ONLY = {
    ("", "bindings"): True,
    ("authentication.k8s.io", "tokenreviews"): False,
    ("authentication.k8s.io", "selfsubjectreviews"): False,
    ("authorization.k8s.io", "subjectaccessreviews"): False,
    ("authorization.k8s.io", "selfsubjectaccessreviews"): False,
    ("authorization.k8s.io", "selfsubjectrulesreviews"): False,
    ("authorization.k8s.io", "localsubjectaccessreviews"): True,
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_kind_registered_with_discovery_facts(key):
    group, plural = key
    kind, namespaced, short, categories, storage, subresources = EXPECTED[key]
    rt = REGISTRY.get(group, "v1", plural)
    assert rt is not None, key
    assert (rt.kind, rt.namespaced, rt.short_names, rt.categories) == \
        (kind, namespaced, short, categories)
    assert rt.storage_resource == storage
    assert rt.subresources == subresources
    assert rt.verbs == STANDARD
    assert not rt.create_only


@pytest.mark.parametrize("key", sorted(CREATE_ONLY))
def test_create_only_kinds(key):
    group, plural = key
    rt = REGISTRY.get(group, "v1", plural)
    assert rt is not None
    assert rt.verbs == ("create",) and rt.create_only
    assert rt.namespaced is CREATE_ONLY[key]


def test_storage_keys_follow_upstream_layout():
    services = REGISTRY.get("", "v1", "services")
    assert services.storage_key("default", "web") == b"/registry/services/specs/default/web"
    assert REGISTRY.get("", "v1", "nodes").storage_key(None, "n1") == b"/registry/minions/n1"
    assert REGISTRY.get("", "v1", "endpoints").storage_prefix("ns") == \
        b"/registry/services/endpoints/ns/"
    core_events = REGISTRY.get("", "v1", "events")
    new_events = REGISTRY.get("events.k8s.io", "v1", "events")
    assert core_events.storage_key("a", "b") == new_events.storage_key("a", "b")


def test_group_order_matches_upstream_discovery():
    assert list(REGISTRY.group_versions()) == [
        "", "apps", "events.k8s.io", "authentication.k8s.io", "authorization.k8s.io", "batch",
        "policy", "rbac.authorization.k8s.io", "scheduling.k8s.io", "coordination.k8s.io",
        "discovery.k8s.io"]


def test_subresource_details():
    pods = REGISTRY.get("", "v1", "pods")
    details = {s.name: s for s in pods.subresource_details()}
    assert (details["status"].kind, details["status"].verbs) == ("Pod", ("get", "patch", "update"))
    assert (details["eviction"].group, details["eviction"].kind) == ("policy", "Eviction")
    assert details["binding"].verbs == ("create",)
    assert details["exec"].kind == "PodExecOptions"
    assert details["proxy"].kind == "PodProxyOptions"
    scale = {s.name: s for s in REGISTRY.get("apps", "v1", "deployments").subresource_details()}
    assert (scale["scale"].group, scale["scale"].version, scale["scale"].kind) == \
        ("autoscaling", "v1", "Scale")
    token = REGISTRY.get("", "v1", "serviceaccounts").subresource_details()[0]
    assert (token.group, token.kind, token.verbs) == ("authentication.k8s.io", "TokenRequest",
                                                      ("create",))
    assert "scale" not in REGISTRY.get("apps", "v1", "daemonsets").subresources


def names(plural, group=""):
    return [c.name for c in REGISTRY.get(group, "v1", plural).table_columns()]


def test_table_column_order_places_age_like_upstream():
    assert names("pods") == ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node",
                             "Nominated Node", "Readiness Gates"]
    assert names("services") == ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age",
                                 "Selector"]
    assert names("nodes") == ["Name", "Status", "Roles", "Age", "Version", "Internal-IP",
                              "External-IP", "OS-Image", "Kernel-Version", "Container-Runtime"]
    assert names("deployments", "apps") == ["Name", "Ready", "Up-to-date", "Available", "Age",
                                            "Containers", "Images", "Selector"]
    assert names("resourcequotas") == ["Name", "Age", "Request", "Limit"]
    assert names("jobs", "batch") == ["Name", "Status", "Completions", "Duration", "Age",
                                      "Containers", "Images", "Selector"]
    assert names("events") == ["Last Seen", "Type", "Reason", "Object", "Subobject", "Source",
                               "Message", "First Seen", "Count", "Name"]
    assert names("roles", "rbac.authorization.k8s.io") == ["Name", "Created At"]
    assert names("configmaps") == ["Name", "Data", "Age"]
    pods = REGISTRY.get("", "v1", "pods").table_columns()
    assert pods[0] is NAME_COLUMN and pods[4] is AGE_COLUMN
    assert [c.priority for c in pods] == [0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_field_selectors():
    pods = REGISTRY.get("", "v1", "pods")
    pod = {"metadata": {"name": "p", "namespace": "d"},
           "spec": {"nodeName": "n1", "restartPolicy": "Always", "hostNetwork": True},
           "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}]}}
    assert pods.field_value(pod, "spec.nodeName") == "n1"
    assert pods.field_value(pod, "status.phase") == "Running"
    assert pods.field_value(pod, "status.podIP") == "10.0.0.1"
    assert pods.field_value(pod, "spec.hostNetwork") == "true"
    assert pods.field_value(pod, "status.nominatedNodeName") == ""
    assert pods.field_value(pod, "spec.bogus") is None
    nodes = REGISTRY.get("", "v1", "nodes")
    assert nodes.field_value({"spec": {}}, "spec.unschedulable") == "false"
    events = REGISTRY.get("", "v1", "events")
    event = {"involvedObject": {"kind": "Pod", "name": "p"}, "source": {"component": "kubelet"},
             "reason": "Pulled", "type": "Normal"}
    assert events.field_value(event, "involvedObject.kind") == "Pod"
    assert events.field_value(event, "source") == "kubelet"
    assert events.field_value(event, "involvedObject.uid") == ""
    new_events = REGISTRY.get("events.k8s.io", "v1", "events")
    assert new_events.field_value({"regarding": {"kind": "Pod"}, "reportingController": "x"},
                                  "regarding.kind") == "Pod"
    assert REGISTRY.get("batch", "v1", "jobs").field_value({"status": {"succeeded": 2}},
                                                           "status.successful") == "2"
    assert REGISTRY.get("", "v1", "secrets").field_value({}, "type") == "Opaque"
    assert REGISTRY.get("", "v1", "replicationcontrollers").field_value(
        {"status": {"replicas": 3}}, "status.replicas") == "3"


def test_events_convert_between_versions():
    new_events = REGISTRY.get("events.k8s.io", "v1", "events")
    event = {"apiVersion": "events.k8s.io/v1", "kind": "Event",
             "metadata": {"name": "e", "namespace": "d"},
             "regarding": {"kind": "Pod", "name": "p"}, "note": "hello", "reason": "R",
             "type": "Normal", "reportingController": "c", "reportingInstance": "i",
             "action": "A", "eventTime": "2024-01-01T00:00:00.000000Z"}
    core = new_events.convert_to_storage(event)
    assert core["apiVersion"] == "v1" and core["involvedObject"]["name"] == "p"
    assert core["message"] == "hello" and core["reportingComponent"] == "c"
    back = new_events.convert_from_storage(core)
    assert back == event
    assert REGISTRY.get("", "v1", "pods").convert_to_storage(event) is event
