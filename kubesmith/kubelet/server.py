"""The kubelet's own HTTPS server (:10250): logs, exec/attach, stats, metrics, health.

The API server reaches it for pods/log, pods/exec and pods/attach (kubesmith's
apiserver/kubeletproxy.py), with its apiserver-kubelet-client certificate; monitoring
reads /metrics and /stats/summary. As upstream's kubelet:

- TLS with the serving certificate (tlsCertFile/tlsPrivateKeyFile; one made in memory
  when none is given); client certificates are asked for and verified against
  clientCAFile.
- Authentication: the verified client certificate (user = CN, groups = O), else an
  `Authorization: Bearer` token checked by a TokenReview (answers cached 2 minutes);
  neither -> 401 "Unauthorized" (anonymous access is off).
- Authorization: a SubjectAccessReview on the node object: verb from the HTTP method,
  resource nodes, name = this node, subresource by path (/stats -> stats, /metrics ->
  metrics, /logs -> log, /checkpoint -> checkpoint, anything else -> proxy; /pods,
  /healthz and /configz are first tried as their own subresource, then as proxy, as
  upstream's fine-grained kubelet authorization). Allowed answers are cached 5 minutes,
  denied ones 30 s. Denied -> 403 "Forbidden (user=..., verb=..., resource=nodes,
  subresource(s)=[...])".

Paths served:
  /healthz                        "ok"
  /metrics                        Prometheus text: request counts, running pods and
                                  containers, process figures (`registry` takes more)
  /metrics/resource               CPU and memory of node, pods and containers (what
                                  metrics-server reads)
  /stats/summary                  the Summary API (stats.py)
  /pods                           the node's pods as a PodList (when the kubelet gives
                                  a `list_pods`)
  /containerLogs/<ns>/<pod>/<c>   a container's log (logs.py), with PodLogOptions
  /exec/<ns>/<pod>[/<uid>]/<c>    exec and attach (WebSocket or SPDY), relayed to the
  /attach/<ns>/<pod>[/<uid>]/<c>  runtime's streaming server (below)
  /portForward/<ns>/<pod>[/<uid>] port forwarding, relayed the same way

exec and attach: the API server passes the client's WebSocket upgrade through
untouched. The subprotocol is chosen from what the client offers (v5.channel.k8s.io,
v4.channel.k8s.io, channel.k8s.io and their base64 forms), the runtime is asked for a
streaming URL (CRI Exec/Attach), and a WebSocket to that URL carries the channels both
ways (0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 resize), the final metav1 Status
on channel 3 included. containerd's streaming server speaks the channel protocols up to
v4, so a v5 client is relayed over v4. The one thing v5 adds, closing a channel
(message 255 <channel>) to send the end of stdin, has no v4 form; so a v5 request with
stdin is refused (400) and kubectl, as it does with any server that refuses the
WebSocket upgrade, falls back to SPDY/3.1, where the end of stdin is a stream's close.
SPDY upgrades (that fallback, and kubectl before 1.30) are relayed to the runtime byte
for byte, as upstream's kubelet proxies them.

/portForward/<ns>/<pod>[/<uid>] is relayed the same way: SPDY byte for byte, SPDY
tunnelled in WebSocket ("SPDY/3.1+portforward.k8s.io", kubectl 1.31+) unwrapped onto a
SPDY connection to the runtime, the older WebSocket port-forward protocols message by
message.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import posixpath
import ssl
import time
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
from aiohttp import WSMsgType, web
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                               ProcessCollector, generate_latest)
from prometheus_client import CONTENT_TYPE_LATEST

from kubesmith import serving
from kubesmith.identity import AUTHENTICATED, UserInfo, user_from_certificate
from kubesmith.cri import api
from kubesmith.cri.client import NotFoundError, RuntimeError_
from kubesmith.kubelet import logs
from kubesmith.kubelet.stats import (CONTAINER_NAME, DEFAULT_POD_LOG_DIR, DEFAULT_ROOT_DIR,
                                     POD_NAME, POD_NAMESPACE, POD_UID, ResourceMetrics,
                                     StatsProvider)
from kubesmith.upgraderelay import read_response_head, relay_upgraded

log = logging.getLogger(__name__)

Obj = dict[str, Any]

RESTART_COUNT = "io.kubernetes.container.restartCount"

TOKEN_CACHE_TTL = 120.0          # upstream's authentication.webhook.cacheTTL
ALLOWED_CACHE_TTL = 300.0        # authorization.webhook.cacheAuthorizedTTL
DENIED_CACHE_TTL = 30.0          # authorization.webhook.cacheUnauthorizedTTL
CACHE_MAX_ENTRIES = 4096
STREAM_CONNECT_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 2.0

VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update",
         "PATCH": "patch", "DELETE": "delete"}
# Path prefixes with a subresource of their own; anything else is nodes/proxy.
SUBRESOURCE_PATHS = (("/stats", "stats"), ("/metrics", "metrics"), ("/logs", "log"),
                     ("/checkpoint", "checkpoint"))
# Tried as their own subresource first, then as proxy (fine-grained authorization).
FINE_GRAINED_PATHS = (("/pods", "pods"), ("/runningpods", "pods"), ("/healthz", "healthz"),
                      ("/configz", "configz"))

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
# What a client may pick, in no order of ours (the client's order of preference wins),
# and what the runtime's streaming server is asked for in its place.
STREAM_PROTOCOLS = {V5: V4, V4: V4, "v4.base64.channel.k8s.io": "v4.base64.channel.k8s.io",
                    "channel.k8s.io": "channel.k8s.io",
                    "base64.channel.k8s.io": "base64.channel.k8s.io"}
CLOSE_CHANNEL = 255              # v5: "255 <channel>" closes that channel
# Port forwarding over WebSocket: SPDY tunnelled in binary messages (kubectl 1.31+), or
# the older channel protocols the runtime speaks itself.
SPDY_TUNNEL = "SPDY/3.1+portforward.k8s.io"
PORT_FORWARD_PROTOCOLS = {SPDY_TUNNEL, "portforward.k8s.io", "v4.channel.k8s.io",
                          "v4.base64.channel.k8s.io"}
# Not passed on to the runtime: hop-by-hop framing and the caller's credentials.
UNRELAYED_HEADERS = {"host", "authorization", "content-length", "transfer-encoding",
                     "proxy-authorization"}
MAX_ERROR_BODY = 64 * 1024
LONG_RUNNING = {"exec", "attach", "portForward", "containerLogs"}
METRIC_BUCKETS = {"healthz", "pods", "stats", "metrics", "exec", "attach", "portForward",
                  "containerLogs", "runningpods", "logs", "configz", "checkpoint"}


def _is_subpath(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def authorization_subresources(path: str) -> list[str]:
    """The nodes subresources a request path is authorized as, in the order tried."""
    subresources = [name for prefix, name in FINE_GRAINED_PATHS if _is_subpath(path, prefix)]
    for prefix, name in SUBRESOURCE_PATHS:
        if _is_subpath(path, prefix):
            return subresources + [name]
    return subresources[:1] + ["proxy"]


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, content_type="text/plain",
                        charset="utf-8", headers={"X-Content-Type-Options": "nosniff"})


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "t", "yes")


def _bounded_put(cache: dict, key, value) -> None:
    if len(cache) >= CACHE_MAX_ENTRIES:
        now = time.monotonic()
        for old in [k for k, (expires, _) in cache.items() if expires <= now]:
            del cache[old]
        while len(cache) >= CACHE_MAX_ENTRIES:
            del cache[next(iter(cache))]
    cache[key] = value


class _Forbidden(Exception):
    pass


class KubeletServer:
    """The kubelet's HTTPS API. `get_pod(namespace, name)` is the kubelet's pod (None
    when it has none of that name); `list_pods()`, when given, serves /pods."""

    def __init__(self, *, address: str, port: int, cert_file: str, key_file: str,
                 client_ca_file: str, client, runtime, node_name: str,
                 get_pod: Callable[[str, str], Obj | None],
                 list_pods: Callable[[], list[Obj]] | None = None,
                 root_dir: str = DEFAULT_ROOT_DIR, pod_log_dir: str = DEFAULT_POD_LOG_DIR,
                 healthy: Callable[[], bool] | None = None):
        self.address = address
        self.port = port
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self.client = client
        self.runtime = runtime
        self.node_name = node_name
        self.get_pod = get_pod
        self.list_pods = list_pods
        self.healthy = healthy
        self.stats = StatsProvider(runtime, node_name, root_dir=root_dir,
                                   pod_log_dir=pod_log_dir)
        self._tokens: dict[str, tuple[float, UserInfo | None]] = {}
        self._decisions: dict[tuple, tuple[float, bool]] = {}
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._stopping = False
        self._sockets: set[web.WebSocketResponse] = set()
        self._setup_metrics()

    # --- lifecycle -----------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        if self.cert_file and self.key_file:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cert_file, self.key_file)
        else:
            # As upstream: no serving certificate given -> a self-signed one.
            context = serving.self_signed_context(self.node_name)
        if self.client_ca_file:
            context.load_verify_locations(cafile=self.client_ca_file)
            context.verify_mode = ssl.CERT_OPTIONAL
        context.set_alpn_protocols(["http/1.1"])
        return context

    async def start(self) -> None:
        self._stopping = False
        app = web.Application(middlewares=[self._middleware],
                              handler_args={"max_field_size": 65536})
        routes = [web.get("/healthz", self._healthz),
                  web.get("/metrics", self._metrics),
                  web.get("/metrics/resource", self._resource_metrics),
                  web.get("/stats/summary", self._summary),
                  web.get("/containerLogs/{namespace}/{pod}/{container}", self._container_logs)]
        if self.list_pods is not None:
            routes.append(web.get("/pods", self._pods))
        for kind in ("exec", "attach"):
            for suffix in ("{namespace}/{pod}/{container}", "{namespace}/{pod}/{uid}/{container}"):
                handler = self._exec if kind == "exec" else self._attach
                routes.append(web.route("GET", f"/{kind}/{suffix}", handler))
                routes.append(web.route("POST", f"/{kind}/{suffix}", handler))
        for suffix in ("{namespace}/{pod}", "{namespace}/{pod}/{uid}"):
            routes.append(web.route("GET", f"/portForward/{suffix}", self._port_forward))
            routes.append(web.route("POST", f"/portForward/{suffix}", self._port_forward))
        app.add_routes(routes)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.address or None, self.port,
                                 ssl_context=self.ssl_context())
        await self._site.start()
        log.info("kubelet server listening on %s:%d", self.address, self.bound_port)

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        server = getattr(self._site, "_server", None)
        if server is None or not server.sockets:
            return self.port
        return server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._stopping = True
        for socket in list(self._sockets):
            await socket.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"kubelet stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- metrics -------------------------------------------------------------------------

    def _setup_metrics(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("method", "path", "server_type", "long_running")
        self._requests = Counter("kubelet_http_requests", "Number of HTTP requests "
                                 "received since the server started.", labels,
                                 registry=self.registry)
        self._inflight = Gauge("kubelet_http_inflight_requests", "Number of the inflight "
                               "http requests", labels, registry=self.registry)
        self._durations = Histogram("kubelet_http_requests_duration_seconds", "Duration in "
                                    "seconds to serve http requests", labels,
                                    registry=self.registry)
        self._running_pods = Gauge("kubelet_running_pods", "Number of pods that have a "
                                   "running pod sandbox", registry=self.registry)
        self._running_containers = Gauge("kubelet_running_containers", "Number of "
                                         "containers currently running", ["container_state"],
                                         registry=self.registry)
        node = Gauge("kubelet_node_name", "The node's name. The count is always 1.",
                     ["node"], registry=self.registry)
        node.labels(self.node_name).set(1)
        ProcessCollector(registry=self.registry)

    async def _refresh_runtime_metrics(self) -> None:
        try:
            sandboxes = await self.runtime.list_pod_sandbox(api.PodSandboxFilter(
                state=api.PodSandboxStateValue(state=api.SANDBOX_READY)))
            containers = await self.runtime.list_containers()
        except (RuntimeError_, OSError) as exc:
            log.debug("runtime metrics not refreshed: %s", exc)
            return
        self._running_pods.set(len(sandboxes))
        names = {api.CONTAINER_CREATED: "created", api.CONTAINER_RUNNING: "running",
                 api.CONTAINER_EXITED: "exited", api.CONTAINER_UNKNOWN: "unknown"}
        counts = dict.fromkeys(names.values(), 0)
        for container in containers:
            counts[names.get(container.state, "unknown")] += 1
        for state, count in counts.items():
            self._running_containers.labels(state).set(count)

    # --- the request pipeline ------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        path = request.path
        parts = path.lstrip("/").split("/", 2)
        bucket = parts[0] if parts[0] in METRIC_BUCKETS else "other"
        if bucket == "metrics" and len(parts) > 1:
            bucket = f"metrics/{parts[1]}"
        labels = (request.method if request.method in VERBS or request.method == "OPTIONS"
                  else "other", bucket, "readwrite", str(parts[0] in LONG_RUNNING).lower())
        self._requests.labels(*labels).inc()
        self._inflight.labels(*labels).inc()
        started = time.monotonic()
        try:
            if posixpath.normpath(path) != path.rstrip("/") and path != "/":
                return _text(400, "invalid path")
            user = await self._authenticate(request)
            if user is None:
                return _text(401, "Unauthorized")
            try:
                await self._authorize(user, request.method, path)
            except _Forbidden as exc:
                return _text(403, str(exc))
            except Exception as exc:
                log.warning("authorization of %s %s failed: %s", request.method, path, exc)
                verb = VERBS.get(request.method, "")
                return _text(500, f"Authorization error (user={user.name}, verb={verb}, "
                             f"resource=nodes, subresource(s)=["
                             f"{' '.join(authorization_subresources(path))}])")
            return await handler(request)
        finally:
            self._inflight.labels(*labels).dec()
            self._durations.labels(*labels).observe(time.monotonic() - started)

    async def _authenticate(self, request: web.Request) -> UserInfo | None:
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is not None:
            # Only a certificate the handshake verified against the client CA is here.
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                user = user_from_certificate(der)
                if user is not None:
                    return user
        scheme, _, token = (request.headers.get("Authorization") or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        return await self._review_token(token)

    async def _review_token(self, token: str) -> UserInfo | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._tokens.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            review = await self.client.create("authentication.k8s.io/v1 tokenreviews", {
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token}})
        except Exception as exc:
            # Not cached: the API server may answer next time.
            log.warning("TokenReview failed: %s", exc)
            return None
        status = review.get("status") or {}
        user = None
        if status.get("authenticated"):
            info = status.get("user") or {}
            groups = tuple(info.get("groups") or ())
            if AUTHENTICATED not in groups:
                groups += (AUTHENTICATED,)
            user = UserInfo(info.get("username", ""), groups, info.get("uid", ""),
                            {k: list(v) for k, v in (info.get("extra") or {}).items()})
        _bounded_put(self._tokens, key, (time.monotonic() + TOKEN_CACHE_TTL, user))
        return user

    async def _authorize(self, user: UserInfo, method: str, path: str) -> None:
        verb = VERBS.get(method, "")
        subresources = authorization_subresources(path)
        for subresource in subresources:
            if await self._allowed(user, verb, subresource):
                return
        raise _Forbidden(f"Forbidden (user={user.name}, verb={verb}, resource=nodes, "
                         f"subresource(s)=[{' '.join(subresources)}])")

    async def _allowed(self, user: UserInfo, verb: str, subresource: str) -> bool:
        extra = tuple(sorted((k, tuple(v)) for k, v in (user.extra or {}).items()))
        key = (user.name, user.groups, user.uid, extra, verb, subresource)
        cached = self._decisions.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        spec: Obj = {"user": user.name, "groups": list(user.groups),
                     "resourceAttributes": {"verb": verb, "group": "", "version": "v1",
                                            "resource": "nodes", "subresource": subresource,
                                            "name": self.node_name}}
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra.items()}
        review = await self.client.create("authorization.k8s.io/v1 subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": spec})
        allowed = bool((review.get("status") or {}).get("allowed"))
        ttl = ALLOWED_CACHE_TTL if allowed else DENIED_CACHE_TTL
        _bounded_put(self._decisions, key, (now + ttl, allowed))
        return allowed

    # --- simple endpoints ----------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.healthy is not None and not self.healthy():
            return _text(500, "[+]ping ok\n[+]log ok\n[-]syncloop failed: reason withheld\n"
                         "healthz check failed")
        return _text(200, "ok")

    async def _metrics(self, request: web.Request) -> web.Response:
        await self._refresh_runtime_metrics()
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _resource_metrics(self, request: web.Request) -> web.Response:
        try:
            metrics = ResourceMetrics(await self.stats.summary(only_cpu_and_memory=True))
        except (RuntimeError_, OSError) as exc:
            log.warning("resource metrics: %s", exc)
            metrics = ResourceMetrics(None, error=True)
        return web.Response(body=generate_latest(metrics),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _summary(self, request: web.Request) -> web.Response:
        only = _flag(request.query.get("only_cpu_and_memory"))
        try:
            summary = await self.stats.summary(only_cpu_and_memory=only)
        except (RuntimeError_, OSError) as exc:
            return _text(500, f"Internal Error: failed to get summary stats: {exc}")
        return web.Response(body=orjson.dumps(summary), content_type="application/json")

    async def _pods(self, request: web.Request) -> web.Response:
        pods = self.list_pods() if self.list_pods is not None else []
        body = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    # --- containers ----------------------------------------------------------------------

    async def _attempts(self, pod: Obj, container: str) -> list:
        """The runtime's containers for a pod's container, newest attempt first."""
        meta = pod.get("metadata") or {}
        selector = {POD_NAME: meta.get("name", ""), POD_NAMESPACE: meta.get("namespace", ""),
                    CONTAINER_NAME: container}
        if meta.get("uid"):
            selector[POD_UID] = meta["uid"]
        found = await self.runtime.list_containers(api.ContainerFilter(label_selector=selector))

        def order(c):
            try:
                restarts = int(c.annotations.get(RESTART_COUNT, "0"))
            except ValueError:
                restarts = 0
            return restarts, c.created_at

        return sorted(found, key=order, reverse=True)

    async def _log_container(self, pod: Obj, container: str, previous: bool) -> str:
        """The id of the container whose log is wanted; ValueError(message) otherwise,
        with upstream's wording."""
        name = (pod.get("metadata") or {}).get("name", "")
        attempts = await self._attempts(pod, container)
        by_id = {c.id: c for c in attempts}
        status = _container_status(pod, container)
        last = ((status.get("lastState") or {}).get("terminated") or {}) if status else {}
        state = (status or {}).get("state") or {}
        if previous:
            wanted = _strip_runtime(last.get("containerID"))
            if wanted in by_id:
                return wanted
            # The status read may lag behind the runtime: the attempts decide. An exited
            # newest attempt that is to be restarted is the last terminated one; once
            # the container is terminated for good, the one before it is.
            if attempts:
                if attempts[0].state == api.CONTAINER_EXITED and not state.get("terminated"):
                    return attempts[0].id
                if len(attempts) > 1:
                    return attempts[1].id
            raise ValueError(f'previous terminated container "{container}" in pod "{name}" '
                             "not found")
        for key in ("running", "terminated"):
            wanted = _strip_runtime((state.get(key) or {}).get("containerID"))
            if wanted in by_id:
                return wanted
        if attempts:
            return attempts[0].id
        waiting = state.get("waiting")
        if state.get("terminated") or last:
            raise ValueError(f'container "{container}" in pod "{name}" is terminated')
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
            if reason == "ErrImagePull":
                reason = "image can't be pulled"
            elif reason == "ImagePullBackOff":
                reason = "trying and failing to pull image"
            raise ValueError(f'container "{container}" in pod "{name}" is waiting to start: '
                             f"{reason}")
        raise ValueError(f'container "{container}" in pod "{name}" is waiting to start - '
                         "no logs yet")

    async def _container_logs(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        pod_name = request.match_info["pod"]
        container = request.match_info["container"]
        try:
            options = logs.parse_log_options(request.query)
        except logs.LogOptionsError as exc:
            log.debug("containerLogs query refused: %s", exc)
            message = "Unable to decode query." if exc.status == 400 else "Invalid request."
            return _text(exc.status, f'{{"message": "{message}"}}')
        pod = self.get_pod(namespace, pod_name)
        if pod is None:
            return _text(404, f'pod "{pod_name}" does not exist')
        if container not in _container_names(pod):
            return _text(404, f'container "{container}" not found in pod "{pod_name}"')
        try:
            container_id = await self._log_container(pod, container, options.previous)
        except ValueError as exc:
            return _text(400, str(exc))
        status = await self.runtime.container_status(container_id)
        if status is None or not status.log_path:
            return _text(400, f'container "{container}" in pod "{pod_name}" has no log')
        path = status.log_path
        try:
            open(path, "rb").close()
        except OSError as exc:
            return _text(400, f'failed to open log file "{path}": {exc.strerror}')

        response = web.StreamResponse(status=200)
        response.content_type = "text/plain"
        response.charset = "utf-8"
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def is_running() -> bool:
            try:
                current = await self.runtime.container_status(container_id)
            except NotFoundError:
                return False
            except RuntimeError_:
                return True     # the runtime is busy: ask again later
            return current is not None and current.state == api.CONTAINER_RUNNING

        def should_stop() -> bool:
            transport = request.transport
            return self._stopping or transport is None or transport.is_closing()

        try:
            await logs.read_logs(path, options, response.write, is_running=is_running,
                                 should_stop=should_stop)
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionError):
            pass     # the client went away
        except FileNotFoundError:
            pass     # removed while read (the pod was deleted)
        return response

    # --- exec and attach -----------------------------------------------------------------

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, "exec")

    async def _attach(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, "attach")

    async def _stream(self, request: web.Request, kind: str) -> web.StreamResponse:
        query = request.query
        stdin, stdout = _flag(query.get("stdin")), _flag(query.get("stdout"))
        stderr, tty = _flag(query.get("stderr")), _flag(query.get("tty"))
        if tty and stderr:
            stderr = False         # a terminal has one output stream (as upstream)
        if not (stdin or stdout or stderr):
            return _text(400, "you must specify at least 1 of stdin, stdout, stderr")
        command = query.getall("command", [])
        if kind == "exec" and not command:
            return _text(400, "you must specify at least one command for the container")
        container = request.match_info["container"]
        pod = self._pod_at(request)
        if isinstance(pod, web.Response):
            return pod

        chosen = _stream_protocol(request, STREAM_PROTOCOLS)
        if isinstance(chosen, web.Response):
            return chosen
        if chosen == V5 and stdin:
            # The runtime's WebSocket (v4) cannot carry the end of stdin; refusing the
            # upgrade makes kubectl fall back to SPDY, which can (see above).
            return _text(400, "unable to upgrade: stdin over v5.channel.k8s.io is "
                         "served over SPDY/3.1 by this kubelet")

        running = [c for c in await self._attempts(pod, container)
                   if c.state == api.CONTAINER_RUNNING]
        if not running:
            return _text(500, f'container not found ("{container}")')
        container_id = running[0].id
        try:
            if kind == "exec":
                url = await self.runtime.exec(container_id, command, tty=tty, stdin=stdin,
                                              stdout=stdout, stderr=stderr)
            else:
                url = await self.runtime.attach(container_id, tty=tty, stdin=stdin,
                                                stdout=stdout, stderr=stderr)
        except NotFoundError as exc:
            return _text(404, exc.detail)
        except RuntimeError_ as exc:
            return _text(500, exc.detail or str(exc))
        if chosen is None:
            return await self._relay_upgrade(request, url)
        return await self._relay_websocket(request, url, chosen, STREAM_PROTOCOLS[chosen])

    def _pod_at(self, request: web.Request) -> dict | web.Response:
        """The pod a streaming path names (namespace, pod, and the uid when given), or the
        404 answer."""
        pod = self.get_pod(request.match_info["namespace"], request.match_info["pod"])
        if pod is None:
            return _text(404, "pod does not exist")
        uid = request.match_info.get("uid")
        if uid and (pod.get("metadata") or {}).get("uid") != uid:
            return _text(404, "pod not found")
        return pod

    async def _port_forward(self, request: web.Request) -> web.StreamResponse:
        namespace, pod_name = request.match_info["namespace"], request.match_info["pod"]
        pod = self._pod_at(request)
        if isinstance(pod, web.Response):
            return pod
        meta = pod.get("metadata") or {}
        chosen = _stream_protocol(request, PORT_FORWARD_PROTOCOLS)
        if isinstance(chosen, web.Response):
            return chosen
        try:
            ports = [int(p) for value in request.query.getall("ports", [])
                     for p in value.split(",") if p.strip()]
        except ValueError:
            return _text(400, "invalid port in ports")
        selector = {POD_NAME: meta.get("name", ""), POD_NAMESPACE: meta.get("namespace", "")}
        if meta.get("uid"):
            selector[POD_UID] = meta["uid"]
        sandboxes = await self.runtime.list_pod_sandbox(api.PodSandboxFilter(
            label_selector=selector,
            state=api.PodSandboxStateValue(state=api.SANDBOX_READY)))
        if not sandboxes:
            return _text(500, f'pod not found ("{pod_name}_{namespace}")')
        newest = max(sandboxes, key=lambda sandbox: sandbox.created_at)
        try:
            url = await self.runtime.port_forward(newest.id, ports)
        except NotFoundError as exc:
            return _text(404, exc.detail)
        except RuntimeError_ as exc:
            return _text(500, exc.detail or str(exc))
        if chosen is None:
            return await self._relay_upgrade(request, url)
        if chosen == SPDY_TUNNEL:
            return await self._tunnel(request, url, chosen)
        return await self._relay_websocket(request, url, chosen, chosen)

    async def _relay_websocket(self, request: web.Request, url: str, chosen: str,
                               backend_protocol: str) -> web.StreamResponse:
        """The client's WebSocket carried message by message to one of the runtime's."""
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=STREAM_CONNECT_TIMEOUT))
        try:
            try:
                backend = await asyncio.wait_for(session.ws_connect(
                    _websocket_url(url), protocols=[backend_protocol],
                    origin=_origin(url), max_msg_size=0, autoclose=False, autoping=True,
                    compress=0), STREAM_CONNECT_TIMEOUT)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                return _text(500, f"error dialing backend: {exc or 'timed out'}")
            socket = web.WebSocketResponse(protocols=[chosen], max_msg_size=0,
                                           autoclose=False, autoping=True, compress=False)
            await socket.prepare(request)
            self._sockets.add(socket)
            try:
                await _relay(socket, backend, chosen == V5)
            finally:
                self._sockets.discard(socket)
                await backend.close()
                if not socket.closed:
                    await socket.close()
            return socket
        finally:
            await session.close()

    async def _relay_upgrade(self, request: web.Request, url: str) -> web.StreamResponse:
        """A non-WebSocket upgrade (SPDY/3.1: kubectl before 1.30, port-forward) passed
        to the runtime's streaming server as it came; after its 101 the bytes flow
        untouched both ways, as upstream's kubelet proxies these."""
        headers = [(name, value) for name, value in request.headers.items()
                   if name.lower() not in UNRELAYED_HEADERS]
        opened = await _open_upgrade(url, request.method, headers)
        if isinstance(opened, web.Response):
            return opened
        reader, writer, answer_headers = opened
        return await relay_upgraded(request, reader, writer, answer_headers,
                                    lambda: self._stopping)

    async def _tunnel(self, request: web.Request, url: str, chosen: str) -> web.StreamResponse:
        """Port forwarding tunnelled in WebSocket (kubectl 1.31+): the client speaks SPDY
        inside binary messages, so the runtime gets a SPDY upgrade of its own and the
        messages' bytes are its connection's bytes."""
        opened = await _open_upgrade(url, "POST", [
            ("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "portforward.k8s.io")])
        if isinstance(opened, web.Response):
            return opened
        reader, writer, _ = opened
        socket = web.WebSocketResponse(protocols=[chosen], max_msg_size=0, autoclose=False,
                                       compress=False)
        await socket.prepare(request)
        self._sockets.add(socket)

        async def client_to_backend() -> None:
            async for message in socket:
                if message.type != WSMsgType.BINARY:
                    break
                writer.write(message.data)
                await writer.drain()

        async def backend_to_client() -> None:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                await socket.send_bytes(chunk)

        upstream = asyncio.ensure_future(client_to_backend())
        downstream = asyncio.ensure_future(backend_to_client())
        try:
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (upstream, downstream):
                task.cancel()
            await asyncio.gather(upstream, downstream, return_exceptions=True)
            self._sockets.discard(socket)
            writer.close()
            if not socket.closed:
                await socket.close()
        return socket


def _upgrade_kind(request: web.Request) -> str | web.Response:
    """"websocket" or "spdy/3.1" for an upgrade request; an error answer otherwise."""
    upgrade = request.headers.get("Upgrade", "").strip().lower()
    if "upgrade" not in request.headers.get("Connection", "").lower() or not upgrade:
        return _text(400, "Upgrade request required")
    if upgrade != "websocket" and not upgrade.startswith("spdy/"):
        return _text(400, f"unable to upgrade: {request.headers.get('Upgrade')} is not "
                     "supported (WebSocket or SPDY/3.1)")
    return upgrade


def _offered_protocols(request: web.Request) -> list[str]:
    return [p.strip() for value in request.headers.getall("Sec-WebSocket-Protocol", [])
            for p in value.split(",") if p.strip()]


def _stream_protocol(request: web.Request, supported) -> str | None | web.Response:
    """The WebSocket subprotocol to answer with (the client's first that `supported`
    holds), None for a SPDY upgrade, or the error answer for a bad upgrade."""
    upgrade = _upgrade_kind(request)
    if isinstance(upgrade, web.Response):
        return upgrade
    if upgrade != "websocket":
        return None
    offered = _offered_protocols(request)
    chosen = next((p for p in offered if p in supported), None)
    if chosen is None:
        return _text(400, f"unable to upgrade: unable to negotiate protocol: client "
                     f"supports {offered}, server supports {sorted(supported)}")
    return chosen


async def _open_upgrade(url: str, method: str, headers: list[tuple[str, str]]):
    """Sends an upgrade request to the runtime's streaming server. (reader, writer, the
    answer's headers) once it answers 101; otherwise its answer, to pass on."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
            ssl=parts.scheme == "https" or None), STREAM_CONNECT_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as exc:
        return _text(500, f"error dialing backend: {exc or 'timed out'}")
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}"]
        head += [f"{name}: {value}" for name, value in headers]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        status, answer = await asyncio.wait_for(read_response_head(reader),
                                                STREAM_CONNECT_TIMEOUT)
        if status == 101:
            return reader, writer, answer
        length = next((int(v) for k, v in answer if k.lower() == "content-length"
                       and v.isdigit()), None)
        body = await asyncio.wait_for(
            reader.readexactly(min(length, MAX_ERROR_BODY)) if length is not None
            else reader.read(MAX_ERROR_BODY), STREAM_CONNECT_TIMEOUT)
    except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError,
            asyncio.LimitOverrunError) as exc:
        writer.close()
        return _text(500, f"error upgrading connection: {exc or 'timed out'}")
    writer.close()
    response = web.Response(status=status, body=body)
    response.headers["Content-Type"] = next(
        (v for k, v in answer if k.lower() == "content-type"), "text/plain")
    return response


async def _relay(client: web.WebSocketResponse, backend: aiohttp.ClientWebSocketResponse,
                 client_v5: bool) -> None:
    """Carries messages both ways until either side closes."""

    async def client_to_backend() -> None:
        async for message in client:
            if message.type == WSMsgType.BINARY:
                data = message.data
                if client_v5 and data[:1] == bytes([CLOSE_CHANNEL]):
                    # v5's channel close has no v4 form: dropped (see the module doc).
                    log.debug("exec: close of channel %s not relayed", list(data[1:2]))
                    continue
                await backend.send_bytes(data)
            elif message.type == WSMsgType.TEXT:
                await backend.send_str(message.data)
            else:
                break

    async def backend_to_client() -> None:
        async for message in backend:
            if message.type == WSMsgType.BINARY:
                await client.send_bytes(message.data)
            elif message.type == WSMsgType.TEXT:
                await client.send_str(message.data)
            else:
                break

    upstream = asyncio.ensure_future(client_to_backend())
    downstream = asyncio.ensure_future(backend_to_client())
    try:
        await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (upstream, downstream):
            task.cancel()
        await asyncio.gather(upstream, downstream, return_exceptions=True)
    if not client.closed:
        # The command's end (the runtime closed) reaches the client as a normal close.
        await client.close(code=backend.close_code or aiohttp.WSCloseCode.OK)


def _websocket_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme,) + tuple(parts[1:]))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


def _strip_runtime(container_id: str | None) -> str:
    """"containerd://abc" -> "abc"."""
    return (container_id or "").partition("://")[2] or (container_id or "")


def _container_names(pod: Obj) -> set[str]:
    spec = pod.get("spec") or {}
    return {c.get("name") for key in ("containers", "initContainers", "ephemeralContainers")
            for c in spec.get(key) or [] if isinstance(c, dict)}


def _container_status(pod: Obj, container: str) -> Obj | None:
    status = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for entry in status.get(key) or []:
            if isinstance(entry, dict) and entry.get("name") == container:
                return entry
    return None
