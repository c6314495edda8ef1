"""Service-account tokens against the real server: TokenRequest (and kubectl create token
with every kubectl build), bearer authentication, TokenReview, forged and invalidated
tokens, and the ServiceAccount admission plugin."""
from __future__ import annotations

import json
import time

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from kubesmith.apiserver import serviceaccount, tokens
from tests.e2e.kubectl_versions import kubectl_builds

BUILDS = kubectl_builds()
ISSUER = "https://kubernetes.default.svc.cluster.local"


@pytest.fixture
def ns(cluster):
    name = cluster.new_namespace("tok-")
    yield name
    cluster.request("DELETE", f"/api/v1/namespaces/{name}")


def _create(cluster, path, body, status=201):
    answer = cluster.request("POST", path, body)
    assert answer.status == status, answer.body
    return answer.json()


def _account(cluster, ns, name, **more):
    return _create(cluster, f"/api/v1/namespaces/{ns}/serviceaccounts",
                   {"metadata": {"name": name}, **more})


def _token(cluster, ns, name, spec=None, status=201):
    answer = cluster.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{name}/token",
                             {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                              "spec": spec or {}})
    assert answer.status == status, answer.body
    return answer.json()


def _as(cluster, token, method, path, body=None):
    return cluster.request(method, path, body, cert=None,
                           headers={"Authorization": f"Bearer {token}"})


