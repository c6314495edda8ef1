"""The root-ca-cert-publisher: ConfigMap kube-root-ca.crt (key ca.crt: the cluster CA,
from --root-ca-file) in every namespace, put back when edited or deleted (upstream's
rootcacertpublisher)."""
from __future__ import annotations

import logging

from kubesmith.client.informers import DeletedFinalStateUnknown
from kubesmith.client.rest import is_already_exists, is_forbidden, is_not_found
from kubesmith.client.workqueue import WorkQueue, run_workers
from kubesmith.controllers import register
from kubesmith.controllers.context import ControllerContext

log = logging.getLogger(__name__)

CONFIG_MAP = "kube-root-ca.crt"
DESCRIPTION_ANNOTATION = "kubernetes.io/description"
DESCRIPTION = ("Contains a CA bundle that can be used to verify the kube-apiserver when "
               "using internal endpoints such as the internal service IP or "
               "kubernetes.default.svc. No other usage is guaranteed across distributions "
               "of Kubernetes clusters.")


def _meta(obj) -> dict:
    if isinstance(obj, DeletedFinalStateUnknown):
        obj = obj.obj
    return obj.get("metadata") or {}


def read_root_ca(path: str | None) -> str:
    if not path:
        return ""
    with open(path) as source:
        return source.read()


@register("root-ca-cert-publisher")
class RootCACertPublisher:
    def __init__(self, ctx: ControllerContext):
        self.client = ctx.client
        self.root_ca = read_root_ca(getattr(ctx.options, "root_ca_file", None))
        if not self.root_ca:
            log.warning("no --root-ca-file: ConfigMap %s is not published", CONFIG_MAP)
        self.namespaces = ctx.informers.informer("v1 namespaces")
        self.config_maps = ctx.informers.informer("v1 configmaps")
        self.queue = WorkQueue(name="root_ca_cert_publisher")
        self.namespaces.add_event_handler(
            on_add=self._namespace, on_update=lambda old, new: self._namespace(new))
        self.config_maps.add_event_handler(
            on_update=lambda old, new: self._config_map(new), on_delete=self._config_map)

    def _namespace(self, namespace) -> None:
        self.queue.add(_meta(namespace).get("name", ""))

    def _config_map(self, config_map) -> None:
        meta = _meta(config_map)
        if meta.get("name") == CONFIG_MAP:
            self.queue.add(meta.get("namespace", ""))

    async def run(self, workers: int) -> None:
        await run_workers(self.queue, self.sync, workers)

    async def sync(self, name: str) -> None:
        if not self.root_ca:
            return
        namespace = self.namespaces.lister.get(name)
        if namespace is None or _meta(namespace).get("deletionTimestamp"):
            return
        data = {"ca.crt": self.root_ca}
        current = self.config_maps.lister.get(CONFIG_MAP, name)
        try:
            if current is None:
                await self.client.create("v1 configmaps", {
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": CONFIG_MAP, "namespace": name,
                                 "annotations": {DESCRIPTION_ANNOTATION: DESCRIPTION}},
                    "data": data}, name)
                return
            annotations = _meta(current).get("annotations") or {}
            if current.get("data") == data and \
                    annotations.get(DESCRIPTION_ANNOTATION) == DESCRIPTION:
                return
            fixed = dict(current, data=data)
            fixed["metadata"] = dict(_meta(current), annotations=dict(
                annotations, **{DESCRIPTION_ANNOTATION: DESCRIPTION}))
            fixed.pop("binaryData", None)
            await self.client.update("v1 configmaps", fixed, name)
        except Exception as exc:
            # A conflict or AlreadyExists means the cache is behind: its event requeues.
            if is_already_exists(exc) or is_not_found(exc) or is_forbidden(exc):
                return
            raise
