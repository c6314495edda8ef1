"""The API server's pure parts: flags, selectors, patches, request paths, RBAC rules,
and the protobuf envelope, without a server."""
from __future__ import annotations

import pytest
from multidict import MultiDict

from kubesmith.apiserver import errors, options, patch, protobuf, requestinfo, selectors
from kubesmith.apiserver.authn import UserInfo
from kubesmith.apiserver.authz import (
    RBAC,
    Attributes,
    Decision,
    forbidden_reason,
    rule_allows,
    subject_matches,
)


# --- flags -------------------------------------------------------------------------------

def test_flags_use_upstream_syntax(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    parsed = options.parse([
        "--etcd-servers=https://10.0.0.1:2379,https://10.0.0.2:2379",
        f"--tls-cert-file={cert}", "--tls-private-key-file", str(cert),
        "--anonymous-auth", "--allow-privileged=true", "--v=4",
        "--etcd-compaction-interval=1m30s", "--service-node-port-range=30000-32767",
        "--service-cluster-ip-range=10.96.0.0/12", "--authorization-mode=RBAC"])
    assert parsed.etcd_servers == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    assert parsed.anonymous_auth is True and parsed.allow_privileged is True
    assert parsed.etcd_compaction_interval == 90.0 and parsed.v == 4
    assert parsed.secure_port == 6443 and parsed.authorization_mode == ["RBAC"]
    assert "NamespaceLifecycle" in parsed.admission_plugins
    defaults = options.parse(["--etcd-servers=https://e:2379", f"--tls-cert-file={cert}",
                              f"--tls-private-key-file={cert}"])
    assert defaults.anonymous_auth is False and defaults.authorization_mode == ["Node", "RBAC"]
    for bad in (["--insecure-port=8080"], ["--secure-port=0"], ["--anonymous-auth=maybe"],
                ["--etcd-servers=https://e:2379", f"--tls-cert-file={cert}",
                 f"--tls-private-key-file={cert}", "--enable-admission-plugins=Nope"]):
        with pytest.raises(options.OptionsError):
            options.parse(bad)


@pytest.mark.parametrize("text,seconds", [("5m", 300), ("1h2m3s", 3723), ("250ms", 0.25),
                                          ("0", 0), ("1.5s", 1.5)])
def test_go_durations(text, seconds):
    assert options.parse_duration(text) == seconds


# --- selectors -----------------------------------------------------------------------------

@pytest.mark.parametrize("text,labels,match", [
    ("a=b", {"a": "b"}, True), ("a==b", {"a": "c"}, False), ("a!=b", {}, True),
    ("a in (x, y)", {"a": "y"}, True), ("a notin (x)", {"a": "x"}, False),
    ("a", {"a": ""}, True), ("!a", {"a": "1"}, False), ("a>3", {"a": "4"}, True),
    ("a=b,c", {"a": "b"}, False), ("", {}, True),
])
def test_label_selectors(text, labels, match):
    assert selectors.parse_label_selector(text).matches(labels) is match


@pytest.mark.parametrize("text", ["a in", "a=b=c", "a in ()", "a b", "-a=b", "a=b,"])
def test_bad_label_selectors_are_400(text):
    with pytest.raises(errors.APIError) as caught:
        selectors.parse_label_selector(text)
    assert caught.value.code == 400


def test_field_selectors():
    sel = selectors.parse_field_selector(r"metadata.name=a\,b,status.phase!=Running")
    assert sel.exact_name() == "a,b"
    values = {"metadata.name": "a,b", "status.phase": "Pending"}
    assert sel.matches(values.get)
    with pytest.raises(errors.APIError):
        selectors.parse_field_selector("nonsense")


# --- patches -------------------------------------------------------------------------------

def test_merge_patch():
    doc = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    assert patch.merge_patch(doc, {"a": {"b": None, "d": 3}, "l": [3]}) == \
        {"a": {"c": 2, "d": 3}, "l": [3]}


def test_json_patch():
    doc = {"a": [1, 2], "m": {"k": "v"}}
    ops = [{"op": "add", "path": "/a/-", "value": 3}, {"op": "remove", "path": "/m/k"},
           {"op": "copy", "from": "/a/0", "path": "/m/first"},
           {"op": "move", "from": "/m/first", "path": "/x"},
           {"op": "test", "path": "/x", "value": 1},
           {"op": "replace", "path": "/a/0", "value": 0}]
    assert patch.json_patch(doc, ops) == {"a": [0, 2, 3], "m": {}, "x": 1}
    assert doc == {"a": [1, 2], "m": {"k": "v"}}        # the input is left alone
    with pytest.raises(patch.PatchError):
        patch.json_patch(doc, [{"op": "test", "path": "/a/0", "value": 9}])
    with pytest.raises(patch.PatchError):
        patch.json_patch(doc, [{"op": "remove", "path": "/nope"}])


# --- request paths -------------------------------------------------------------------------

@pytest.mark.parametrize("method,path,query,expected", [
    ("GET", "/api/v1/namespaces", {}, ("list", "", "namespaces", "", "")),
    ("GET", "/api/v1/namespaces/x", {}, ("get", "x", "namespaces", "x", "")),
    ("PUT", "/api/v1/namespaces/x/finalize", {}, ("update", "x", "namespaces", "x", "finalize")),
    ("GET", "/api/v1/namespaces/x/pods/p/log", {}, ("get", "x", "pods", "p", "log")),
    ("GET", "/api/v1/pods", {"watch": "1"}, ("watch", "", "pods", "", "")),
    ("GET", "/api/v1/watch/namespaces/x/pods", {}, ("watch", "x", "pods", "", "")),
    ("DELETE", "/apis/apps/v1/namespaces/x/deployments", {},
     ("deletecollection", "x", "deployments", "", "")),
    ("GET", "/api/v1/namespaces/x/configmaps", {"fieldSelector": "metadata.name=a"},
     ("list", "x", "configmaps", "a", "")),
])
def test_request_info(method, path, query, expected):
    info = requestinfo.parse(method, path, MultiDict(query))
    assert info.is_resource
    assert (info.verb, info.namespace, info.resource, info.name, info.subresource) == expected


@pytest.mark.parametrize("path", ["/api", "/api/v1", "/apis/apps", "/apis/apps/v1", "/healthz",
                                  "/version"])
def test_non_resource_paths(path):
    info = requestinfo.parse("GET", path, MultiDict())
    assert not info.is_resource and info.verb == "get"


# --- RBAC ----------------------------------------------------------------------------------

def attrs(verb="get", resource="pods", sub="", name="", ns="default", group="", path=""):
    user = UserInfo("u", ("g", "system:authenticated"))
    if path:
        return Attributes(user, verb, False, path=path)
    return Attributes(user, verb, True, ns, group, "v1", resource, sub, name)


def test_rule_matching():
    rule = {"verbs": ["get"], "apiGroups": [""], "resources": ["pods", "pods/log"]}
    assert rule_allows(rule, attrs())
    assert rule_allows(rule, attrs(sub="log"))
    assert not rule_allows(rule, attrs(sub="exec"))
    assert not rule_allows(rule, attrs(verb="list"))
    assert not rule_allows(rule, attrs(group="apps"))
    star = {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/scale"]}
    assert rule_allows(star, attrs(resource="deployments", sub="scale", group="apps"))
    assert not rule_allows(star, attrs(resource="deployments", group="apps"))
    named = {"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"],
             "resourceNames": ["a"]}
    assert rule_allows(named, attrs(resource="secrets", name="a"))
    assert not rule_allows(named, attrs(resource="secrets"))
    urls = {"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]}
    assert rule_allows(urls, attrs(path="/healthz"))
    assert rule_allows(urls, attrs(path="/apis/apps/v1"))
    assert not rule_allows(urls, attrs(path="/metrics"))


def test_subjects():
    sa = UserInfo("system:serviceaccount:ns1:robot", ("system:serviceaccounts",))
    assert subject_matches({"kind": "ServiceAccount", "name": "robot"}, sa, "ns1")
    assert not subject_matches({"kind": "ServiceAccount", "name": "robot"}, sa, "ns2")
    assert subject_matches({"kind": "Group", "name": "system:serviceaccounts"}, sa, "")
    assert subject_matches({"kind": "User", "name": "u"}, UserInfo("u"), "")


class _Source:
    def __init__(self):
        self.cr = {"reader": {"rules": [{"verbs": ["list"], "apiGroups": [""],
                                          "resources": ["pods"]}]},
                   "urls": {"rules": [{"verbs": ["get"], "nonResourceURLs": ["/metrics"]}]}}
        self.crb = []
        self.rb = {"default": [{"roleRef": {"kind": "ClusterRole", "name": "reader"},
                                "subjects": [{"kind": "Group", "name": "g"}]},
                               {"roleRef": {"kind": "ClusterRole", "name": "urls"},
                                "subjects": [{"kind": "User", "name": "u"}]}]}

    def cluster_roles(self):
        return self.cr

    def cluster_role_bindings(self):
        return self.crb

    def roles(self, namespace):
        return {}

    def role_bindings(self, namespace):
        return self.rb.get(namespace, [])

    def generation(self):
        return (len(self.crb),)


def test_rbac_bindings_scope():
    rbac = RBAC(_Source())
    assert rbac.authorize(attrs(verb="list"))[0] is Decision.ALLOW
    assert rbac.authorize(attrs(verb="list", ns="other"))[0] is Decision.NO_OPINION
    assert rbac.authorize(attrs(verb="list", ns=""))[0] is Decision.NO_OPINION
    # A RoleBinding never grants non-resource URLs.
    assert rbac.authorize(attrs(path="/metrics"))[0] is Decision.NO_OPINION
    assert forbidden_reason(attrs(verb="list", ns="")) == (
        'User "u" cannot list resource "pods" in API group "" at the cluster scope')


# --- protobuf ------------------------------------------------------------------------------

# What kubectl 1.33 sends for `kubectl create rolebinding rb --role=r --user=u`.
ROLEBINDING = bytes.fromhex(
    "6b3873000a2b0a1c726261632e617574686f72697a6174696f6e2e6b38732e696f2f7631120b526f6c65"
    "42696e64696e6712620a120a0272621200 1a00 2200 2a00 3200 3800 4200 12260a0455736572121972"
    "6261632e617574686f72697a6174696f6e2e6b38732e696f1a0175 2200 1a240a19726261632e617574"
    "686f72697a6174696f6e2e6b38732e696f1204526f6c651a0172 1a00 2200".replace(" ", ""))


def test_protobuf_envelope():
    obj = protobuf.decode(ROLEBINDING)
    assert obj == {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "rb"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "u"}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}}
    with pytest.raises(protobuf.ProtobufError):
        protobuf.decode(b"not protobuf")
    daemonset = b"k8s\x00" + bytes([0x0a, 0x14, 0x0a, 0x07]) + b"apps/v1" + \
        bytes([0x12, 0x09]) + b"DaemonSet" + bytes([0x12, 0x00])
    with pytest.raises(protobuf.Unsupported):
        protobuf.decode(daemonset)
    # A field the table lacks is fine while zero, refused once it holds a value.
    cm = lambda extra: b"k8s\x00" + bytes([0x0a, 0x0f, 0x0a, 0x02]) + b"v1" + \
        bytes([0x12, 0x09]) + b"ConfigMap" + bytes([0x12, len(extra)]) + extra
    assert protobuf.decode(cm(bytes([0x48, 0x00])))["kind"] == "ConfigMap"
    with pytest.raises(protobuf.Unsupported):
        protobuf.decode(cm(bytes([0x48, 0x01])))
