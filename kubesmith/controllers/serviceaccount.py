"""The serviceaccount controller: a `default` ServiceAccount in every active namespace,
made again when deleted (upstream's ServiceAccountsController)."""
from __future__ import annotations

import logging

from kubesmith.client.informers import DeletedFinalStateUnknown
from kubesmith.client.rest import is_already_exists, is_forbidden, is_not_found
from kubesmith.client.workqueue import WorkQueue, run_workers
from kubesmith.controllers import register
from kubesmith.controllers.context import ControllerContext

log = logging.getLogger(__name__)

SERVICE_ACCOUNTS = ("default",)


def _meta(obj) -> dict:
    if isinstance(obj, DeletedFinalStateUnknown):
        obj = obj.obj
    return obj.get("metadata") or {}


@register("serviceaccount")
class ServiceAccountsController:
    def __init__(self, ctx: ControllerContext):
        self.client = ctx.client
        self.namespaces = ctx.informers.informer("v1 namespaces")
        self.accounts = ctx.informers.informer("v1 serviceaccounts")
        self.queue = WorkQueue(name="serviceaccount")
        self.namespaces.add_event_handler(
            on_add=self._namespace, on_update=lambda old, new: self._namespace(new))
        self.accounts.add_event_handler(on_delete=self._account_deleted)

    def _namespace(self, namespace) -> None:
        self.queue.add(_meta(namespace).get("name", ""))

    def _account_deleted(self, account) -> None:
        meta = _meta(account)
        if meta.get("name") in SERVICE_ACCOUNTS:
            self.queue.add(meta.get("namespace", ""))

    async def run(self, workers: int) -> None:
        await run_workers(self.queue, self.sync, workers)

    async def sync(self, name: str) -> None:
        namespace = self.namespaces.lister.get(name)
        if namespace is None or (namespace.get("status") or {}).get("phase") != "Active" \
                or _meta(namespace).get("deletionTimestamp"):
            return
        for account in SERVICE_ACCOUNTS:
            if self.accounts.lister.get(account, name) is not None:
                continue
            try:
                await self.client.create("v1 serviceaccounts", {
                    "apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": account, "namespace": name}}, name)
                log.info("created ServiceAccount %s/%s", name, account)
            except Exception as exc:
                # Made meanwhile, or the namespace is going away: nothing to do.
                if is_already_exists(exc) or is_not_found(exc) or is_forbidden(exc):
                    continue
                raise
