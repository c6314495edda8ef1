"""Service-account issuer discovery against the real server: the OpenID configuration and
the JWKS, a TokenRequest token verified with PyJWT from the published key, who may read
them (every service account; not a user without bindings, not without credentials),
kubectl get --raw, and the --service-account-jwks-uri check."""
from __future__ import annotations

import json
import types

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kubesmith.apiserver import bootstrap_policy, issuerdiscovery, options, tokens
from tests.e2e.kubectl_versions import kubectl_builds

ISSUER = "https://kubernetes.default.svc.cluster.local"
CONFIG = "/.well-known/openid-configuration"
JWKS = "/openid/v1/jwks"


@pytest.fixture
def ns(cluster):
    name = cluster.new_namespace("oidc-")
    yield name
    cluster.request("DELETE", f"/api/v1/namespaces/{name}")


def _sa_token(cluster, ns, name="reader"):
    """A TokenRequest token for a fresh ServiceAccount with no bindings of its own."""
    answer = cluster.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts",
                             {"metadata": {"name": name}})
    assert answer.status == 201, answer.body
    answer = cluster.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{name}/token",
                             {"apiVersion": "authentication.k8s.io/v1",
                              "kind": "TokenRequest", "spec": {}})
    assert answer.status == 201, answer.body
    return answer.json()["status"]["token"]


def _bearer(cluster, path, token):
    """GET as the token's bearer only (no client certificate to fall back on)."""
    return cluster.request("GET", path, cert=None, headers={"Authorization": f"Bearer {token}"})


def test_configuration_document(cluster):
    answer = cluster.request("GET", CONFIG)
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Cache-Control"] == "public, max-age=3600"
    doc = answer.json()
    keys = cluster.request("GET", JWKS).json()["keys"]
    assert doc == {
        "issuer": ISSUER,
        # upstream's default: the JWKS path on the server's own external address
        "jwks_uri": f"https://127.0.0.1:{cluster.port}{JWKS}",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": sorted({k["alg"] for k in keys}),
    }


def test_jwks_verifies_issued_tokens(cluster, ns):
    answer = cluster.request("GET", JWKS)
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"] == "application/jwk-set+json"
    keys = answer.json()["keys"]
    published = tokens.load_public_keys(cluster.pki / "sa.pub")
    assert [k["kid"] for k in keys] == [tokens.key_id(k) for k in published]
    for key in keys:
        assert key["use"] == "sig" and key["alg"] in ("RS256", "ES256", "ES384", "ES512")
        members = {"n", "e"} if key["kty"] == "RSA" else {"crv", "x", "y"}
        assert set(key) == {"use", "kty", "kid", "alg"} | members
    token = _sa_token(cluster, ns)
    header = jwt.get_unverified_header(token)
    match = [k for k in keys if k["kid"] == header["kid"]]
    assert len(match) == 1, (header, keys)
    assert header["alg"] == match[0]["alg"]
    claims = jwt.decode(token, jwt.PyJWK(match[0]).key, algorithms=[match[0]["alg"]],
                        audience=ISSUER, issuer=ISSUER)
    assert claims["sub"] == f"system:serviceaccount:{ns}:reader"
    # A key that is not the issuer's does not verify it.
    other = jwt.PyJWK(issuerdiscovery.jwk(tokens.verify_key(
        ec.generate_private_key(ec.SECP256R1()).public_key()))).key
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, other, algorithms=["ES256"], audience=ISSUER)


def test_who_may_read(cluster, ns):
    token = _sa_token(cluster, ns)
    for path in (CONFIG, JWKS):
        assert _bearer(cluster, path, token).status == 200, path
        stranger = cluster.client_cert("oidc-stranger", "nobody-team")
        answer = cluster.request("GET", path, cert=stranger)
        assert answer.status == 403, answer.body
        assert answer.json()["reason"] == "Forbidden"
        assert cluster.request("GET", path, cert=None).status == 401
    # Only the exact paths; neither is an API group.
    assert cluster.request("GET", CONFIG + "/").status == 404
    groups = cluster.request("GET", "/apis").json()["groups"]
    assert not any("openid" in g["name"] or "well-known" in g["name"] for g in groups)


def test_default_policy(cluster):
    base = "/apis/rbac.authorization.k8s.io/v1"
    role = cluster.request(
        "GET", f"{base}/clusterroles/system:service-account-issuer-discovery").json()
    assert role["rules"] == [{"nonResourceURLs": [CONFIG, JWKS], "verbs": ["get"]}]
    binding = cluster.request(
        "GET", f"{base}/clusterrolebindings/system:service-account-issuer-discovery").json()
    assert binding["roleRef"]["name"] == "system:service-account-issuer-discovery"
    assert binding["subjects"] == [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io",
                                    "name": "system:serviceaccounts"}]
    names = {r["metadata"]["name"] for r in bootstrap_policy.cluster_roles()}
    assert "system:service-account-issuer-discovery" in names


