"""The async API client every component uses: one aiohttp session, JSON through orjson.

    async with ApiClient.from_kubeconfig(path, component="kube-scheduler") as client:
        pod = await client.get("v1 pods", "web-0", "default")
        await client.patch("v1 pods", "web-0", {"metadata": {"labels": {"a": "b"}}},
                           "default")
        async with client.watch("v1 pods", "default", resource_version=rv) as events:
            async for event_type, obj in events:
                ...

A resource is a `ResourceType` from the registry, "<apiVersion> <plural>" ("apps/v1
deployments", "v1 pods"), "<plural>.<group>" ("leases.coordination.k8s.io") or a bare
plural ("pods"; the core group wins, as in kubectl). URLs are built from the registry,
never written by hand.

Failures the server answers are `ApiError`s carrying its metav1 Status; test them with
`is_not_found(err)`, `is_conflict(err)`, ... as upstream's apierrors helpers do. A
server that cannot be reached, or a connection that breaks, is a `TransportError`
(a ConnectionError).

Every request (watches included) first takes a token from the client's bucket
(`qps`/`burst`; client-go's 5/10 is too slow for a controller manager, so the defaults
here are 50/100). Answers 429, or 5xx with Retry-After, are retried after the delay the
server asks for, as client-go does.
"""
from __future__ import annotations

import asyncio
import functools
import platform
import sys
import time
from collections import deque
from typing import Any, Callable, NamedTuple
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from yarl import URL

from kubesmith import __version__
from kubesmith.api import REGISTRY, ResourceType
from kubesmith.client import kubeconfig
from kubesmith.client.kubeconfig import ClientConfig
from kubesmith.client.ratelimit import TokenBucket

Obj = dict[str, Any]
Resource = ResourceType | str

PATCH_CONTENT_TYPES = {
    "json": "application/json-patch+json",
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "apply": "application/apply-patch+yaml",    # JSON is YAML: the body is sent as JSON
}
MAX_RETRIES = 10
TOKEN_FILE_REREAD = 60.0   # client-go reads a rotated service-account token once a minute


# --- errors ---------------------------------------------------------------------------

_REASON_BY_CODE = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                   405: "MethodNotAllowed", 406: "NotAcceptable", 409: "Conflict",
                   410: "Gone", 415: "UnsupportedMediaType", 422: "Invalid",
                   429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
                   504: "Timeout"}


class ApiError(Exception):
    """A failure answered by the API server, with its metav1 Status (`status`)."""

    def __init__(self, status: Obj, code: int = 0):
        self.status = status
        self.code = int(status.get("code") or code)
        self.reason: str = status.get("reason") or ""
        self.message: str = status.get("message") or ""
        self.details: Obj = status.get("details") or {}
        super().__init__(f"{self.code} {self.reason or 'Failure'}: {self.message}")

    @classmethod
    def from_response(cls, code: int, body: bytes) -> "ApiError":
        try:
            status = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            status = None
        if not isinstance(status, dict) or status.get("kind") != "Status":
            # Not a Status (a proxy in between, say): made up as upstream does.
            text = body[:500].decode(errors="replace").strip()
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "code": code, "reason": _REASON_BY_CODE.get(code, ""),
                      "message": text or f"the server answered {code}"}
        return cls(status, code)


class TransportError(ConnectionError):
    """The API server could not be reached, or the connection broke mid-answer."""


def _has(err: BaseException, reason: str, code: int) -> bool:
    """Upstream's test: the reason, or the code when the server gave no known reason."""
    if not isinstance(err, ApiError):
        return False
    if err.reason:
        return err.reason == reason
    return err.code == code


def is_not_found(err: BaseException) -> bool:
    return _has(err, "NotFound", 404)


def is_already_exists(err: BaseException) -> bool:
    return isinstance(err, ApiError) and err.reason == "AlreadyExists"


def is_conflict(err: BaseException) -> bool:
    return _has(err, "Conflict", 409)


def is_invalid(err: BaseException) -> bool:
    return _has(err, "Invalid", 422)


def is_forbidden(err: BaseException) -> bool:
    return _has(err, "Forbidden", 403)


