"""Controllers as their own ServiceAccounts: ServiceAccountCredentials' clients and
token renewal, the manager's own narrow identity, and controllers writing as their
accounts against the real API server (the roles: tests/apiserver/test_controller_roles)."""
from __future__ import annotations

import asyncio
import ssl
import time
import uuid

import pytest

from kubesmith.apiserver import bootstrap_policy
from kubesmith.client.kubeconfig import ClientConfig
from kubesmith.client.ratelimit import TokenBucket
from kubesmith.client.rest import (ApiClient, ApiError, TransportError, is_conflict,
                                   is_forbidden, is_unauthorized)
from kubesmith.controllers import credentials as credentials_module
from kubesmith.controllers.credentials import (CONTROLLER_SERVICE_ACCOUNTS,
                                               ServiceAccountCredentials)
from kubesmith.controllers.manager import load_controllers


def _deployment(name: str) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}


def _replicaset(name: str) -> dict:
    body = _deployment(name)
    body["kind"] = "ReplicaSet"
    return body


def _manager_client(cluster) -> ApiClient:
    """A client with the controller manager's own certificate identity."""
    cert = cluster.client_cert("system:kube-controller-manager")
    config = ClientConfig(server=cluster.url, ssl_context=cluster.ssl_context(cert))
    return ApiClient(config, component="kube-controller-manager")


async def _forbidden(call) -> bool:
    try:
        await call
    except Exception as err:      # noqa: BLE001 - the test inspects it
        if is_forbidden(err):
            return True
        raise
    return False


# --- mapping and client configs (no server) -------------------------------------------

def test_every_registered_controller_has_an_account_with_a_role():
    accounts = set(bootstrap_policy.controller_service_accounts())
    namespaced = {b["subjects"][0]["name"] for b in bootstrap_policy.role_bindings()
                  if b["roleRef"]["name"].startswith("system:controller:")}
    for name in load_controllers():
        assert name in CONTROLLER_SERVICE_ACCOUNTS, name
    for account in CONTROLLER_SERVICE_ACCOUNTS.values():
        assert account in accounts | namespaced, account


def test_token_only_config_keeps_server_verification_and_drops_the_certificate(cluster):
    admin = ClientConfig(server=cluster.url, ssl_context=cluster.ssl_context(), token="x")
    plain = admin.with_token("secret")
    assert (plain.server, plain.token, plain.token_file) == (cluster.url, "secret", None)
    assert plain.ssl_context.verify_mode == admin.ssl_context.verify_mode
    assert plain.ssl_context.check_hostname == admin.ssl_context.check_hostname
    assert plain.ssl_context.get_ca_certs() == admin.ssl_context.get_ca_certs()



def test_token_only_config_of_an_insecure_config_stays_insecure():
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    plain = ClientConfig(server="https://127.0.0.1:1", ssl_context=insecure).with_token("t")
    assert (plain.ssl_context.check_hostname, plain.ssl_context.verify_mode) == \
        (False, ssl.CERT_NONE)


class _FakeRoot:
    """The root client's surface ServiceAccountCredentials uses; token requests fail
    while `failing` is set."""

    def __init__(self):
        self.config = ClientConfig(server="https://127.0.0.1:1",
                                   ssl_context=ssl.create_default_context())
        self.limiter = TokenBucket(7, 9)
        self.timeout, self.max_retries = 5.0, 2
        self.user_agent = "kube-controller-manager/v0 (linux/amd64) kubesmith"
        self.accounts: list[str] = []
        self.issued = 0
        self.failing = False

    async def get(self, rt, name, namespace):
        if name not in self.accounts:
            raise ApiError({"kind": "Status", "code": 404, "reason": "NotFound"})
        return {"metadata": {"name": name}}

    async def create(self, rt, body, namespace):
        self.accounts.append(body["metadata"]["name"])
        return body

    async def request(self, method, path, *, body=None):
        assert (method, path) == ("POST", "/api/v1/namespaces/kube-system/"
                                          "serviceaccounts/job-controller/token")
        assert body["spec"] == {"expirationSeconds": 3600}
        if self.failing:
            raise TransportError("connection refused")
        self.issued += 1
        end = time.time() + 0.2      # the server may shorten what was asked
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(end)) + \
            f".{int(end % 1 * 1000):03d}Z"
        return {"status": {"token": f"token-{self.issued}", "expirationTimestamp": stamp}}


def test_renewal_keeps_the_token_through_failures(monkeypatch):
    monkeypatch.setattr(credentials_module, "MIN_REFRESH_DELAY", 0.02)
    monkeypatch.setattr(credentials_module, "RETRY_INITIAL", 0.02)
    root = _FakeRoot()

    async def scenario():
        async with ServiceAccountCredentials(root) as credentials:  # type: ignore[arg-type]
            client = await credentials.client_for("job-controller")
            assert root.accounts == ["job-controller"]
            assert client._current_token() == "token-1"
            assert (client.limiter.qps, client.limiter.burst) == (7, 9)
            assert (client.timeout, client.max_retries) == (5.0, 2)
            assert client.user_agent == root.user_agent + "/job-controller"
            root.failing = True
            await asyncio.sleep(0.4)
            assert client._current_token() == "token-1"    # kept while renewal fails
            root.failing = False
            deadline = time.monotonic() + 5
            while client._current_token() == "token-1":
                assert time.monotonic() < deadline, "token not renewed"
                await asyncio.sleep(0.02)
            assert root.accounts == ["job-controller"]
        assert client._session is None

    asyncio.run(asyncio.wait_for(scenario(), 10))

