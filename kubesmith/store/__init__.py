"""The shared etcd v3 client of kubesmith's components.

    store = EtcdStore("https://10.0.0.11:2379,https://10.0.0.12:2379",
                      ca_file, cert_file, key_file)
    rev = await store.create(b"/registry/pods/ns/a", data)
    kv = await store.get(b"/registry/pods/ns/a")          # kv.mod_revision == rev
    async with store.watch(b"/registry/pods/", rev + 1) as changes:
        async for batch in changes: ...

Revisions are etcd's: a key's mod_revision is its Kubernetes resourceVersion.
"""
from kubesmith.store.errors import (
    CompactedError,
    ConflictError,
    FutureRevisionError,
    KeyExistsError,
    KeyNotFoundError,
    LeaseNotFoundError,
    RequestTooLargeError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from kubesmith.store.etcd import EtcdStore, Watch
from kubesmith.store.model import (
    DeleteResult,
    Event,
    EventType,
    KeyValue,
    Lease,
    RangeResult,
    Status,
    WatchBatch,
    prefix_end,
)

__all__ = [
    "CompactedError", "ConflictError", "DeleteResult", "EtcdStore", "Event", "EventType",
    "FutureRevisionError", "KeyExistsError", "KeyNotFoundError", "KeyValue", "Lease",
    "LeaseNotFoundError", "RangeResult", "RequestTooLargeError", "Status", "StoreError",
    "StoreTimeoutError", "StoreUnavailableError", "Watch", "WatchBatch", "prefix_end",
]
