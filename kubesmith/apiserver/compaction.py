"""etcd history compaction, as kube-apiserver does it (--etcd-compaction-interval).

Every interval the revision seen one interval earlier is compacted, so at least one
interval of history always remains for watches and list continuations. Several API
servers may run this at once: compacting an already compacted revision is a no-op.
"""
from __future__ import annotations

import asyncio
import logging

from kubesmith.store import CompactedError, EtcdStore, StoreError

log = logging.getLogger(__name__)


async def run(store: EtcdStore, interval: float) -> None:
    if interval <= 0:
        return
    previous = 0
    while True:
        await asyncio.sleep(interval)
        try:
            current = (await store.range(b"/registry/", limit=1, keys_only=True)).revision
            if previous:
                try:
                    await store.compact(previous)
                    log.info("compacted etcd history up to revision %d", previous)
                except CompactedError:
                    pass   # another API server got there first
            previous = current
        except StoreError as exc:
            log.warning("etcd compaction failed: %s", exc)
