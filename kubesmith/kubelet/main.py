"""`kubelet`: the node agent. Registers the Node, runs the pods bound to it (and the
static pods of its folder) through CRI v1 on containerd, and reports their status.

    kubelet --config /var/lib/kubelet/config.yaml --kubeconfig /etc/kubernetes/kubelet.conf \\
            --hostname-override node-1 --node-ip 10.0.0.11

`Kubelet` wires the parts together (see kubesmith/kubelet/__init__.py for the modules):
one API client, informers for this node's pods and for Services (container
environment), the NodeAgent (registration, Lease, status), the pod workers with the
runtime relist, the StatusManager, static pods with their mirror pods, the volume and
probe managers, the HTTPS server on :10250, log rotation and the plain-HTTP /healthz on
127.0.0.1:10248. SIGTERM or SIGINT stops the kubelet and leaves the pods running, as
upstream: a kubelet started again adopts them (the runtime's labels say whose they are).
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any, Callable

from aiohttp import web

from kubesmith import process
from kubesmith.api.times import rfc3339
from kubesmith.client.events import EventRecorder
from kubesmith.client.informers import DeletedFinalStateUnknown, InformerFactory
from kubesmith.client.rest import ApiClient, ApiError
from kubesmith.cri.client import RuntimeError_
from kubesmith.kubelet import runtime as cri_config
from kubesmith.kubelet.config import ConfigError, KubeletOptions, parse_args
from kubesmith.kubelet.node import NodeAgent, memory_capacity
from kubesmith.kubelet.pods import PodWorkers, Relister, WorkerDeps
from kubesmith.kubelet.static import MirrorPods, StaticPodSource, config_hash, is_mirror_pod
from kubesmith.kubelet.status import StatusManager

log = logging.getLogger("kubesmith.kubelet")

Obj = dict[str, Any]
RUNTIME_WAIT = 60.0         # how long the start waits for the runtime's socket
MIRROR_SYNC_PERIOD = 5.0


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


class Kubelet:
    """One node's kubelet. The parts owned by other modules can be handed in (tests
    give fakes); by default they are made here."""

    def __init__(self, options: KubeletOptions, client: ApiClient, runtime: Any, *,
                 volumes: Any = None, probes: Any = None,
                 container_env: Callable | None = None,
                 server_factory: Callable[..., Any] | None = None,
                 log_rotator: Any = None, relist_period: float = 1.0):
        self.options = options
        self.config = options.config
        self.client = client
        self.runtime = runtime
        self.node_name = options.node_name
        self.recorder = EventRecorder(client, "kubelet", host=self.node_name)
        self.informers = InformerFactory(client)
        self.pods_informer = self.informers.informer(
            "v1 pods", field_selector=f"spec.nodeName={self.node_name}")
        self.services_informer = self.informers.informer("v1 services")
        self.node = NodeAgent(client, runtime, options, on_pod_cidr=self._pod_cidr,
                              recorder=self.recorder)
        self.status = StatusManager(client)
        if volumes is None:
            from kubesmith.kubelet.volumes import VolumeManager
            volumes = VolumeManager(client, options.root_dir, self.node_name)
        if container_env is None:
            from kubesmith.kubelet.envvars import container_env as container_env_func
            container_env = container_env_func
        if probes is None:
            from kubesmith.kubelet.probes import ProbeManager
            probes = ProbeManager(runtime, self._probe_changed, record_event=self._probe_event)
        self.volumes, self.probes = volumes, probes
        settings = cri_config.RuntimeSettings(
            root_dir=options.root_dir, cgroup_root=self.config.cgroup_root,
            cgroups_per_qos=self.config.cgroups_per_qos, cluster_dns=self.config.cluster_dns,
            cluster_domain=self.config.cluster_domain, resolv_conf=self.config.resolv_conf,
            memory_capacity=memory_capacity(), pod_pids_limit=self.config.pod_pids_limit,
            node_name=self.node_name)
        self.workers = PodWorkers(WorkerDeps(
            client=client, runtime=runtime, settings=settings, status=self.status,
            recorder=self.recorder, volumes=volumes, probes=probes,
            container_env=container_env, services=self._services,
            node_name=self.node_name, host_ip=lambda: self.node.address,
            node_allocatable=self._allocatable, status_target=self._status_target,
            on_static_removed=self._static_removed,
            sync_frequency=self.config.sync_frequency))
        self.relister = Relister(runtime, self.workers.wake, on_orphan=self._orphan,
                                 known=self._known, period=relist_period)
        self.mirrors = MirrorPods(client, self.node_name)
        self.static_source = (StaticPodSource(self.config.static_pod_path, self.node_name,
                                              self._static_changed,
                                              self.config.file_check_frequency)
                              if self.config.static_pod_path else None)
        self.static_pods: dict[str, Obj] = {}
        self._mirror_uids: dict[str, str] = {}      # static pod uid -> its mirror's uid
        self._cleaning: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self.server = None
        extra: dict[str, Any] = {}
        if server_factory is None and self.config.enable_server:
            from kubesmith.kubelet.server import KubeletServer
            server_factory = KubeletServer
            extra = {"list_pods": self.list_pods, "root_dir": options.root_dir}
        if server_factory is not None:
            self.server = server_factory(
                address=self.config.address, port=self.config.port,
                cert_file=self.config.tls_cert_file, key_file=self.config.tls_private_key_file,
                client_ca_file=self.config.client_ca_file, client=client, runtime=runtime,
                node_name=self.node_name, get_pod=self.get_pod, **extra)
        if log_rotator is None:
            from kubesmith.kubelet.logs import LogRotator
            log_rotator = LogRotator(runtime, self.config.container_log_max_size,
                                     self.config.container_log_max_files)
        self.log_rotator = log_rotator
        self._healthz: web.AppRunner | None = None
        self.started = False

    # --- lookups the parts use --------------------------------------------------------

    def _services(self, namespace: str) -> list[Obj]:
        lister = self.services_informer.lister
        services = list(lister.list(namespace))
        if namespace != "default":
            kubernetes = lister.get("kubernetes", "default")
            if kubernetes is not None:
                services.append(kubernetes)
        return services

    def _allocatable(self) -> Obj | None:
        return ((self.node.node or {}).get("status") or {}).get("allocatable")

    def get_pod(self, namespace: str, name: str) -> Obj | None:
        """The pod of that name this kubelet runs (static pods by their own name)."""
        for pod in self.static_pods.values():
            meta = _meta(pod)
            if meta.get("namespace") == namespace and meta.get("name") == name:
                return pod
        pod = self.pods_informer.lister.get(name, namespace)
        if pod is not None and not is_mirror_pod(pod):
            return pod
        return None

    def list_pods(self) -> list[Obj]:
        """Every pod this kubelet runs (the kubelet's /pods)."""
        pods = [pod for pod in self.pods_informer.lister.list() if not is_mirror_pod(pod)]
        return pods + list(self.static_pods.values())

    def _mirror_of(self, pod: Obj) -> Obj | None:
        meta = _meta(pod)
        mirror = self.pods_informer.lister.get(meta.get("name", ""), meta.get("namespace", ""))
        return mirror if mirror is not None and is_mirror_pod(mirror) else None

    def _status_target(self, pod: Obj) -> tuple[str, str, str] | None:
        meta = _meta(pod)
        if meta.get("uid") in self.static_pods:
            mirror = self._mirror_of(pod)
            if mirror is None or config_hash(mirror) != meta.get("uid"):
                return None
            return meta["namespace"], meta["name"], _meta(mirror).get("uid", "")
        return meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")

    def _known(self, uid: str) -> bool:
        return uid in self.static_pods or self.workers.running(uid) or uid in self._cleaning

    # --- events from the parts --------------------------------------------------------

    def _probe_changed(self, uid: str) -> None:
        self.workers.wake(uid)

    def _probe_event(self, pod: Obj, container: str, event_type: str, reason: str,
                     message: str) -> None:
        from kubesmith.kubelet.pods import container_field_path
        self.recorder.emit(pod, event_type, reason, message,
                           field_path=container_field_path(pod, container))

    async def _pod_cidr(self, cidr: str) -> None:
        try:
            await self.runtime.update_runtime_config(cidr)
            log.info("pod CIDR %s handed to the runtime", cidr)
        except Exception as exc:
            log.warning("handing pod CIDR %s to the runtime: %s", cidr, exc)

    def _pod_event(self, pod: Obj) -> None:
        if is_mirror_pod(pod):
            if _meta(pod).get("deletionTimestamp"):
                # A deleted mirror pod is made again; its static pod keeps running.
                self._spawn(self.mirrors.delete(pod))
            static_uid = config_hash(pod)
            mirror_uid = _meta(pod).get("uid", "")
            if static_uid in self.static_pods and \
                    self._mirror_uids.get(static_uid) != mirror_uid:
                # A new mirror pod: the static pod's status is written to it afresh.
                self._mirror_uids[static_uid] = mirror_uid
                self.status.forget(static_uid)
                self.workers.wake(static_uid)
            return
        self.workers.update(pod)

    def _pod_deleted(self, pod: Obj | DeletedFinalStateUnknown) -> None:
        obj = pod.obj if isinstance(pod, DeletedFinalStateUnknown) else pod
        if not obj:
            return
        if is_mirror_pod(obj):
            self._spawn(self._sync_mirrors())
            return
        self.workers.forget(_meta(obj).get("uid", ""))

    def _static_changed(self, pods: dict[str, Obj]) -> None:
        for uid, pod in self.static_pods.items():
            if uid not in pods:
                # The manifest is gone: the pod stops as if deleted with its grace period.
                gone = dict(pod, metadata=dict(
                    _meta(pod), deletionTimestamp=rfc3339(),
                    deletionGracePeriodSeconds=(pod.get("spec") or {}).get(
                        "terminationGracePeriodSeconds", 30)))
                self.workers.update(gone)
        for uid in pods:
            if uid not in self.static_pods:
                log.info("static pod %s/%s", _meta(pods[uid]).get("namespace"),
                         _meta(pods[uid]).get("name"))
        self.static_pods = {uid: pod for uid, pod in pods.items()}
        for pod in pods.values():
            self.workers.update(pod)
        if self.started:
            self._spawn(self._sync_mirrors())

    async def _static_removed(self, pod: Obj) -> None:
        mirror = self._mirror_of(pod)
        if mirror is not None and config_hash(mirror) == _meta(pod).get("uid"):
            await self.mirrors.delete(mirror)

    async def _sync_mirrors(self) -> None:
        """Every static pod has its mirror pod, and no mirror pod outlives its pod."""
        if not self.node.uid:
            return
        wanted = {uid: pod for uid, pod in self.static_pods.items()}
        for pod in wanted.values():
            try:
                await self.mirrors.ensure(pod, self._mirror_of(pod), self.node.uid)
            except Exception as exc:
                log.warning("mirror pod of %s: %s", _meta(pod).get("name"), exc)
        for pod in self.pods_informer.lister.list():
            if is_mirror_pod(pod) and config_hash(pod) not in wanted:
                try:
                    await self.mirrors.delete(pod)
                except Exception as exc:
                    log.warning("orphaned mirror pod %s: %s", _meta(pod).get("name"), exc)

    async def _mirror_loop(self) -> None:
        while True:
            await self._sync_mirrors()
            await asyncio.sleep(MIRROR_SYNC_PERIOD)

    def _orphan(self, uid: str) -> None:
        """The runtime has containers of a pod this kubelet does not run: remove them
        (a pod deleted while the kubelet was down, say)."""
        if uid in self._cleaning or not self.pods_informer.has_synced():
            return
        self._cleaning.add(uid)

        async def clean() -> None:
            try:
                log.info("removing the containers of pod %s, which this node no longer runs",
                         uid)
                await self.workers.cleanup_pod(uid)
            except Exception as exc:
                log.warning("cleaning up pod %s: %s", uid, exc)
            finally:
                self._cleaning.discard(uid)
        self._spawn(clean())

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    # --- start and stop ---------------------------------------------------------------

    async def _until_done(self, what: str, attempt: Callable) -> Any:
        """Retry `attempt()` with a growing pause (1 s to 10 s) until it succeeds: the
        runtime or the API server may come up after the kubelet, as upstream's kubelet
        keeps trying to register."""
        pause = 1.0
        while True:
            try:
                return await attempt()
            except (ApiError, ConnectionError, RuntimeError_, asyncio.TimeoutError) as exc:
                log.warning("%s failed (retrying in %.0fs): %s", what, pause, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)

    async def start(self) -> None:
        await self._until_done("waiting for the container runtime",
                               lambda: self.runtime.wait_ready(RUNTIME_WAIT))
        os.makedirs(os.path.join(self.options.root_dir, "pods"), exist_ok=True)
        node = await self._until_done("registering the node", self.node.register)
        self.volumes.node_allocatable = (node.get("status") or {}).get("allocatable")
        await self._until_done("creating the node Lease", self.node.renew_lease)
        self.node.start()
        self.status.start()
        self.pods_informer.add_event_handler(
            on_add=self._pod_event, on_update=lambda old, new: self._pod_event(new),
            on_delete=self._pod_deleted)
        self.informers.start()
        if not await self.informers.wait_for_sync(timeout=60):
            raise RuntimeError("the pods and services informers did not sync")
        if self.static_source is not None:
            self.static_source.start()
        self.relister.start()
        self._tasks.append(asyncio.create_task(self._mirror_loop(), name="kubelet-mirrors"))
        if self.log_rotator is not None:
            self._tasks.append(asyncio.create_task(self.log_rotator.run(),
                                                   name="kubelet-log-rotation"))
        if self.server is not None:
            await self.server.start()
        await self._start_healthz()
        self.started = True
        log.info("kubelet %s started", self.node_name)

    async def _start_healthz(self) -> None:
        if not self.config.healthz_port:
            return

        async def healthz(request: web.Request) -> web.Response:
            return web.Response(text="ok")
        app = web.Application()
        app.add_routes([web.get("/healthz", healthz)])
        self._healthz = web.AppRunner(app, access_log=None)
        await self._healthz.setup()
        await web.TCPSite(self._healthz, self.config.healthz_bind_address,
                          self.config.healthz_port).start()

    async def stop(self) -> None:
        """Stop the kubelet; pods keep running."""
        self.started = False
        if self.static_source is not None:
            await self.static_source.stop()
        await self.relister.stop()
        await self.workers.stop()
        tasks, self._tasks = list(self._tasks), []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            try:
                await self.server.stop()
            except Exception as exc:
                log.warning("stopping the kubelet server: %s", exc)
        if self._healthz is not None:
            await self._healthz.cleanup()
            self._healthz = None
        await self.status.stop()
        await self.node.stop()
        await self.informers.shutdown()
        close = getattr(self.probes, "close", None)
        if close is not None:
            await close()
        await self.recorder.flush()


async def run(options: KubeletOptions) -> None:
    from kubesmith.cri.client import RuntimeClient
    stop = process.stop_on_signals()
    runtime = RuntimeClient(options.config.container_runtime_endpoint,
                            timeout=options.config.runtime_request_timeout)
    async with ApiClient.from_kubeconfig(options.kubeconfig, component="kubelet") as client:
        kubelet = Kubelet(options, client, runtime)
        try:
            if await process.start_unless_stopped(kubelet.start(), stop):
                await stop.wait()
        finally:
            log.info("kubelet stopping; pods keep running")
            await kubelet.stop()
            await runtime.close()


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse_args(argv)
    except ConfigError as exc:
        print(f"kubelet: {exc}", file=sys.stderr)
        return 1
    process.klog_logging(options.verbosity)
    return process.run_reporting_failure(run(options), "kubelet", log=log,
                                         traceback=options.verbosity >= 4)


if __name__ == "__main__":
    sys.exit(main())
