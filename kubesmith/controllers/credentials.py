"""Each controller writes as its own ServiceAccount (--use-service-account-credentials).

With the flag, upstream's kube-controller-manager gives every controller a client of its
own: ServiceAccount kube-system/<account> (made when missing), authenticated by a token
from the TokenRequest API and renewed before it expires. The API server's bootstrap
policy binds ClusterRole system:controller:<account> to each account; the manager's own
identity (system:kube-controller-manager) may only list and watch, make those accounts
and ask for their tokens. The shared informers stay on the manager's own client.

    credentials = ServiceAccountCredentials(root_client)
    client = await credentials.client_for(CONTROLLER_SERVICE_ACCOUNTS["deployment"])
    ...
    await credentials.close()
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import time
from dataclasses import dataclass, field

from kubesmith.client.rest import (ApiClient, ApiError, TransportError, is_already_exists,
                                   is_not_found, resource_path, resource_type)

log = logging.getLogger(__name__)

NAMESPACE = "kube-system"
# Upstream's controller token source asks for an hour and renews well before the end.
TOKEN_EXPIRATION_SECONDS = 3600
REFRESH_AT = 0.8            # fraction of a token's life after which it is renewed
RETRY_INITIAL, RETRY_MAX = 1.0, 30.0
MIN_REFRESH_DELAY = 1.0
# A token refused (401) is renewed at once, but not more often than this.
MIN_REISSUE_INTERVAL = 1.0
TOKEN_WAIT = 10.0           # how long a just-made account may take to become visible

# kubesmith's controller names (--controllers) -> the account each one writes as
# (upstream's ClientBuilder.ClientOrDie names).
CONTROLLER_SERVICE_ACCOUNTS: dict[str, str] = {
    "cronjob": "cronjob-controller",
    "daemonset": "daemon-set-controller",
    "deployment": "deployment-controller",
    "disruption": "disruption-controller",
    "endpoint": "endpoint-controller",
    "endpointslice": "endpointslice-controller",
    "endpointslicemirroring": "endpointslicemirroring-controller",
    "garbagecollector": "generic-garbage-collector",
    "job": "job-controller",
    "namespace": "namespace-controller",
    # Node IPAM and taint-based eviction reuse the node controller's account, as upstream.
    "nodeipam": "node-controller",
    "nodelifecycle": "node-controller",
    "taint-eviction-controller": "node-controller",
    "podgc": "pod-garbage-collector",
    "replicaset": "replicaset-controller",
    "replicationcontroller": "replication-controller",
    "resourcequota": "resourcequota-controller",
    "serviceaccount": "service-account-controller",
    "statefulset": "statefulset-controller",
    "ttl": "ttl-controller",
    "ttl-after-finished": "ttl-after-finished-controller",
    "root-ca-cert-publisher": "root-ca-cert-publisher",
    "clusterrole-aggregation": "clusterrole-aggregation-controller",
    "csrsigning": "certificate-controller",
    "csrapproving": "certificate-controller",
    "csrcleaner": "certificate-controller",
    "bootstrapsigner": "bootstrap-signer",
    "tokencleaner": "token-cleaner",
    "legacy-serviceaccount-token-cleaner": "legacy-service-account-token-cleaner",
}


def _expires_in(token_request: dict, asked: int) -> float:
    """Seconds the issued token is valid for (the server may shorten what was asked)."""
    stamp = (token_request.get("status") or {}).get("expirationTimestamp")
    if isinstance(stamp, str):
        try:
            end = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            now = datetime.datetime.now(datetime.timezone.utc)
            return max((end - now).total_seconds(), 0.0)
        except ValueError:
            pass
    return float(asked)


@dataclass
class _Account:
    client: ApiClient
    refresher: asyncio.Task | None = None
    issued_at: float = 0.0      # time.monotonic() when the current token was set
    expires_at: float = 0.0     # ... and when it ends
    # Set when the server refused the current token (a deleted and remade account,
    # say): the refresher renews it now rather than at its usual time.
    refused: asyncio.Event = field(default_factory=asyncio.Event)

    def on_unauthorized(self, sent: float) -> None:
        if sent >= self.issued_at:      # not a request made with an older token
            self.refused.set()


class ServiceAccountCredentials:
    """Clients that act as kube-system ServiceAccounts, made with the `root` client.

    One client per account (controllers sharing an account share it), with the root
    client's server verification, rate limits and timeouts, and its user agent followed
    by "/<account>" as upstream's. Tokens are renewed in the background after
    `refresh_at` of their life; `close()` stops that and closes the clients.
    """

    def __init__(self, root: ApiClient, *, namespace: str = NAMESPACE,
                 expiration_seconds: int = TOKEN_EXPIRATION_SECONDS,
                 refresh_at: float = REFRESH_AT):
        self.root = root
        self.namespace = namespace
        self.expiration_seconds = expiration_seconds
        self.refresh_at = refresh_at
        self._accounts: dict[str, _Account] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    async def client_for(self, service_account: str) -> ApiClient:
        """The client of `service_account`, made (with its account and token) if new."""
        async with self._lock:
            if self._closed:
                raise RuntimeError("ServiceAccountCredentials is closed")
            account = self._accounts.get(service_account)
            if account is not None:
                return account.client
            token, lifetime = await self._issue(service_account)
            root = self.root
            client = ApiClient(root.config.with_token(token), qps=root.limiter.qps,
                               burst=root.limiter.burst, timeout=root.timeout,
                               max_retries=root.max_retries)
            client.user_agent = f"{root.user_agent}/{service_account}"
            now = time.monotonic()
            account = _Account(client, issued_at=now, expires_at=now + lifetime)
            client.on_unauthorized = account.on_unauthorized
            account.refresher = asyncio.create_task(
                self._keep_fresh(service_account, account, lifetime),
                name=f"token-refresh-{service_account}")
            self._accounts[service_account] = account
            log.info("controller credentials: using ServiceAccount %s/%s", self.namespace,
                     service_account)
            return client

    async def close(self) -> None:
        self._closed = True
        accounts, self._accounts = list(self._accounts.values()), {}
        tasks = [a.refresher for a in accounts if a.refresher is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for account in accounts:
            await account.client.close()

    async def __aenter__(self) -> "ServiceAccountCredentials":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- accounts and tokens ----------------------------------------------------------

    async def _ensure_account(self, name: str) -> None:
        accounts = resource_type("v1 serviceaccounts")
        try:
            await self.root.get(accounts, name, self.namespace)
            return
        except ApiError as err:
            if not is_not_found(err):
                raise
        try:
            await self.root.create(accounts, {"apiVersion": "v1", "kind": "ServiceAccount",
                                              "metadata": {"name": name}}, self.namespace)
        except ApiError as err:
            if not is_already_exists(err):
                raise

    async def _issue(self, name: str) -> tuple[str, float]:
        """A new token of the account (made if missing) and its lifetime in seconds."""
        await self._ensure_account(name)
        path = resource_path(resource_type("v1 serviceaccounts"), self.namespace, name,
                             "token")
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": self.expiration_seconds}}
        deadline = time.monotonic() + TOKEN_WAIT
        delay = 0.05
        while True:
            try:
                answer = await self.root.request("POST", path, body=body)
                break
            except ApiError as err:
                # A just-made account may not be visible to the token endpoint yet.
                if not is_not_found(err) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        token = (answer.get("status") or {}).get("token") if isinstance(answer, dict) else None
        if not token:
            raise RuntimeError(f"TokenRequest for {self.namespace}/{name} returned no token")
        return token, _expires_in(answer, self.expiration_seconds)

    async def _keep_fresh(self, name: str, account: _Account, lifetime: float) -> None:
        delay = max(lifetime * self.refresh_at, MIN_REFRESH_DELAY)
        retry = RETRY_INITIAL
        pause = MIN_REISSUE_INTERVAL    # the least time between two token requests
        attempted = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(account.refused.wait(), delay)
                log.info("ServiceAccount %s/%s: token refused; renewing it", self.namespace,
                         name)
                await asyncio.sleep(attempted + pause - time.monotonic())
            except asyncio.TimeoutError:
                pass
            account.refused.clear()
            attempted = time.monotonic()
            try:
                token, lifetime = await self._issue(name)
            except (ApiError, TransportError, RuntimeError) as err:
                # Keep the current token while it lasts; try again after a backoff.
                left = account.expires_at - time.monotonic()
                log.warning("renewing the token of ServiceAccount %s/%s failed (%s); "
                            "current token valid %.0fs more", self.namespace, name, err, left)
                delay = pause = retry
                retry = min(retry * 2, RETRY_MAX)
                continue
            account.client.set_token(token)
            account.issued_at = time.monotonic()
            account.expires_at = account.issued_at + lifetime
            retry, pause = RETRY_INITIAL, MIN_REISSUE_INTERVAL
            delay = max(lifetime * self.refresh_at, MIN_REFRESH_DELAY)
