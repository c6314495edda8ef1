"""JWT signing and verification, service-account token claims, the Node authorizer's graph,
the Node authorizer's decisions and NodeRestriction's label rules (no server needed)."""
from __future__ import annotations

import asyncio
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kubesmith.apiserver import authz, serviceaccount, tokens
from kubesmith.apiserver.authn import TokenInvalid, UserInfo
from kubesmith.apiserver.bootstrap_policy import node_rules
from kubesmith.apiserver.nodegraph import Graph, pod_references
from kubesmith.apiserver.noderestriction import forbidden_labels, modified_labels

EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ISSUER = "https://kubernetes.default.svc.cluster.local"


# --- JWT ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key,alg", [(EC_KEY, "ES256"), (RSA_KEY, "RS256"),
                                     (ec.generate_private_key(ec.SECP384R1()), "ES384")])
def test_jwt_round_trip(key, alg):
    token = tokens.encode({"sub": "x", "n": 1}, key)
    header, claims = tokens.peek(token)
    assert header["alg"] == alg and header["kid"] == tokens.key_id(key.public_key())
    assert tokens.decode(token, [tokens.verify_key(key.public_key())]) == {"sub": "x", "n": 1}


def test_jwt_rejects_other_keys_tampering_and_alg_none():
    token = tokens.encode({"sub": "x"}, EC_KEY)
    good = [tokens.verify_key(EC_KEY.public_key())]
    other = [tokens.verify_key(ec.generate_private_key(ec.SECP256R1()).public_key()),
             tokens.verify_key(RSA_KEY.public_key())]
    with pytest.raises(tokens.TokenError):
        tokens.decode(token, other)
    header, payload, signature = token.split(".")
    forged = tokens.b64encode(b'{"sub":"admin"}')
    for bad in (f"{header}.{forged}.{signature}", f"{header}.{payload}.",
                f"{header}.{payload}.{signature[:-2]}AA", "a.b", "not-a-token",
                tokens.b64encode(b'{"alg":"none"}') + f".{payload}."):
        with pytest.raises(tokens.TokenError):
            tokens.decode(bad, good)
    # A kid that names no key still verifies against the right key.
    assert tokens.decode(tokens.encode({"a": 1}, EC_KEY, kid="unknown"), good) == {"a": 1}


def test_public_keys_from_pem_files(tmp_path):
    both = tmp_path / "keys.pem"
    both.write_bytes(
        EC_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo) +
        RSA_KEY.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()))
    keys = tokens.load_public_keys(both)
    assert [tokens.algorithm_of(k) for k in keys] == ["ES256", "RS256"]


# --- the service-account authenticator -----------------------------------------------------

class FakeObjects:
    def __init__(self):
        self.objects = {}

    def put(self, plural, namespace, name, uid, **more):
        self.objects[(plural, namespace, name)] = {
            "metadata": {"name": name, "namespace": namespace, "uid": uid, **more}}
        return self.objects[(plural, namespace, name)]

    async def get(self, plural, namespace, name, uid=""):
        return self.objects.get((plural, namespace, name))


def _authenticate(auth, token, audiences=None):
    return asyncio.run(auth.authenticate_token(token, audiences))


def test_service_account_token_claims_and_user():
    objects = FakeObjects()
    account = objects.put("serviceaccounts", "ns", "robot", "sa-uid")
    pod = objects.put("pods", "ns", "web", "pod-uid")
    auth = serviceaccount.Authenticator([EC_KEY.public_key()], [ISSUER], [ISSUER], objects)
    claims = serviceaccount.claims(ISSUER, [ISSUER], "ns", account, 3600, pod=pod,
                                   node_name="n1")
    assert claims["sub"] == "system:serviceaccount:ns:robot"
    assert claims["kubernetes.io"] == {"namespace": "ns",
                                       "serviceaccount": {"name": "robot", "uid": "sa-uid"},
                                       "pod": {"name": "web", "uid": "pod-uid"},
                                       "node": {"name": "n1"}}
    assert claims["exp"] - claims["iat"] == 3600 and claims["nbf"] == claims["iat"]
    user, audiences = _authenticate(auth, tokens.encode(claims, EC_KEY))
    assert user.name == "system:serviceaccount:ns:robot" and user.uid == "sa-uid"
    assert user.groups == ("system:serviceaccounts", "system:serviceaccounts:ns")
    assert user.extra["authentication.kubernetes.io/pod-name"] == ["web"]
    assert user.extra["authentication.kubernetes.io/pod-uid"] == ["pod-uid"]
    assert user.extra["authentication.kubernetes.io/node-name"] == ["n1"]
    assert user.extra["authentication.kubernetes.io/credential-id"] == [f"JTI={claims['jti']}"]
    assert audiences == [ISSUER]
    # Someone else's issuer: not this authenticator's token at all.
    other = dict(claims, iss="https://elsewhere")
    assert _authenticate(auth, tokens.encode(other, EC_KEY)) is None


@pytest.mark.parametrize("case", ["wrong-audience", "expired", "not-yet", "sub", "sa-gone",
                                  "sa-new-uid", "pod-gone", "wrong-key"])