def is_unauthorized(err: BaseException) -> bool:
    return _has(err, "Unauthorized", 401)


def is_too_many_requests(err: BaseException) -> bool:
    return _has(err, "TooManyRequests", 429)


def is_timeout(err: BaseException) -> bool:
    return _has(err, "Timeout", 504)


def is_expired(err: BaseException) -> bool:
    """410 Gone or Expired: the resourceVersion (or continue token) is too old; list again."""
    return isinstance(err, ApiError) and err.code == 410


# --- resources and URLs ---------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _lookup(text: str) -> ResourceType:
    if " " in text:
        api_version, _, plural = text.partition(" ")
        group, _, version = api_version.strip().rpartition("/")
        found = REGISTRY.get(group, version, plural.strip())
        if found is None:
            raise ValueError(f"unknown resource {text!r}")
        return found
    plural, _, group = text.partition(".")
    candidates = [rt for rt in REGISTRY if rt.plural == plural]
    exact = [rt for rt in candidates if rt.group == group]
    if exact:
        return exact[0]     # the first registered version is the preferred one
    if not group and len({rt.group for rt in candidates}) == 1:
        return candidates[0]
    if not candidates or group:
        raise ValueError(f"unknown resource {text!r}")
    raise ValueError(f"resource {text!r} is in several groups; say which "
                     f"(e.g. {candidates[0].plural}.{candidates[0].group})")


def resource_type(resource: Resource) -> ResourceType:
    """The registry entry a resource argument names (see the module docstring)."""
    return resource if isinstance(resource, ResourceType) else _lookup(resource.strip())