# --- against the API server ---------------------------------------------------------------

def test_controller_clients_act_as_their_service_accounts(cluster, connect):
    namespace = cluster.new_namespace("creds-")

    async def scenario():
        async with connect() as admin, _manager_client(cluster) as manager:
            deployment = await admin.create("apps/v1 deployments", _deployment("web"),
                                            namespace)
            await admin.create("v1 secrets", {"metadata": {"name": "s"},
                                              "stringData": {"a": "b"}}, namespace)
            # The manager itself reads everything but writes none of it.
            await manager.list("apps/v1 deployments", namespace)
            assert await _forbidden(manager.update_status("apps/v1 deployments",
                                                          deployment, namespace))
            assert await _forbidden(manager.create("apps/v1 replicasets",
                                                   _replicaset("rs0"), namespace))
            async with ServiceAccountCredentials(manager) as credentials:
                client = await credentials.client_for("deployment-controller")
                assert client is await credentials.client_for("deployment-controller")
                assert client.user_agent.startswith("kube-controller-manager/")
                assert client.user_agent.endswith("/deployment-controller")
                # A running deployment controller may write it too: retry on conflict.
                for attempt in range(20):
                    live = await admin.get("apps/v1 deployments", "web", namespace)
                    live["status"] = dict(live.get("status") or {}, observedGeneration=7)
                    try:
                        updated = await client.update_status("apps/v1 deployments", live,
                                                             namespace)
                        break
                    except ApiError as err:
                        if not is_conflict(err) or attempt == 19:
                            raise
                assert updated["status"]["observedGeneration"] == 7
                await client.create("apps/v1 replicasets", _replicaset("web-1"), namespace)
                assert await _forbidden(client.delete("v1 secrets", "s", namespace))
                assert await _forbidden(client.get("v1 secrets", "s", namespace))
                review = await client.create(
                    "selfsubjectreviews.authentication.k8s.io",
                    {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
                assert review["status"]["userInfo"]["username"] == \
                    "system:serviceaccount:kube-system:deployment-controller"
            account = await admin.get("v1 serviceaccounts", "deployment-controller",
                                      "kube-system")
            assert account["metadata"]["name"] == "deployment-controller"

    asyncio.run(asyncio.wait_for(scenario(), 60))
    cluster.request("DELETE", f"/api/v1/namespaces/{namespace}")


def test_tokens_are_renewed_before_they_expire(cluster, connect):
    async def scenario():
        async with connect() as admin:
            # 3600 s tokens renewed at 0.1% of their life: every few seconds.
            async with ServiceAccountCredentials(admin, refresh_at=0.001) as credentials:
                client = await credentials.client_for("ttl-controller")
                first = client._current_token()
                deadline = time.monotonic() + 20
                while client._current_token() == first:
                    assert time.monotonic() < deadline, "token not renewed"
                    await asyncio.sleep(0.2)
                await client.list("v1 nodes")     # the renewed token works
                refresher = credentials._accounts["ttl-controller"].refresher
            assert refresher is not None and refresher.done()
            with pytest.raises(RuntimeError):
                await credentials.client_for("ttl-controller")

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_refused_token_is_renewed_at_once(cluster, connect):
    """A deleted ServiceAccount's tokens stop working: the first 401 makes the account
    again and fetches a new token, long before the usual renewal."""
    account = f"credentials-test-{uuid.uuid4().hex[:6]}"
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    reviews = "selfsubjectreviews.authentication.k8s.io"

    async def scenario():
        async with connect() as admin, ServiceAccountCredentials(admin) as credentials:
            client = await credentials.client_for(account)
            await client.create(reviews, review)
            first = await admin.get("v1 serviceaccounts", account, "kube-system")
            await admin.delete("v1 serviceaccounts", account, "kube-system")
            deadline = time.monotonic() + 20
            refused = False
            while True:
                assert time.monotonic() < deadline, f"refused={refused}, never renewed"
                try:
                    answer = await client.create(reviews, review)
                    if refused:
                        break
                except ApiError as err:
                    assert is_unauthorized(err), err
                    refused = True
                await asyncio.sleep(0.1)
            assert answer["status"]["userInfo"]["username"] == \
                f"system:serviceaccount:kube-system:{account}"
            again = await admin.get("v1 serviceaccounts", account, "kube-system")
            assert again["metadata"]["uid"] != first["metadata"]["uid"]
            await admin.delete("v1 serviceaccounts", account, "kube-system")

    asyncio.run(asyncio.wait_for(scenario(), 60))

def test_the_running_manager_writes_as_the_controllers_accounts(controller_manager):
    """The folder's controller manager runs as system:kube-controller-manager with
    --use-service-account-credentials: every controller that has an account writes through
    a client of it (the workload tests then exercise those clients under RBAC)."""
    clients = controller_manager.manager.clients
    assert {"deployment", "replicaset", "garbagecollector", "namespace"} <= set(clients)
    assert {name: client.user_agent.rsplit("/", 1)[1] for name, client in clients.items()} \
        == {name: CONTROLLER_SERVICE_ACCOUNTS[name] for name in clients}