def test_service_account_token_refusals(case):
    objects = FakeObjects()
    account = objects.put("serviceaccounts", "ns", "robot", "sa-uid")
    pod = objects.put("pods", "ns", "web", "pod-uid")
    auth = serviceaccount.Authenticator([EC_KEY.public_key()], [ISSUER], [ISSUER], objects)
    now = int(time.time())
    claims = serviceaccount.claims(ISSUER, [ISSUER], "ns", account, 3600, now, pod=pod)
    key, audiences = EC_KEY, None
    if case == "wrong-audience":
        audiences = ["vault"]
    elif case == "expired":
        claims["exp"] = now - 120
    elif case == "not-yet":
        claims["nbf"] = now + 600
    elif case == "sub":
        claims["sub"] = "system:serviceaccount:ns:admin"
    elif case == "sa-gone":
        del objects.objects[("serviceaccounts", "ns", "robot")]
    elif case == "sa-new-uid":
        objects.put("serviceaccounts", "ns", "robot", "another-uid")
    elif case == "pod-gone":
        del objects.objects[("pods", "ns", "web")]
    elif case == "wrong-key":
        key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(TokenInvalid):
        _authenticate(auth, tokens.encode(claims, key), audiences)


def test_legacy_secret_token():
    import base64
    objects = FakeObjects()
    account = objects.put("serviceaccounts", "ns", "robot", "sa-uid")
    auth = serviceaccount.Authenticator([RSA_KEY.public_key()], [ISSUER], [ISSUER], objects)
    token = tokens.encode(serviceaccount.legacy_claims("ns", account, "robot-token"), RSA_KEY)
    with pytest.raises(TokenInvalid):
        _authenticate(auth, token)          # no secret holds it
    secret = objects.put("secrets", "ns", "robot-token", "s-uid")
    secret["data"] = {"token": base64.b64encode(token.encode()).decode()}
    user, _ = _authenticate(auth, token)
    assert user.name == "system:serviceaccount:ns:robot"


# --- the ServiceAccount admission's volume --------------------------------------------------

def test_mount_token_volume():
    pod = {"spec": {"initContainers": [{"name": "i"}],
                    "containers": [{"name": "a"}, {"name": "b", "volumeMounts": [
                        {"name": "own", "mountPath": serviceaccount.MOUNT_PATH}]}]}}
    serviceaccount.mount_token(pod)
    volume = pod["spec"]["volumes"][0]
    assert volume["name"].startswith("kube-api-access-") and len(volume["name"]) == 21
    sources = volume["projected"]["sources"]
    assert sources[0] == {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}
    assert sources[1]["configMap"]["name"] == "kube-root-ca.crt"
    mount = {"name": volume["name"], "readOnly": True,
             "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
    assert pod["spec"]["initContainers"][0]["volumeMounts"] == [mount]
    assert pod["spec"]["containers"][0]["volumeMounts"] == [mount]
    assert len(pod["spec"]["containers"][1]["volumeMounts"]) == 1   # its own mount stays
    serviceaccount.mount_token(pod)
    assert len(pod["spec"]["volumes"]) == 1
    assert serviceaccount.should_automount({"automountServiceAccountToken": False}, {}) is False
    assert serviceaccount.should_automount({"automountServiceAccountToken": False},
                                           {"spec": {"automountServiceAccountToken": True}})


# --- the node graph and the Node authorizer --------------------------------------------------

def _pod(name, node, ns="ns", **spec):
    return {"metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}"},
            "spec": {"nodeName": node, "containers": [{"name": "c"}], **spec}}


def test_pod_references():
    pod = _pod("p", "n1", serviceAccountName="robot",
               imagePullSecrets=[{"name": "pull"}],
               containers=[{"name": "c", "env": [
                   {"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-s", "key": "k"}}},
                   {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-c", "key": "k"}}}],
                   "envFrom": [{"configMapRef": {"name": "from-c"}}]}],
               volumes=[{"name": "v1", "secret": {"secretName": "vol-s"}},
                        {"name": "v2", "persistentVolumeClaim": {"claimName": "data"}},
                        {"name": "v3", "ephemeral": {"volumeClaimTemplate": {}}},
                        {"name": "v4", "projected": {"sources": [{"configMap": {"name": "pc"}}]}}])
    assert pod_references(pod) == {
        ("secret", "ns", "pull"), ("secret", "ns", "env-s"), ("secret", "ns", "vol-s"),
        ("configmap", "ns", "env-c"), ("configmap", "ns", "from-c"), ("configmap", "ns", "pc"),
        ("pvc", "ns", "data"), ("pvc", "ns", "p-v3"), ("serviceaccount", "ns", "robot")}