@pytest.mark.skipif(not kubectl_builds(), reason="no kubectl on this machine")
def test_kubectl_get_raw(cluster):
    for version, binary in sorted(kubectl_builds().items()):
        out = cluster.kubectl("get", "--raw", CONFIG, binary=binary).stdout
        assert json.loads(out)["issuer"] == ISSUER, version
        keys = json.loads(cluster.kubectl("get", "--raw", JWKS, binary=binary).stdout)
        assert keys["keys"], version


# --- without a live server ---------------------------------------------------------------

def _flags(tmp_path, *more):
    """The least command line options.parse accepts, plus `more`."""
    (tmp_path / "tls.crt").write_text("x")
    (tmp_path / "tls.key").write_text("x")
    return ["--etcd-servers=https://127.0.0.1:2379", f"--tls-cert-file={tmp_path}/tls.crt",
            f"--tls-private-key-file={tmp_path}/tls.key", *more]


@pytest.mark.parametrize("value", ["http://issuer.example/openid/v1/jwks", "not a url",
                                   "https://", "https://host:99999/jwks"])
def test_bad_jwks_uri_refuses_to_start(tmp_path, capsys, value):
    argv = _flags(tmp_path, f"--service-account-jwks-uri={value}")
    with pytest.raises(options.OptionsError, match="--service-account-jwks-uri"):
        options.parse(argv)
    from kubesmith.apiserver import main
    assert main.main(argv) == 1
    assert "--service-account-jwks-uri" in capsys.readouterr().err


def test_jwks_uri_flag(tmp_path):
    uri = "https://oidc.example/cluster/openid/v1/jwks"
    assert options.parse(_flags(tmp_path, f"--service-account-jwks-uri={uri}")
                         ).service_account_jwks_uri == uri
    assert options.parse(_flags(tmp_path)).service_account_jwks_uri is None


def _server(**opts):
    """A stand-in with just what for_server reads, and its service-account Setup."""
    base = dict(service_account_issuer=[], service_account_key_file=[],
                service_account_signing_key_file=None, service_account_jwks_uri=None,
                advertise_address=None, bind_address="0.0.0.0", secure_port=6443)
    return types.SimpleNamespace(options=types.SimpleNamespace(**{**base, **opts}))


def _key_file(tmp_path, key, name="sa.key"):
    """A private key as the PEM file the service-account flags take."""
    from cryptography.hazmat.primitives import serialization
    path = tmp_path / name
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return str(path)


def test_not_served_without_issuer_or_keys(tmp_path):
    assert issuerdiscovery.for_server(_server()) is None
    assert issuerdiscovery.for_server(_server(service_account_issuer=[ISSUER])) is None
    key = _key_file(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    # Upstream serves nothing for an issuer that is not an https URL.
    assert issuerdiscovery.for_server(_server(
        service_account_issuer=["kubesmith"], service_account_signing_key_file=key)) is None


def test_documents_for_rsa_and_ec_keys(tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    files = [_key_file(tmp_path, rsa_key, "a.key"), _key_file(tmp_path, ec_key, "b.key")]
    found = issuerdiscovery.for_server(_server(
        service_account_issuer=[ISSUER, "https://old.example"], service_account_key_file=files,
        service_account_signing_key_file=files[0], advertise_address="fd00::1"))
    config = json.loads(found.config)
    assert config["issuer"] == ISSUER
    assert config["jwks_uri"] == "https://[fd00::1]:6443/openid/v1/jwks"
    assert config["id_token_signing_alg_values_supported"] == ["ES384", "RS256"]
    rsa_jwk, ec_jwk = json.loads(found.keyset)["keys"]
    assert rsa_jwk["kty"] == "RSA" and rsa_jwk["e"] == "AQAB"
    assert rsa_jwk["kid"] == tokens.key_id(rsa_key.public_key())
    assert jwt.PyJWK(rsa_jwk).key.public_numbers() == rsa_key.public_key().public_numbers()
    assert ec_jwk["crv"] == "P-384" and ec_jwk["alg"] == "ES384"
    assert jwt.PyJWK(ec_jwk).key.public_numbers() == ec_key.public_key().public_numbers()
    signed = tokens.encode({"iss": ISSUER}, rsa_key)
    assert jwt.decode(signed, jwt.PyJWK(rsa_jwk).key, algorithms=["RS256"],
                      options={"verify_aud": False})["iss"] == ISSUER
    given = issuerdiscovery.for_server(_server(
        service_account_issuer=[ISSUER], service_account_signing_key_file=files[1],
        service_account_jwks_uri="https://oidc.example/keys"))
    assert json.loads(given.config)["jwks_uri"] == "https://oidc.example/keys"
    assert given.handle("/openid/v1/jwks/") is None