def _wait_status(call, wanted, timeout=3.0):
    """RBAC and the watch caches follow writes within moments; poll a little."""
    deadline = time.monotonic() + timeout
    while True:
        answer = call()
        if answer.status == wanted or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def _view(cluster, ns, account):
    _create(cluster, f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
            {"metadata": {"name": f"{account}-view"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "view"},
             "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}]})


def test_no_credentials_and_no_bindings(cluster, ns):
    assert cluster.request("GET", f"/api/v1/namespaces/{ns}/pods", cert=None).status == 401
    cert = cluster.client_cert("stranger", "nobody-team")
    assert cluster.request("GET", f"/api/v1/namespaces/{ns}/pods", cert=cert).status == 403


def test_token_request_and_bearer_authentication(cluster, ns):
    account = _account(cluster, ns, "robot")
    answer = _token(cluster, ns, "robot", {"expirationSeconds": 1200})
    assert answer["kind"] == "TokenRequest" and answer["metadata"]["name"] == "robot"
    assert answer["spec"]["audiences"] == [ISSUER]
    assert answer["spec"]["expirationSeconds"] == 1200
    assert answer["status"]["expirationTimestamp"].endswith("Z")
    token = answer["status"]["token"]
    header, claims = tokens.peek(token)
    assert header["alg"] == "ES256" and claims["iss"] == ISSUER
    assert claims["exp"] - claims["iat"] == 1200
    assert claims["kubernetes.io"]["serviceaccount"] == {"name": "robot",
                                                          "uid": account["metadata"]["uid"]}
    pods = f"/api/v1/namespaces/{ns}/pods"
    # Authenticated, but nothing granted yet.
    denied = _as(cluster, token, "GET", pods)
    assert denied.status == 403
    assert f'User "system:serviceaccount:{ns}:robot" cannot list' in denied.json()["message"]
    _view(cluster, ns, "robot")
    assert _wait_status(lambda: _as(cluster, token, "GET", pods), 200).status == 200
    assert _as(cluster, token, "GET", "/api/v1/namespaces/kube-system/pods").status == 403
    who = _as(cluster, token, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
              {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).json()
    info = who["status"]["userInfo"]
    assert info["username"] == f"system:serviceaccount:{ns}:robot"
    assert info["uid"] == account["metadata"]["uid"]
    assert info["groups"] == ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                              "system:authenticated"]

    # TokenReview answers with the same authenticator.
    review = _create(cluster, "/apis/authentication.k8s.io/v1/tokenreviews",
                     {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "spec": {"token": token}})["status"]
    assert review["authenticated"] and review["audiences"] == [ISSUER]
    assert review["user"]["username"] == f"system:serviceaccount:{ns}:robot"
    review = _create(cluster, "/apis/authentication.k8s.io/v1/tokenreviews",
                     {"spec": {"token": token, "audiences": ["vault"]}})["status"]
    assert not review["authenticated"] and "audiences" in review["error"]
    vault = _token(cluster, ns, "robot", {"audiences": ["vault"]})["status"]["token"]
    review = _create(cluster, "/apis/authentication.k8s.io/v1/tokenreviews",
                     {"spec": {"token": vault, "audiences": ["vault"]}})["status"]
    assert review["authenticated"] and review["audiences"] == ["vault"]
    # A token for another audience is no API credential.
    assert _as(cluster, vault, "GET", pods).status == 401


def test_forged_and_invalidated_tokens(cluster, ns):
    account = _account(cluster, ns, "robot")
    _view(cluster, ns, "robot")
    pods = f"/api/v1/namespaces/{ns}/pods"
    token = _token(cluster, ns, "robot")["status"]["token"]
    assert _wait_status(lambda: _as(cluster, token, "GET", pods), 200).status == 200
    key = tokens.load_private_key(cluster.pki / "sa.key")
    now = int(time.time())
    good = serviceaccount.claims(ISSUER, [ISSUER], ns, account, 3600, now)
    assert _as(cluster, tokens.encode(good, key), "GET", pods).status == 200
    header, payload, signature = token.split(".")
    tampered = dict(tokens.peek(token)[1], sub=f"system:serviceaccount:{ns}:other")
    forged = [
        tokens.encode(good, ec.generate_private_key(ec.SECP256R1())),       # wrong key
        f"{header}.{tokens.b64encode(json.dumps(tampered).encode())}.{signature}",
        f"{header}.{tokens.b64encode(tokens.peek(token)[1]['sub'].encode())}.{signature}",
        f"{header}.{payload}.{signature[:-4]}AAAA",
        f"{header}.{payload}.",
        tokens.encode(dict(good, iss="https://evil.example"), key),           # wrong issuer
        tokens.encode(dict(good, exp=now - 300, iat=now - 4000, nbf=now - 4000), key),
        tokens.encode(dict(good, aud=["someone-else"]), key),
        "not-a-token",
    ]
    for bad in forged:
        answer = _as(cluster, bad, "GET", pods)
        assert answer.status == 401, bad
        assert answer.json()["reason"] == "Unauthorized"
    # Deleting the account invalidates its tokens; a new account of the same name (new
    # uid) does not bring them back.
    assert cluster.request("DELETE", f"/api/v1/namespaces/{ns}/serviceaccounts/robot").status \
        == 200
    assert _wait_status(lambda: _as(cluster, token, "GET", pods), 401).status == 401
    _account(cluster, ns, "robot")
    assert _as(cluster, token, "GET", pods).status == 401
    fresh = _token(cluster, ns, "robot")["status"]["token"]
    assert _wait_status(lambda: _as(cluster, fresh, "GET", pods), 200).status == 200


def test_token_request_validation_and_pod_binding(cluster, ns):
    _account(cluster, ns, "robot")
    _view(cluster, ns, "robot")
    too_short = _token(cluster, ns, "robot", {"expirationSeconds": 60}, status=422)
    assert "may not specify a duration less than 10 minutes" in too_short["message"]
    missing = _token(cluster, ns, "ghost", status=404)
    assert missing["message"] == 'serviceaccounts "ghost" not found'
    pod = _create(cluster, f"/api/v1/namespaces/{ns}/pods",
                  {"metadata": {"name": "web"},
                   "spec": {"serviceAccountName": "robot", "nodeName": "n1",
                            "containers": [{"name": "c", "image": "busybox"}]}})
    uid = pod["metadata"]["uid"]
    wrong_uid = _token(cluster, ns, "robot", {"boundObjectRef": {
        "kind": "Pod", "apiVersion": "v1", "name": "web", "uid": "not-the-uid"}}, status=409)
    assert "does not match the UID in record" in wrong_uid["message"]
    _token(cluster, ns, "robot", {"boundObjectRef": {"kind": "ConfigMap", "name": "x"}},
           status=400)
    bound = _token(cluster, ns, "robot", {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                                                             "name": "web"}})
    assert bound["spec"]["boundObjectRef"]["uid"] == uid
    token = bound["status"]["token"]
    private = tokens.peek(token)[1]["kubernetes.io"]
    assert private["pod"] == {"name": "web", "uid": uid} and private["node"] == {"name": "n1"}
    pods = f"/api/v1/namespaces/{ns}/pods"
    assert _wait_status(lambda: _as(cluster, token, "GET", pods), 200).status == 200
    who = _as(cluster, token, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
              {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).json()
    extra = who["status"]["userInfo"]["extra"]
    assert extra["authentication.kubernetes.io/pod-name"] == ["web"]
    assert extra["authentication.kubernetes.io/pod-uid"] == [uid]
    # The kubelet's 3607 s tokens are issued for a year, with a warning time.
    kubelet = _token(cluster, ns, "robot", {"expirationSeconds": 3607, "boundObjectRef": {
        "kind": "Pod", "apiVersion": "v1", "name": "web"}})["status"]["token"]
    claims = tokens.peek(kubelet)[1]
    assert claims["exp"] - claims["iat"] == 365 * 24 * 3600
    assert claims["kubernetes.io"]["warnafter"] == claims["iat"] + 3607
    # The token goes with the pod.
    assert cluster.request("DELETE", f"{pods}/web?gracePeriodSeconds=0").status == 200
    assert _wait_status(lambda: _as(cluster, token, "GET", pods), 401).status == 401
    # A token bound to a node lives as long as the node.
    node_name = f"bound-{ns}"
    node = _create(cluster, "/api/v1/nodes", {"metadata": {"name": node_name}})
    node_token = _token(cluster, ns, "robot", {"boundObjectRef": {
        "kind": "Node", "apiVersion": "v1", "name": node_name}})["status"]["token"]
    assert tokens.peek(node_token)[1]["kubernetes.io"]["node"] == {
        "name": node_name, "uid": node["metadata"]["uid"]}
    assert _wait_status(lambda: _as(cluster, node_token, "GET", pods), 200).status == 200
    assert cluster.request("DELETE", f"/api/v1/nodes/{node_name}").status == 200
    assert _wait_status(lambda: _as(cluster, node_token, "GET", pods), 401).status == 401


def test_service_account_admission(cluster, ns):
    pods = f"/api/v1/namespaces/{ns}/pods"
    spec = {"containers": [{"name": "c", "image": "busybox"}],
            "initContainers": [{"name": "i", "image": "busybox"}]}
    refused = cluster.request("POST", pods, {"metadata": {"name": "p"}, "spec": spec})
    assert refused.status == 403
    assert refused.json()["message"] == (
        f'pods "p" is forbidden: error looking up service account {ns}/default: '
        'serviceaccount "default" not found')
    _account(cluster, ns, "default")
    pod = _create(cluster, pods, {"metadata": {"name": "p"}, "spec": spec})
    pod_spec = pod["spec"]
    assert pod_spec["serviceAccountName"] == "default" and pod_spec["serviceAccount"] == "default"
    [volume] = pod_spec["volumes"]
    assert volume["name"].startswith("kube-api-access-")
    assert [list(s) for s in volume["projected"]["sources"]] == [
        ["serviceAccountToken"], ["configMap"], ["downwardAPI"]]
    assert volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] == 3607
    mount = {"name": volume["name"], "readOnly": True,
             "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
    assert pod_spec["containers"][0]["volumeMounts"] == [mount]
    assert pod_spec["initContainers"][0]["volumeMounts"] == [mount]
    # automountServiceAccountToken: false on the pod, or on its account.
    plain = _create(cluster, pods, {"metadata": {"name": "q"},
                                    "spec": dict(spec, automountServiceAccountToken=False)})
    assert "volumes" not in plain["spec"]
    _account(cluster, ns, "quiet", automountServiceAccountToken=False)
    quiet = _create(cluster, pods, {"metadata": {"name": "r"},
                                    "spec": dict(spec, serviceAccountName="quiet")})
    assert "volumes" not in quiet["spec"]
    missing = cluster.request("POST", pods, {"metadata": {"name": "s"},
                                             "spec": dict(spec, serviceAccountName="ghost")})
    assert missing.status == 403
    assert missing.json()["message"].endswith('serviceaccount "ghost" not found')


@pytest.mark.skipif(not BUILDS, reason="no kubectl on this machine")
def test_kubectl_create_token_and_token_kubeconfig(cluster, ns):
    _account(cluster, ns, "robot")
    _view(cluster, ns, "robot")
    _create(cluster, f"/api/v1/namespaces/{ns}/configmaps",
            {"metadata": {"name": "hello"}, "data": {"a": "b"}})
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    for version, binary in sorted(BUILDS.items()):
        token = cluster.kubectl("create", "token", "robot", "-n", ns, "--duration=15m",
                                binary=binary).stdout.strip()
        assert tokens.peek(token)[1]["sub"] == f"system:serviceaccount:{ns}:robot", version
        config = {"apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
                  "users": [{"name": "robot", "user": {"token": token}}],
                  "contexts": [{"name": "robot", "context": {
                      "cluster": admin["clusters"][0]["name"], "user": "robot",
                      "namespace": ns}}],
                  "current-context": "robot"}
        path = cluster.base / f"robot-{version}.conf"
        path.write_text(yaml.safe_dump(config))
        deadline = time.monotonic() + 3
        while True:
            listed = cluster.kubectl("--kubeconfig", str(path), "get", "configmaps", "-o",
                                     "name", binary=binary, check=False)
            if listed.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert "configmap/hello" in listed.stdout, (version, listed.stderr)
        denied = cluster.kubectl("--kubeconfig", str(path), "delete", "configmap", "hello",
                                 binary=binary, check=False)
        assert denied.returncode != 0 and "forbidden" in denied.stderr, version
    bad = cluster.kubectl("create", "token", "robot", "-n", ns, "--duration=1m", check=False)
    assert bad.returncode != 0 and "10 minutes" in bad.stderr
