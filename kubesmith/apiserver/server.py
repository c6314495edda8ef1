"""The API server: TLS listener, the request pipeline, and what runs beside it.

Every request goes through the same steps: authenticate (client certificate, bearer
token hook, anonymous when allowed) -> parse what it asks for -> authorize -> limit
concurrency (429 beyond --max-*-requests-inflight; watches are not counted) -> serve
(generic REST for resources, the non-resource endpoints otherwise). Any failure is a
metav1 Status; an unexpected exception is logged and answered with a 500 Status,
never a traceback.

Beside the listener: the bootstrap (system namespaces, default RBAC, the kubernetes
Service; retried until etcd answers), the watch caches of the RBAC kinds and namespaces
(started at once; the others start on first use), and etcd compaction.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import time
from typing import Any, Callable

from aiohttp import web

from kubesmith.api.registry import REGISTRY, ResourceType
from kubesmith.apiserver import (
    admission,
    allocators,
    authz,
    bootstrap,
    bootstrap_policy,
    compaction,
    endpoints,
    errors,
    issuerdiscovery,
    nodegraph,
    requestinfo,
    rest,
    serviceaccount,
)
from kubesmith.apiserver.authn import MASTERS, Authenticator, UserInfo
from kubesmith.apiserver.context import Ctx, respond
from kubesmith.apiserver.metrics import Metrics
from kubesmith.apiserver.options import Options
from kubesmith.apiserver.storage import StorageMap
from kubesmith.apiserver.watchcache import WatchCache
from kubesmith.flags import parse_duration
from kubesmith.store import (
    EtcdStore,
    RequestTooLargeError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from kubesmith.store.encryption import load as load_encryption

log = logging.getLogger(__name__)
access_log = logging.getLogger("kubesmith.apiserver.http")

MAX_REQUEST_BYTES = 3 * 1024 * 1024 + 64 * 1024   # upstream's 3 MiB, plus envelope
RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_PLURALS = ("clusterroles", "clusterrolebindings", "roles", "rolebindings")
STARTUP_WAIT = 5.0      # seconds a request may wait for the RBAC caches at startup
# Streams with no time limit and outside the in-flight counts, as upstream's.
LONG_RUNNING_SUBRESOURCES = ("log", "exec", "attach", "portforward", "proxy")
# asyncio.timeout (Python 3.11+) bounds a request without a task of its own.
_timeout = getattr(asyncio, "timeout", None)


class StaticRBAC:
    """The default policy itself, for non-resource paths (health, discovery, /version)
    while the RBAC caches are not loaded yet (at startup, or with etcd away)."""

    def __init__(self) -> None:
        self._roles = {r["metadata"]["name"]: r for r in bootstrap_policy.cluster_roles()}
        self._bindings = bootstrap_policy.cluster_role_bindings()

    def cluster_roles(self) -> dict[str, dict]:
        return self._roles

    def cluster_role_bindings(self) -> list[dict]:
        return self._bindings

    def roles(self, namespace: str) -> dict[str, dict]:
        return {}

    def role_bindings(self, namespace: str) -> list[dict]:
        return []

    def generation(self) -> tuple:
        return ()


class CacheRBAC:
    """The RBAC objects as the authorizer reads them, indexed from the watch caches."""

    def __init__(self, caches: dict[str, WatchCache]):
        self.caches = caches
        self._index: dict[str, tuple[int, Any]] = {}

    def _indexed(self, plural: str, build):
        cache = self.caches[plural]
        entry = self._index.get(plural)
        if entry is None or entry[0] != cache.generation:
            entry = (cache.generation, build(cache.objects))
            self._index[plural] = entry
        return entry[1]

    def cluster_roles(self) -> dict[str, dict]:
        return self._indexed("clusterroles", lambda objs: {
            (o.get("metadata") or {}).get("name", ""): o for o in objs.values()})

    def cluster_role_bindings(self) -> list[dict]:
        return self._indexed("clusterrolebindings", lambda objs: list(objs.values()))

    @staticmethod
    def _by_namespace(objs: dict, as_map: bool):
        index: dict[str, Any] = {}
        for obj in objs.values():
            meta = obj.get("metadata") or {}
            namespace = meta.get("namespace", "")
            if as_map:
                index.setdefault(namespace, {})[meta.get("name", "")] = obj
            else:
                index.setdefault(namespace, []).append(obj)
        return index

    def roles(self, namespace: str) -> dict[str, dict]:
        return self._indexed("roles", lambda objs: self._by_namespace(objs, True)).get(
            namespace, {})

    def role_bindings(self, namespace: str) -> list[dict]:
        return self._indexed("rolebindings", lambda objs: self._by_namespace(objs, False)).get(
            namespace, [])

    def generation(self) -> tuple:
        return tuple(self.caches[p].generation for p in RBAC_PLURALS)

    @property
    def ready(self) -> bool:
        return all(c.ready.is_set() for c in self.caches.values())


def server_ssl_context(options: Options) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(options.tls_cert_file, options.tls_private_key_file)
    if options.client_ca_file:
        context.load_verify_locations(cafile=options.client_ca_file)
        # Optional: requests without a certificate may still carry a bearer token.
        context.verify_mode = ssl.CERT_OPTIONAL
    context.set_alpn_protocols(["http/1.1"])
    return context


class APIServer:
    def __init__(self, options: Options):
        self.options = options
        self.metrics = Metrics()
        self.store = EtcdStore(options.etcd_servers, options.etcd_cafile, options.etcd_certfile,
                               options.etcd_keyfile)
        encryption = load_encryption(options.encryption_provider_config) \
            if options.encryption_provider_config else None
        self.storage = StorageMap(self.store, REGISTRY, encryption)
        self.caches: dict[bytes, WatchCache] = {}
        self.authenticator = Authenticator(options.anonymous_auth,
                                           serviceaccount.token_authenticators(self))
        self.rbac: authz.RBAC | None = None
        self.rbac_source: CacheRBAC | None = None
        self.authorizer = self._authorizer()
        self._startup_authorizer = authz.Chain([authz.PrivilegedGroups((MASTERS,)),
                                                authz.RBAC(StaticRBAC())])
        self.admission = admission.build(options.admission_plugins, self.get_namespace, self)
        address = options.advertise_address or options.bind_address
        self.discovery = endpoints.Discovery(f"{address}:{options.secure_port}")
        self.health = endpoints.Health()
        self.issuer_discovery = issuerdiscovery.for_server(self)
        self.bootstrapped = asyncio.Event()
        self.shutting_down = False
        self._inflight = {"readOnly": 0, "mutating": 0}
        self._tasks: list[asyncio.Task] = []
        self._runner: web.AppRunner | None = None
        self._etcd_ok = (0.0, None)
        self._health_checks()

    # --- wiring --------------------------------------------------------------------

    def _authorizer(self) -> authz.Chain:
        chain: list = [authz.PrivilegedGroups((MASTERS,))]
        for mode in self.options.authorization_mode:
            if mode == "AlwaysAllow":
                chain.append(authz.AlwaysAllow())
            elif mode == "AlwaysDeny":
                chain.append(authz.AlwaysDeny())
            elif mode == "Node":
                chain.append(authz.Node(bootstrap_policy.node_rules(),
                                        nodegraph.for_server(self)))
            elif mode == "RBAC":
                caches = {}
                for plural in RBAC_PLURALS:
                    rt = REGISTRY.get(RBAC_GROUP, "v1", plural)
                    if rt is None:
                        raise RuntimeError(f"RBAC needs {plural}.{RBAC_GROUP} in the registry")
                    caches[plural] = self.cache_for(rt)
                self.rbac_source = CacheRBAC(caches)
                self.rbac = authz.RBAC(self.rbac_source)
                chain.append(self.rbac)
        return authz.Chain(chain)

    def _health_checks(self) -> None:
        async def ping():
            return None

        async def etcd():
            # At most one probe a second, however many probes ask.
            checked_at, result = self._etcd_ok
            if time.monotonic() - checked_at < 1.0:
                return result
            try:
                await asyncio.wait_for(self.store.range(b"/registry/health", limit=1,
                                                        keys_only=True), 2.0)
                result = None
            except (StoreError, asyncio.TimeoutError) as exc:
                result = f"etcd: {exc or 'timed out'}"
            self._etcd_ok = (time.monotonic(), result)
            return result

        async def caches():
            pending = [c.storage.name for c in self.caches.values() if not c.ready.is_set()]
            return f"caches not synced: {', '.join(pending)}" if pending else None

        async def bootstrapped():
            return None if self.bootstrapped.is_set() else "not finished"

        async def shutdown():
            return "shutting down" if self.shutting_down else None

        self.health.add("ping", ping)
        self.health.add("log", ping)
        self.health.add("etcd", etcd)
        self.health.add("informer-sync", caches, live=False)
        self.health.add("poststarthook/rbac/bootstrap-roles", bootstrapped)
        self.health.add("poststarthook/bootstrap-controller", bootstrapped)
        self.health.add("shutdown", shutdown, live=False)

    def cache_for(self, rt: ResourceType) -> WatchCache:
        storage = self.storage.for_type(rt)
        cache = self.caches.get(storage.prefix)
        if cache is None:
            cache = WatchCache(storage, self.options.default_watch_cache_size)
            self.caches[storage.prefix] = cache
            try:
                cache.start()
            except RuntimeError:
                pass  # no loop yet: started by start()
        return cache

    async def ready_cache(self, rt: ResourceType) -> WatchCache | None:
        """The kind's watch cache once synced; None when caching is off or it is not ready
        in time (the caller then reads etcd)."""
        if not self.options.watch_cache:
            return None
        cache = self.cache_for(rt)
        if await cache.wait_ready(STARTUP_WAIT):
            return cache
        return None

    async def current_revision(self, prefix: bytes) -> int:
        return (await self.store.range(prefix, limit=1, keys_only=True)).revision

    async def read_object(self, rt: ResourceType, key: bytes,
                          accept: Callable[[dict], bool] | None = None) -> dict | None:
        """An object by storage key, for the server's own checks: from the kind's synced
        watch cache when it holds it (and `accept` takes it), else from etcd, so an
        object created a moment ago is found."""
        if self.options.watch_cache:
            cache = self.cache_for(rt)
            if cache.ready.is_set():
                obj = cache.get(key)
                if obj is not None and (accept is None or accept(obj)):
                    return obj
        kv = await self.store.get(key)
        return self.storage.for_type(rt).decode(kv) if kv is not None else None

    async def get_namespace(self, name: str) -> dict | None:
        rt = REGISTRY.get("", "v1", "namespaces")
        return await self.read_object(rt, rt.storage_key(None, name))

    # --- request pipeline ----------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        ctx: Ctx | None = None
        info = None
        code = 500
        kind = None
        try:
            user = await self._authenticate(request)
            info = requestinfo.parse(request.method, request.rel_url.raw_path, request.query)
            ctx = Ctx(request, info, user)
            ctx.user = self._impersonate(ctx)
            await self._authorize(ctx)
            long_running = info.verb == "watch" or (
                info.is_resource and request.method == "GET" and
                request.query.get("watch") in ("1", "true", "True")) or (
                info.is_resource and info.subresource in LONG_RUNNING_SUBRESOURCES)
            if not long_running:
                kind = "readOnly" if request.method in ("GET", "HEAD") else "mutating"
                limit = (self.options.max_requests_inflight if kind == "readOnly"
                         else self.options.max_mutating_requests_inflight)
                if limit and self._inflight[kind] >= limit:
                    self.metrics.rejected.labels(kind).inc()
                    kind = None
                    raise errors.too_many_requests()
                self._inflight[kind] += 1
                self.metrics.inflight.labels(kind).set(self._inflight[kind])
            if long_running:
                response = await self._dispatch(ctx)
            else:
                response = await self._with_timeout(ctx)
            code = response.status
            return response
        except errors.APIError as exc:
            code = exc.code
            return self._error(ctx, exc)
        except StoreTimeoutError as exc:
            code = 504
            return self._error(ctx, errors.timeout(f"etcd did not answer in time: {exc}"))
        except StoreUnavailableError as exc:
            code = 503
            return self._error(ctx, errors.unavailable(f"etcd is unavailable: {exc}"))
        except RequestTooLargeError as exc:
            code = 413
            return self._error(ctx, errors.request_too_large(f"etcdserver: {exc}"))
        except StoreError as exc:
            log.error("etcd error serving %s %s: %s", request.method, request.path, exc)
            return self._error(ctx, errors.internal(str(exc)))
        except (ConnectionError, asyncio.CancelledError):
            code = 499
            raise
        except web.HTTPException as exc:
            code = exc.status
            return self._error(ctx, errors.APIError(exc.status, exc.reason or "", exc.text or ""))
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.path_qs)
            return self._error(ctx, errors.internal("an unexpected error occurred; see the "
                                                    "API server's log"))
        finally:
            if kind is not None:
                self._inflight[kind] -= 1
                self.metrics.inflight.labels(kind).set(self._inflight[kind])
            self._observe(request, info, code, started)

    async def _with_timeout(self, ctx: Ctx) -> web.StreamResponse:
        """--request-timeout, shortened by the client's own ?timeout=."""
        limit = self.options.request_timeout
        asked = ctx.param("timeout")
        if asked:
            try:
                wanted = parse_duration(asked)
            except (ValueError, argparse.ArgumentTypeError):
                raise errors.bad_request(f'invalid timeout "{asked}"') from None
            if wanted > 0:
                limit = min(limit, wanted) if limit > 0 else wanted
        if limit <= 0:
            return await self._dispatch(ctx)
        try:
            if _timeout is not None:
                # In this task: asyncio.wait_for would make a task for every request.
                async with _timeout(limit):
                    return await self._dispatch(ctx)
            return await asyncio.wait_for(self._dispatch(ctx), limit)
        except asyncio.TimeoutError:
            raise errors.timeout("request did not complete within requested timeout - "
                                 "context deadline exceeded") from None

    def _error(self, ctx: Ctx | None, exc: errors.APIError) -> web.Response:
        response = respond(ctx, exc.status(), exc.code)
        for name, value in exc.headers.items():
            response.headers[name] = value
        return response

    def _observe(self, request: web.Request, info, code: int, started: float) -> None:
        elapsed = time.monotonic() - started
        if info is not None and info.is_resource:
            labels = (info.verb.upper() if info.verb != "watch" else "WATCH", info.group,
                      info.version, info.resource, info.subresource,
                      "namespace" if info.namespace else ("resource" if info.name else
                                                          "cluster"))
        else:
            labels = (request.method, "", "", "", "", "")
        self.metrics.requests.labels(*labels, str(code)).inc()
        if not (info is not None and info.verb == "watch"):
            self.metrics.latency.labels(*labels).observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info('"%s %s" code=%d latency=%.1fms', request.method, request.path_qs,
                            code, elapsed * 1000)

    async def _authenticate(self, request: web.Request):
        der = None
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
        user = await self.authenticator.authenticate(der, request.headers.get("Authorization"))
        if user is None:
            raise errors.unauthorized()
        return user

    def _impersonate(self, ctx: Ctx):
        """Impersonate-User/-Group/-Uid/-Extra-*: act as another user, if allowed to."""
        headers = ctx.request.headers
        name = headers.get("Impersonate-User")
        groups = headers.getall("Impersonate-Group", [])
        uid = headers.get("Impersonate-Uid", "")
        extra: dict[str, list[str]] = {}
        for key, value in headers.items():
            if key.lower().startswith("impersonate-extra-"):
                extra.setdefault(key[len("impersonate-extra-"):].lower(), []).append(value)
        if name is None:
            if groups or uid or extra:
                raise errors.bad_request("requested impersonation of groups, uid or extra "
                                         "without impersonating a user")
            return ctx.user
        checks = []
        sa_prefix = "system:serviceaccount:"
        final_groups = list(groups)
        if name.startswith(sa_prefix) and name.count(":") == 3:
            namespace, sa = name[len(sa_prefix):].split(":", 1)
            checks.append(("", "serviceaccounts", "", namespace, sa))
            final_groups += ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
        else:
            checks.append(("", "users", "", "", name))
        checks += [("", "groups", "", "", g) for g in groups]
        if uid:
            checks.append(("authentication.k8s.io", "uids", "", "", uid))
        for key, values in extra.items():
            checks += [("authentication.k8s.io", "userextras", key, "", v) for v in values]
        for group, resource, subresource, namespace, target in checks:
            attrs = authz.Attributes(user=ctx.user, verb="impersonate", is_resource=True,
                                     namespace=namespace, group=group, resource=resource,
                                     subresource=subresource, name=target)
            decision, _ = self.authorizer.authorize(attrs)
            if decision is not authz.Decision.ALLOW:
                raise errors.forbidden(resource, group, target, authz.forbidden_reason(attrs))
        if name != "system:anonymous" and "system:authenticated" not in final_groups:
            final_groups.append("system:authenticated")
        return UserInfo(name, tuple(final_groups), uid, extra)

    async def _authorize(self, ctx: Ctx) -> None:
        info, user = ctx.info, ctx.user
        authorizer = self.authorizer
        if self.rbac_source is not None and not self.rbac_source.ready and \
                MASTERS not in user.groups:
            if info.is_resource:
                # At startup the RBAC caches may still be filling: wait a little, then 503.
                deadline = time.monotonic() + STARTUP_WAIT
                while not self.rbac_source.ready and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                if not self.rbac_source.ready:
                    raise errors.unavailable("the API server is starting up; authorization "
                                             "data is not loaded yet")
            else:
                authorizer = self._startup_authorizer
        attrs = authz.Attributes(
            user=user, verb=info.verb, is_resource=info.is_resource, namespace=info.namespace,
            group=info.group, version=info.version, resource=info.resource,
            subresource=info.subresource, name=info.name,
            path=info.path if not info.is_resource else "")
        if not info.is_resource:
            attrs = authz.Attributes(user=user, verb=info.verb, is_resource=False,
                                     path=ctx.request.path)
        decision, reason = authorizer.authorize(attrs)
        self.metrics.authorization.labels(decision.value).inc()
        if decision is not authz.Decision.ALLOW:
            message = authz.forbidden_reason(attrs)
            if reason:
                message = f"{message}: {reason}"
            raise errors.forbidden(info.resource if info.is_resource else "",
                                   info.group if info.is_resource else "",
                                   info.name if info.is_resource else "", message)

    async def _dispatch(self, ctx: Ctx) -> web.StreamResponse:
        if ctx.info.is_resource:
            return await rest.handle(self, ctx)
        request = ctx.request
        path = request.path
        if request.method not in ("GET", "HEAD"):
            raise errors.method_not_allowed(request.method, path)
        if path in ("/api", "/apis") or path.startswith(("/api/", "/apis/")):
            response = self.discovery.handle(ctx, path)
            if response is not None:
                return response
        elif path in ("/version", "/version/"):
            return respond(ctx, endpoints.version_info())
        elif path == "/metrics":
            for cache in self.caches.values():
                self.metrics.storage_objects.labels(cache.storage.name).set(len(cache.objects))
            body, content_type = self.metrics.render()
            response = web.Response(body=body)
            response.headers["Content-Type"] = content_type
            return response
        elif path.startswith("/openapi/"):
            response = endpoints.openapi_response(ctx, path)
            if response is not None:
                return response
        elif path in (issuerdiscovery.CONFIG_PATH, issuerdiscovery.JWKS_PATH):
            if self.issuer_discovery is not None:
                return self.issuer_discovery.handle(path)
        else:
            response = await self.health.handle(ctx, path)
            if response is not None:
                return response
        raise errors.path_not_found()

    # --- lifecycle -----------------------------------------------------------------

    async def _bootstrap(self) -> None:
        delay = 0.5
        while True:
            try:
                await bootstrap.namespaces(self)
                await bootstrap.rbac(self)
                await bootstrap.priority_classes(self)
                await allocators.repair(self)
                await bootstrap.kubernetes_service(self)
                self.bootstrapped.set()
                log.info("bootstrap complete")
                return
            except (StoreError, errors.APIError) as exc:
                log.warning("bootstrap: %s; retrying in %.1fs", getattr(exc, "message", exc),
                            delay)
            except Exception:
                log.exception("bootstrap failed; retrying in %.1fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def start(self) -> None:
        """Listen and start the background work."""
        options = self.options
        for cache in self.caches.values():
            cache.start()
        namespaces = REGISTRY.get("", "v1", "namespaces")
        if namespaces is not None and options.watch_cache:
            self.cache_for(namespaces)
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=3.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, options.bind_address, options.secure_port,
                           ssl_context=server_ssl_context(options), reuse_address=True,
                           backlog=1024)
        await site.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._bootstrap(), name="bootstrap"))
        self._tasks.append(loop.create_task(
            compaction.run(self.store, options.etcd_compaction_interval), name="compaction"))
        log.info("serving securely on %s:%d", options.bind_address, options.secure_port)

    async def stop(self) -> None:
        self.shutting_down = True
        for task in self._tasks:
            task.cancel()
        for cache in self.caches.values():
            for watcher in list(cache.watchers):
                watcher.terminate()
        if self._runner is not None:
            await self._runner.cleanup()
        for cache in list(self.caches.values()):
            await cache.stop()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await self.store.close()