def resource_path(rt: ResourceType, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    """The URL path of a collection, an object or an object's subresource."""
    parts = [f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"]
    if rt.namespaced and namespace:
        parts += ["namespaces", quote(namespace, safe="")]
    parts.append(rt.plural)
    if name:
        parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
    return "/".join(parts)


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def user_agent(component: str) -> str:
    """"<component>/v<version> (<os>/<arch>) kubesmith", shaped like client-go's."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return f"{component}/v{__version__} ({sys.platform}/{arch}) kubesmith"


class WatchEvent(NamedTuple):
    type: str       # ADDED, MODIFIED, DELETED, BOOKMARK
    object: Obj


def _selectors(label_selector: str | None, field_selector: str | None) -> dict[str, str]:
    params = {}
    if label_selector:
        params["labelSelector"] = label_selector
    if field_selector:
        params["fieldSelector"] = field_selector
    return params


# --- the client -----------------------------------------------------------------------

class ApiClient:
    """An API client on one aiohttp session (made on first use, in the running loop)."""

    def __init__(self, config: ClientConfig, *, component: str = "kubesmith",
                 qps: float = 50.0, burst: int = 100, timeout: float = 30.0,
                 max_retries: int = MAX_RETRIES):
        self.config = config
        self.user_agent = user_agent(component)
        self.limiter = TokenBucket(qps, burst)
        self.timeout = timeout
        self.max_retries = max_retries
        self._session: aiohttp.ClientSession | None = None
        self._token = config.token
        self._token_read = time.monotonic()
        # Called with the time.monotonic() a request was sent at when the server answers
        # it 401: a token source can then renew a token the server no longer accepts
        # (client-go resets its cached token the same way).
        self.on_unauthorized: Callable[[float], None] | None = None

    @classmethod
    def from_kubeconfig(cls, path, *, context: str | None = None, **options) -> "ApiClient":
        return cls(kubeconfig.load(path, context), **options)

    @classmethod
    def in_cluster(cls, **options) -> "ApiClient":
        return cls(kubeconfig.in_cluster(), **options)

    async def __aenter__(self) -> "ApiClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- plumbing ---------------------------------------------------------------------

    def _session_for_use(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Watches hold a connection each; the token bucket bounds the request rate.
            connector = aiohttp.TCPConnector(ssl=self.config.ssl_context, limit=256)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        token = self._current_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def set_token(self, token: str) -> None:
        """Use `token` from the next request on (a rotated bearer token)."""
        self._token = token
        self._token_read = time.monotonic()

    def _current_token(self) -> str | None:
        file = self.config.token_file
        if file and time.monotonic() - self._token_read > TOKEN_FILE_REREAD:
            self._token_read = time.monotonic()
            try:
                with open(file) as source:
                    self._token = source.read().strip() or self._token
            except OSError:
                pass   # keep the last token; the server says 401 if it is stale
        return self._token

    def _url(self, path: str, params: dict[str, Any] | None) -> URL:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        text = self.config.server + path
        if query:
            text += "?" + urlencode({k: str(v).lower() if isinstance(v, bool) else v
                                     for k, v in query.items()})
        return URL(text, encoded=True)

    @staticmethod
    def _retry_delay(code: int, retry_after: str | None) -> float | None:
        """Seconds to wait before retrying, or None: only 429 and 5xx that say when."""
        if code != 429 and code < 500 or retry_after is None:
            return None
        try:
            return max(float(retry_after), 0.0)
        except ValueError:
            return None

    async def _send(self, method: str, path: str, *, params: dict | None = None,
                    body: Any = None, content_type: str | None = None,
                    timeout: aiohttp.ClientTimeout | None = None) -> aiohttp.ClientResponse:
        """An answered 2xx response, still open (the caller reads and releases it)."""
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else orjson.dumps(body)
            content_type = content_type or "application/json"
        url = self._url(path, params)
        timeout = timeout or aiohttp.ClientTimeout(total=self.timeout)
        for attempt in range(self.max_retries + 1):
            await self.limiter.wait()
            sent = time.monotonic()
            try:
                response = await self._session_for_use().request(
                    method, url, data=data, headers=self._headers(content_type),
                    timeout=timeout)
                if response.status < 300:
                    return response
                payload = await response.read()
                response.release()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise TransportError(f"{method} {path}: {exc or type(exc).__name__}") from exc
            if response.status == 401 and self.on_unauthorized is not None:
                self.on_unauthorized(sent)
            delay = self._retry_delay(response.status, response.headers.get("Retry-After"))
            if delay is None or attempt == self.max_retries:
                raise ApiError.from_response(response.status, payload)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def request(self, method: str, path: str, *, params: dict | None = None,
                      body: Any = None, content_type: str | None = None) -> Any:
        """One request; the decoded JSON answer (text for non-JSON answers, like logs)."""
        response = await self._send(method, path, params=params, body=body,
                                    content_type=content_type)
        try:
            payload = await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise TransportError(f"{method} {path}: {exc or type(exc).__name__}") from exc
        finally:
            response.release()
        if not payload:
            return {}
        if response.content_type == "application/json":
            return orjson.loads(payload)
        return payload.decode(errors="replace")

    # --- verbs ------------------------------------------------------------------------

    @staticmethod
    def _namespace_of(rt: ResourceType, namespace: str | None, body: Obj | None = None
                      ) -> str | None:
        if not rt.namespaced:
            return None
        namespace = namespace or (_meta(body).get("namespace") if body else None)
        if not namespace:
            raise ValueError(f"{rt.plural} are namespaced: a namespace is needed")
        return namespace

    async def get(self, resource: Resource, name: str, namespace: str | None = None, *,
                  subresource: str | None = None, params: dict | None = None) -> Any:
        rt = resource_type(resource)
        path = resource_path(rt, self._namespace_of(rt, namespace), name, subresource)
        return await self.request("GET", path, params=params)

    async def list(self, resource: Resource, namespace: str | None = None, *,
                   label_selector: str | None = None, field_selector: str | None = None,
                   limit: int | None = None, continue_token: str | None = None,
                   resource_version: str | None = None,
                   resource_version_match: str | None = None) -> Obj:
        """One List (one page of it when `limit` is given); no namespace: all of them."""
        rt = resource_type(resource)
        params = dict(_selectors(label_selector, field_selector), limit=limit,
                      resourceVersion=resource_version,
                      resourceVersionMatch=resource_version_match)
        params["continue"] = continue_token
        return await self.request("GET", resource_path(rt, namespace), params=params)

    async def list_all(self, resource: Resource, namespace: str | None = None, *,
                       label_selector: str | None = None, field_selector: str | None = None,
                       page_size: int = 500) -> Obj:
        """The whole List, fetched `page_size` objects at a time (one consistent snapshot:
        every page is read at the first page's resourceVersion)."""
        first = await self.list(resource, namespace, label_selector=label_selector,
                                field_selector=field_selector, limit=page_size)
        items = list(first.get("items") or [])
        token = _meta(first).get("continue")
        while token:
            page = await self.list(resource, namespace, label_selector=label_selector,
                                   field_selector=field_selector, limit=page_size,
                                   continue_token=token)
            items.extend(page.get("items") or [])
            token = _meta(page).get("continue")
        meta = {k: v for k, v in _meta(first).items() if k not in ("continue",
                                                                   "remainingItemCount")}
        return dict(first, metadata=meta, items=items)

    async def create(self, resource: Resource, body: Obj, namespace: str | None = None, *,
                     name: str | None = None, subresource: str | None = None,
                     field_manager: str | None = None, dry_run: bool = False) -> Obj:
        """POST an object (or, with `name` and `subresource`, e.g. a pod's binding)."""
        rt = resource_type(resource)
        path = resource_path(rt, self._namespace_of(rt, namespace, body), name, subresource)
        return await self.request("POST", path, body=body,
                                  params=self._write_params(field_manager, dry_run))

    async def update(self, resource: Resource, body: Obj, namespace: str | None = None, *,
                     subresource: str | None = None, field_manager: str | None = None,
                     dry_run: bool = False) -> Obj:
        """PUT the whole object; metadata.resourceVersion makes it conditional (409)."""
        rt = resource_type(resource)
        path = resource_path(rt, self._namespace_of(rt, namespace, body),
                             _meta(body)["name"], subresource)
        return await self.request("PUT", path, body=body,
                                  params=self._write_params(field_manager, dry_run))

    async def update_status(self, resource: Resource, body: Obj,
                            namespace: str | None = None, **options) -> Obj:
        return await self.update(resource, body, namespace, subresource="status", **options)

    async def patch(self, resource: Resource, name: str, patch: Any,
                    namespace: str | None = None, *, patch_type: str = "merge",
                    subresource: str | None = None, field_manager: str | None = None,
                    force: bool | None = None, dry_run: bool = False) -> Obj:
        """PATCH with patch_type "json" (a list of operations), "merge", "strategic" or
        "apply" (server-side apply: needs field_manager; force takes over conflicts)."""
        if patch_type not in PATCH_CONTENT_TYPES:
            raise ValueError(f"patch_type must be one of {sorted(PATCH_CONTENT_TYPES)}")
        if patch_type == "apply" and not field_manager:
            raise ValueError("server-side apply needs a field_manager")
        rt = resource_type(resource)
        path = resource_path(rt, self._namespace_of(rt, namespace), name, subresource)
        params = self._write_params(field_manager, dry_run)
        params["force"] = force
        return await self.request("PATCH", path, body=patch,
                                  content_type=PATCH_CONTENT_TYPES[patch_type], params=params)

    async def apply(self, resource: Resource, body: Obj, namespace: str | None = None, *,
                    field_manager: str, force: bool = False, subresource: str | None = None,
                    dry_run: bool = False) -> Obj:
        """Server-side apply of `body` (its metadata.name names the object)."""
        return await self.patch(resource, _meta(body)["name"], body,
                                namespace or _meta(body).get("namespace"),
                                patch_type="apply", field_manager=field_manager, force=force,
                                subresource=subresource, dry_run=dry_run)

    async def delete(self, resource: Resource, name: str, namespace: str | None = None, *,
                     propagation_policy: str | None = None,
                     grace_period_seconds: int | None = None,
                     preconditions: Obj | None = None, dry_run: bool = False) -> Obj:
        """DELETE; the answer is the object (still there while finalizers or a grace
        period run) or a Success Status. propagation_policy: Orphan, Background,
        Foreground; preconditions: {"uid": ..., "resourceVersion": ...}."""
        rt = resource_type(resource)
        path = resource_path(rt, self._namespace_of(rt, namespace), name)
        return await self.request("DELETE", path, body=self._delete_options(
            propagation_policy, grace_period_seconds, preconditions, dry_run))

    async def delete_collection(self, resource: Resource, namespace: str | None = None, *,
                                label_selector: str | None = None,
                                field_selector: str | None = None,
                                propagation_policy: str | None = None,
                                grace_period_seconds: int | None = None) -> Obj:
        rt = resource_type(resource)
        return await self.request(
            "DELETE", resource_path(rt, namespace), params=_selectors(label_selector,
                                                                     field_selector),
            body=self._delete_options(propagation_policy, grace_period_seconds, None, False))

    def watch(self, resource: Resource, namespace: str | None = None, *,
              resource_version: str | None = None, label_selector: str | None = None,
              field_selector: str | None = None, timeout_seconds: int | None = None,
              allow_bookmarks: bool = True, send_initial_events: bool = False) -> "Watch":
        """Changes as WatchEvent(type, object), after `resource_version` (none: the
        current objects as ADDED first). Iterate it, best inside `async with` so the
        connection is closed when the caller stops early. An ERROR event (410 Expired
        when resource_version is too old) is raised as ApiError; the iteration ends
        when the server ends the watch (timeout_seconds)."""
        rt = resource_type(resource)
        params: dict[str, Any] = dict(_selectors(label_selector, field_selector), watch=1,
                                      resourceVersion=resource_version,
                                      timeoutSeconds=timeout_seconds)
        if allow_bookmarks:
            params["allowWatchBookmarks"] = True
        if send_initial_events:
            params.update(sendInitialEvents=True, resourceVersionMatch="NotOlderThan",
                          allowWatchBookmarks=True)
        # A server that goes silent must not hold the watch forever.
        read_timeout = timeout_seconds + 30 if timeout_seconds else None
        return Watch(self, resource_path(rt, namespace), params, read_timeout)

    @staticmethod
    def _write_params(field_manager: str | None, dry_run: bool) -> dict[str, Any]:
        return {"fieldManager": field_manager, "dryRun": "All" if dry_run else None}

    @staticmethod
    def _delete_options(propagation_policy, grace_period_seconds, preconditions,
                        dry_run) -> Obj:
        options: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation_policy:
            options["propagationPolicy"] = propagation_policy
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if preconditions:
            options["preconditions"] = preconditions
        if dry_run:
            options["dryRun"] = ["All"]
        return options


class Watch:
    """An open watch: an async iterator of WatchEvent and an async context manager."""

    def __init__(self, client: ApiClient, path: str, params: dict, read_timeout: float | None):
        self._client = client
        self._path = path
        self._params = params
        self._read_timeout = read_timeout
        self._response: aiohttp.ClientResponse | None = None
        self._lines: deque[bytes] = deque()
        self._partial = b""
        self._closed = False

    async def __aenter__(self) -> "Watch":
        await self._open()
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    def __aiter__(self) -> "Watch":
        return self

    async def _open(self) -> None:
        if self._response is None and not self._closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._client.timeout,
                                            sock_read=self._read_timeout)
            self._response = await self._client._send("GET", self._path, params=self._params,
                                                      timeout=timeout)

    async def __anext__(self) -> WatchEvent:
        await self._open()
        # Objects can be larger than aiohttp's line limit: lines are split here.
        while not self._lines:
            if self._closed or self._response is None:
                raise StopAsyncIteration
            try:
                chunk = await self._response.content.readany()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self.close()
                raise TransportError(f"watch {self._path}: {exc or type(exc).__name__}"
                                     ) from exc
            if not chunk:   # the server ended the watch: what was sent is still delivered
                self._release()
                self._closed = True
                if self._partial.strip():
                    self._lines.append(self._partial)
                    self._partial = b""
                continue
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            self._lines.extend(line for line in complete if line.strip())
        event = orjson.loads(self._lines.popleft())
        if event.get("type") == "ERROR":
            self.close()
            raise ApiError(event.get("object") or {}, 500)
        return WatchEvent(event.get("type", ""), event.get("object") or {})

    def close(self) -> None:
        """Stop: the connection is closed and nothing more is delivered."""
        self._closed = True
        self._lines.clear()
        self._release()

    def _release(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.close()