def test_graph_paths_follow_pods_and_volumes():
    graph = Graph()
    graph.set_pod(_pod("a", "n1", volumes=[{"name": "v", "secret": {"secretName": "s"}},
                                            {"name": "d", "persistentVolumeClaim":
                                             {"claimName": "data"}}]))
    graph.set_pod(_pod("b", "n2", volumes=[{"name": "v", "secret": {"secretName": "s"}}]))
    graph.set_pod(_pod("unscheduled", "", volumes=[{"name": "v", "secret": {"secretName": "u"}}]))
    graph.set_pv({"metadata": {"name": "pv1"}, "spec": {
        "claimRef": {"namespace": "ns", "name": "data"},
        "csi": {"driver": "x", "nodePublishSecretRef": {"namespace": "ns", "name": "csi"}}}})
    assert graph.has_path("n1", "secret", "ns", "s") and graph.has_path("n2", "secret", "ns", "s")
    assert not graph.has_path("n3", "secret", "ns", "s")
    assert not graph.has_path("n1", "secret", "ns", "u")
    assert graph.has_path("n1", "pv", "", "pv1") and not graph.has_path("n2", "pv", "", "pv1")
    assert graph.has_path("n1", "secret", "ns", "csi")
    assert not graph.has_path("n2", "secret", "ns", "csi")
    graph.delete_pod("ns", "a")
    assert not graph.has_path("n1", "secret", "ns", "s")
    assert graph.has_path("n2", "secret", "ns", "s")
    assert not graph.has_path("n1", "pv", "", "pv1")
    # Moving a pod (recreated on another node) moves its edges.
    graph.set_pod(_pod("b", "n3", volumes=[{"name": "v", "secret": {"secretName": "s"}}]))
    assert graph.has_path("n3", "secret", "ns", "s")
    assert not graph.has_path("n2", "secret", "ns", "s")
    assert graph.users.keys() == {("secret", "ns", "s")}


class ReadyGraph(Graph):
    ready = True


def _attrs(node, verb, resource, name="", ns="ns", sub="", group=""):
    user = UserInfo(f"system:node:{node}", ("system:nodes", "system:authenticated"))
    return authz.Attributes(user=user, verb=verb, is_resource=True, namespace=ns, group=group,
                            resource=resource, subresource=sub, name=name)


def test_node_authorizer_decisions():
    graph = ReadyGraph()
    graph.set_pod(_pod("a", "n1", serviceAccountName="robot",
                       volumes=[{"name": "v", "configMap": {"name": "cm"}}]))
    node = authz.Node(node_rules(), graph)
    allow, no = authz.Decision.ALLOW, authz.Decision.NO_OPINION
    cases = [
        (_attrs("n1", "get", "configmaps", "cm"), allow),
        (_attrs("n1", "watch", "configmaps", "cm"), allow),
        (_attrs("n2", "get", "configmaps", "cm"), no),
        (_attrs("n1", "list", "configmaps"), no),
        (_attrs("n1", "update", "configmaps", "cm"), no),
        (_attrs("n1", "create", "serviceaccounts", "robot", sub="token"), allow),
        (_attrs("n2", "create", "serviceaccounts", "robot", sub="token"), no),
        (_attrs("n1", "list", "serviceaccounts"), no),
        (_attrs("n1", "update", "leases", "n1", ns="kube-node-lease",
                group="coordination.k8s.io"), allow),
        (_attrs("n1", "update", "leases", "n2", ns="kube-node-lease",
                group="coordination.k8s.io"), no),
        (_attrs("n1", "get", "leases", "n1", ns="default", group="coordination.k8s.io"), no),
        (_attrs("n1", "list", "pods", ns=""), allow),
        (_attrs("n1", "watch", "services", ns=""), allow),
        (_attrs("n1", "get", "endpoints", "kubernetes", ns="default"), allow),
        (_attrs("n1", "create", "events"), allow),
        (_attrs("n1", "patch", "nodes", "n1", ns="", sub="status"), allow),
        (_attrs("n1", "delete", "namespaces", "ns", ns=""), no),
    ]
    for attrs, expected in cases:
        decision, reason = node.authorize(attrs)
        assert decision is expected, (attrs, reason)
    decision, reason = node.authorize(_attrs("n2", "get", "configmaps", "cm"))
    assert reason == "no relationship found between node 'n2' and this object"
    user = authz.Attributes(user=UserInfo("system:node:n1", ("system:authenticated",)),
                            verb="get", is_resource=True, namespace="ns", resource="configmaps",
                            name="cm")
    assert node.authorize(user)[0] is no       # the name alone does not make a node


def test_node_label_rules():
    assert forbidden_labels(["kubernetes.io/hostname", "topology.kubernetes.io/zone",
                             "node.kubernetes.io/instance-type", "beta.kubernetes.io/arch",
                             "kubelet.kubernetes.io/x", "foo.node.kubernetes.io/y",
                             "example.com/team", "plain"]) == []
    assert forbidden_labels(["node-role.kubernetes.io/master", "node-restriction.kubernetes.io/a",
                             "x.node-restriction.kubernetes.io/b", "k8s.io/z",
                             "foo.k8s.io/w"]) == sorted(
        ["node-role.kubernetes.io/master", "node-restriction.kubernetes.io/a",
         "x.node-restriction.kubernetes.io/b", "k8s.io/z", "foo.k8s.io/w"])
    assert modified_labels({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == {"b", "c"}
