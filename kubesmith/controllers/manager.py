"""Runs the enabled controllers of one kube-controller-manager process.

    manager = ControllerManager(client, options, host=hostname)
    await manager.run()          # until cancelled

Every module of kubesmith.controllers is imported so each registers its controllers;
the enabled ones (--controllers) are built from one ControllerContext, the informers
they asked for are started and synced, then each controller's run(workers) is a task.
A controller whose run() raises (or returns) is logged, dropped with its informer
handlers, and built and run anew after a backoff; the others carry on, as the process
does.

`run_process()` adds what the process does around that: the /healthz listener, and
leader election on the Lease kube-system/kube-controller-manager, with controllers
running only while this process leads. Losing the lease ends the process non-zero as
upstream's does ("leaderelection lost"); SIGTERM releases the lease and ends it with 0.
"""
from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import pkgutil
import socket
import uuid
from typing import Any

import kubesmith.controllers as package
from kubesmith.client.informers import InformerFactory, SharedInformer
from kubesmith.client.leaderelection import LeaderElector
from kubesmith.client.ratelimit import Backoff
from kubesmith.client.rest import ApiClient
from kubesmith.controllers import CONTROLLERS, DISABLED_BY_DEFAULT
from kubesmith.controllers.context import ControllerContext
from kubesmith.controllers.credentials import (CONTROLLER_SERVICE_ACCOUNTS,
                                               ServiceAccountCredentials)
from kubesmith.controllers.options import (
    UPSTREAM_CONTROLLERS,
    UPSTREAM_DISABLED_BY_DEFAULT,
    Options,
    canonical_name,
    is_enabled,
)

log = logging.getLogger(__name__)

# The process's own modules; every other module of the package may hold controllers.
_NOT_CONTROLLERS = {"main", "manager", "options", "context", "credentials", "common"}
SYNC_WAIT_LOG_EVERY = 30.0
EXIT_LEADERSHIP_LOST = 1

# Controller (upstream's name) -> the Options field holding its worker count.
WORKER_OPTIONS = {
    "deployment-controller": "concurrent_deployment_syncs",
    "replicaset-controller": "concurrent_replicaset_syncs",
    "replicationcontroller-controller": "concurrent_rc_syncs",
    "statefulset-controller": "concurrent_statefulset_syncs",
    "daemonset-controller": "concurrent_daemonset_syncs",
    "job-controller": "concurrent_job_syncs",
    "cronjob-controller": "concurrent_cron_job_syncs",
    "endpoints-controller": "concurrent_endpoint_syncs",
    "endpointslice-controller": "concurrent_service_endpoint_syncs",
    "endpointslice-mirroring-controller": "concurrent_endpointslice_mirroring_syncs",
    "namespace-controller": "concurrent_namespace_syncs",
    "garbage-collector-controller": "concurrent_gc_syncs",
    "ttl-after-finished-controller": "concurrent_ttl_after_finished_syncs",
    "resourcequota-controller": "concurrent_resource_quota_syncs",
    "serviceaccount-token-controller": "concurrent_serviceaccount_token_syncs",
    "horizontal-pod-autoscaler-controller": "concurrent_horizontal_pod_autoscaler_syncs",
    "service-lb-controller": "concurrent_service_syncs",
    "ephemeral-volume-controller": "concurrent_ephemeralvolume_syncs",
}


def load_controllers() -> dict[str, type]:
    """Import every controller module (each registers itself); the registry."""
    for module in pkgutil.iter_modules(package.__path__):
        if module.name in _NOT_CONTROLLERS or module.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{package.__name__}.{module.name}")
        except Exception:
            # One broken module must not take the other controllers down.
            log.exception("cannot load controller module %s", module.name)
    return CONTROLLERS


def enabled_controllers(options: Options) -> list[str]:
    """Registered names of the controllers --controllers turns on, in a stable order."""
    load_controllers()
    disabled = set(DISABLED_BY_DEFAULT) | set(UPSTREAM_DISABLED_BY_DEFAULT)
    enabled = [name for name in sorted(CONTROLLERS)
               if is_enabled(name, options.controllers, disabled)]
    implemented = {canonical_name(name) for name in CONTROLLERS}
    for entry in options.controllers:
        wanted = canonical_name(entry.lstrip("-"))
        if entry != "*" and not entry.startswith("-") and wanted not in implemented \
                and wanted in UPSTREAM_CONTROLLERS:
            log.warning("controller %s is not implemented by kubesmith; skipped", entry)
    return enabled


def workers_for(name: str, options: Options) -> int:
    field = WORKER_OPTIONS.get(canonical_name(name))
    return max(int(getattr(options, field, 1)), 1) if field else 1


class _RecordingInformer:
    """A shared informer as one controller sees it: the handlers it adds are noted, so
    that they can be removed when that controller is rebuilt."""

    def __init__(self, informer: SharedInformer, handlers: list):
        self._informer = informer
        self._handlers = handlers

    def add_event_handler(self, on_add=None, on_update=None, on_delete=None):
        handler = self._informer.add_event_handler(on_add, on_update, on_delete)
        self._handlers.append((self._informer, handler))
        return handler

    def __getattr__(self, name: str) -> Any:
        return getattr(self._informer, name)


class _RecordingFactory:
    """The process's InformerFactory as one controller sees it (see _RecordingInformer)."""

    def __init__(self, factory: InformerFactory):
        self._factory = factory
        self.handlers: list[tuple[SharedInformer, Any]] = []

    def informer(self, resource, **scope) -> _RecordingInformer:
        return _RecordingInformer(self._factory.informer(resource, **scope), self.handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory, name)


class ControllerManager:
    """Builds each enabled controller from a ControllerContext sharing the process's
    client and informers, and keeps them running. A controller whose run() raises (or
    returns) is dropped, its informer handlers removed, and a new one is built and run
    after a backoff (1 s doubling to 60 s): whatever state the old one had is rebuilt
    from the informers' caches, as at start."""

    def __init__(self, client: ApiClient, options: Options, *, host: str = "",
                 restart_backoff: float = 1.0):
        self.client = client
        self.options = options
        self.host = host or socket.gethostname()
        self.restart_backoff = restart_backoff     # first wait before a restart, doubling
        self.controllers: dict[str, Any] = {}
        self.restarts: dict[str, int] = {}
        self.informers = InformerFactory(client)
        self.started = asyncio.Event()      # set once every controller's run() began
        self._views: dict[str, _RecordingFactory] = {}
        # With --use-service-account-credentials each controller writes through a client
        # of its own ServiceAccount; the informers stay on the manager's client.
        self.credentials = ServiceAccountCredentials(client) \
            if options.use_service_account_credentials else None
        self.clients: dict[str, ApiClient] = {}

    async def make_clients(self, names: list[str]) -> None:
        """The client each controller writes with (its ServiceAccount's, if asked)."""
        for name in names:
            account = CONTROLLER_SERVICE_ACCOUNTS.get(name)
            if self.credentials is not None and account and name not in self.clients:
                self.clients[name] = await self.credentials.client_for(account)

    def construct(self, name: str) -> Any:
        """A new instance of a registered controller, on the shared informers."""
        view = _RecordingFactory(self.informers)
        context = ControllerContext(self.clients.get(name, self.client), view,  # type: ignore[arg-type]
                                    self.options, host=self.host)
        controller = CONTROLLERS[name](context)
        self._views[name] = view
        self.controllers[name] = controller
        return controller

    def discard(self, name: str) -> None:
        """Forget a controller instance and detach its informer handlers."""
        self.controllers.pop(name, None)
        view = self._views.pop(name, None)
        for informer, handler in view.handlers if view else ():
            try:
                informer.remove_event_handler(handler)
            except ValueError:
                pass

    async def sync_informers(self) -> None:
        """Start every informer asked for and wait until all have synced."""
        self.informers.start()
        while not await self.informers.wait_for_sync(SYNC_WAIT_LOG_EVERY):
            waiting = [repr(i) for i in self.informers.informers if not i.has_synced()]
            log.warning("waiting for informers to sync: %s", ", ".join(waiting))

    async def run(self) -> None:
        """Build, sync and run the enabled controllers until cancelled."""
        names = enabled_controllers(self.options)
        tasks: list[asyncio.Task] = []
        try:
            await self.make_clients(names)
            for name in names:
                self.construct(name)
                log.info("built controller %s", name)
            await self.sync_informers()
            log.info("informers synced; starting %d controllers", len(self.controllers))
            tasks = [asyncio.create_task(self._supervise(name), name=name)
                     for name in list(self.controllers)]
            self.started.set()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.informers.shutdown()
            if self.credentials is not None:
                await self.credentials.close()
                self.clients.clear()

    async def _supervise(self, name: str) -> None:
        backoff = Backoff(self.restart_backoff, 60.0, reset_after=300.0)
        workers = workers_for(name, self.options)
        while True:
            controller = self.controllers.get(name)
            try:
                if controller is None:
                    controller = self.construct(name)
                    await self.sync_informers()
                    log.info("controller %s rebuilt", name)
                await controller.run(workers)
                log.error("controller %s stopped by itself; restarting it", name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("controller %s failed; restarting it", name)
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self.discard(name)
            await asyncio.sleep(backoff.next())


def make_client(options: Options) -> ApiClient:
    qps, burst = options.kube_api_qps, options.kube_api_burst
    settings = dict(component="kube-controller-manager", qps=qps, burst=burst)
    if options.kubeconfig:
        client = ApiClient.from_kubeconfig(options.kubeconfig, **settings)
    else:
        client = ApiClient.in_cluster(**settings)
    if options.master:
        client.config = dataclasses.replace(client.config, server=options.master.rstrip("/"))
    return client


async def run_process(options: Options, stop: asyncio.Event) -> int:
    """The process's life until `stop` is set (exit code 0) or leadership is lost (1)."""
    from kubesmith.controllers.main import HealthServer
    client = make_client(options)
    manager = ControllerManager(client, options)
    health = HealthServer(options)
    health.manager = manager
    code = 0
    try:
        await health.start()
        if options.leader_elect:
            identity = f"{socket.gethostname()}_{uuid.uuid4()}"
            elector = LeaderElector(
                client, name=options.leader_elect_resource_name,
                namespace=options.leader_elect_resource_namespace, identity=identity,
                on_started_leading=manager.run,
                on_stopped_leading=lambda: log.info("stopped leading"),
                on_new_leader=lambda holder: log.info("new leader elected: %s", holder),
                lease_duration=options.leader_elect_lease_duration,
                renew_deadline=options.leader_elect_renew_deadline,
                retry_period=options.leader_elect_retry_period)
            main = asyncio.create_task(elector.run(), name="leader-election")
            health.leader_election = elector
        else:
            main = asyncio.create_task(manager.run(), name="controllers")
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({main, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if main.done():
            # The work never ends by itself: leadership was lost or the manager failed.
            if not main.cancelled() and main.exception() is not None:
                log.error("controller manager failed: %s", main.exception())
            else:
                log.error("leaderelection lost")
            code = EXIT_LEADERSHIP_LOST
        else:
            log.info("shutting down")
            main.cancel()       # the elector releases the lease on cancel
            await asyncio.gather(main, return_exceptions=True)
        stopping.cancel()
    finally:
        await client.close()
        await health.stop()
    return code
