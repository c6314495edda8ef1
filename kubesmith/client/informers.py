"""Shared informers: one list + watch per resource type (and scope) per process, a local
indexed cache of its objects, and event handlers for whoever needs the changes.

    factory = InformerFactory(client, resync_period=300)
    pods = factory.informer("v1 pods", field_selector=f"spec.nodeName={node}")
    pods.add_event_handler(on_add=..., on_update=..., on_delete=...)
    factory.start()
    await factory.wait_for_sync(timeout=30)
    pod = pods.lister.get("web-0", "default")

As client-go's SharedIndexInformer:
  * the first list (paginated, `page_size` a page) fills the cache and calls on_add for
    each object; has_synced() is true from then on;
  * the watch follows from the list's resourceVersion, with bookmarks keeping that
    resourceVersion fresh; it is restarted when the server ends it (timeoutSeconds is
    random in [watch_timeout, 2 * watch_timeout], as upstream spreads re-watches), and
    after a broken connection with exponential backoff (0.8 s to 30 s);
  * 410 Gone/Expired (the history was compacted) lists again: objects that changed are
    updates, new ones adds, and objects gone meanwhile are deleted with a
    DeletedFinalStateUnknown tombstone, since their last state was never seen;
  * every resync_period, on_update(obj, obj) is called for every cached object so that
    handlers can re-check state that lives outside the cluster;
  * a handler added later first gets on_add for every object already cached.

Handlers are plain functions called in the informer's task: they must be quick (hand
the key to a WorkQueue) and must not change the objects, which are the cache's own.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from kubesmith.api import ResourceType
from kubesmith.client.ratelimit import Backoff
from kubesmith.client.rest import ApiClient, ApiError, Resource, is_expired, resource_type

log = logging.getLogger(__name__)

Obj = dict[str, Any]
IndexFunc = Callable[[Obj], Iterable[str]]

NAMESPACE_INDEX = "namespace"


def namespace_key(obj: Obj) -> str:
    """"<namespace>/<name>", or "<name>" for cluster-scoped objects (the cache key)."""
    if isinstance(obj, DeletedFinalStateUnknown):
        return obj.key
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name', '')}" if namespace else meta.get("name", "")


def split_key(key: str) -> tuple[str, str]:
    """(namespace, name) of a cache key; namespace "" for cluster-scoped objects."""
    namespace, _, name = key.rpartition("/")
    return namespace, name


def index_by_namespace(obj: Obj) -> list[str]:
    return [(obj.get("metadata") or {}).get("namespace") or ""]


class DeletedFinalStateUnknown(NamedTuple):
    """Given to on_delete when an object vanished while the watch was down: `obj` is
    the last state the informer knew, perhaps not the final one."""
    key: str
    obj: Obj


def _rv(obj: Obj) -> str:
    return (obj.get("metadata") or {}).get("resourceVersion", "")


def _labels(obj: Obj) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


# --- the cache ------------------------------------------------------------------------

class Indexer:
    """Objects by key, plus named indexes: index name -> value -> keys.

    An index function gives the values an object is filed under (several are fine,
    e.g. the names of the secrets a pod mounts). The informer writes; others read."""

    def __init__(self, indexers: Mapping[str, IndexFunc] | None = None):
        self._items: dict[str, Obj] = {}
        self._indexers: dict[str, IndexFunc] = {NAMESPACE_INDEX: index_by_namespace}
        self._indices: dict[str, dict[str, set[str]]] = {NAMESPACE_INDEX: {}}
        self.add_indexers(indexers or {})

    def add_indexers(self, indexers: Mapping[str, IndexFunc]) -> None:
        for name, func in indexers.items():
            if name in self._indexers and self._indexers[name] is not func:
                raise ValueError(f"index {name!r} exists already")
            self._indexers[name] = func
            self._indices[name] = {}
            for key, obj in self._items.items():
                self._file(name, key, obj)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> Obj | None:
        return self._items.get(key)

    def keys(self) -> list[str]:
        return list(self._items)

    def list(self) -> list[Obj]:
        return list(self._items.values())

    def index_keys(self, index: str, value: str) -> list[str]:
        return sorted(self._index(index).get(value, ()))

    def by_index(self, index: str, value: str) -> list[Obj]:
        return [self._items[key] for key in self.index_keys(index, value)]

    def index_values(self, index: str) -> list[str]:
        return sorted(self._index(index))

    def put(self, key: str, obj: Obj) -> None:
        if key in self._items:
            self._unfile(key, self._items[key])
        self._items[key] = obj
        for name in self._indexers:
            self._file(name, key, obj)

    def remove(self, key: str) -> Obj | None:
        obj = self._items.pop(key, None)
        if obj is not None:
            self._unfile(key, obj)
        return obj

    def _index(self, name: str) -> dict[str, set[str]]:
        try:
            return self._indices[name]
        except KeyError:
            raise KeyError(f"no index {name!r}") from None

    def _file(self, name: str, key: str, obj: Obj) -> None:
        for value in self._indexers[name](obj):
            self._indices[name].setdefault(value, set()).add(key)

    def _unfile(self, key: str, obj: Obj) -> None:
        for name, func in self._indexers.items():
            index = self._indices[name]
            for value in func(obj):
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]


class Lister:
    """Reads of one informer's cache, the way controllers ask them."""

    def __init__(self, indexer: Indexer, resource: ResourceType):
        self.indexer = indexer
        self.resource = resource

    def get(self, name: str, namespace: str | None = None) -> Obj | None:
        key = f"{namespace}/{name}" if self.resource.namespaced else name
        return self.indexer.get(key)

    def list(self, namespace: str | None = None,
             selector: Mapping[str, str] | Callable[[Mapping[str, str]], bool] | None = None
             ) -> list[Obj]:
        """Objects (of one namespace when given) whose labels match `selector`: a dict of
        required label values, or a function of the labels."""
        objs = (self.indexer.by_index(NAMESPACE_INDEX, namespace) if namespace
                else self.indexer.list())
        if selector is None:
            return objs
        if callable(selector):
            return [obj for obj in objs if selector(_labels(obj))]
        wanted = dict(selector)
        return [obj for obj in objs
                if all(_labels(obj).get(k) == v for k, v in wanted.items())]


# --- the informer ---------------------------------------------------------------------

class EventHandler(NamedTuple):
    on_add: Callable[[Obj], Any] | None
    on_update: Callable[[Obj, Obj], Any] | None
    on_delete: Callable[[Obj | DeletedFinalStateUnknown], Any] | None


class SharedInformer:
    """One list + watch of a resource (in a namespace, with selectors) feeding a cache
    and any number of handlers. Made by InformerFactory.informer(), which shares it."""

    def __init__(self, client: ApiClient, resource: Resource, *,
                 namespace: str | None = None, label_selector: str | None = None,
                 field_selector: str | None = None, resync_period: float = 0.0,
                 page_size: int = 500, watch_timeout: float = 300.0,
                 indexers: Mapping[str, IndexFunc] | None = None):
        self.client = client
        self.resource = resource_type(resource)
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resync_period = resync_period
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.indexer = Indexer(indexers)
        self.lister = Lister(self.indexer, self.resource)
        self.last_sync_resource_version = ""
        self.list_count = 0     # lists made: 1 after the first sync, more after 410s
        self.backoff = Backoff()    # between failed attempts (0.8 s doubling to 30 s)
        self._handlers: list[EventHandler] = []
        self._synced = asyncio.Event()
        self._task: asyncio.Task | None = None

    def __repr__(self) -> str:
        scope = ",".join(filter(None, (self.namespace, self.label_selector,
                                       self.field_selector)))
        return f"<informer {self.resource.group_version} {self.resource.plural} {scope}>"

    # --- for users --------------------------------------------------------------------

    def add_event_handler(self, on_add=None, on_update=None, on_delete=None) -> EventHandler:
        handler = EventHandler(on_add, on_update, on_delete)
        self._handlers.append(handler)
        if self.has_synced() and on_add is not None:
            for obj in self.indexer.list():
                self._call(on_add, obj)
        return handler

    def remove_event_handler(self, handler: EventHandler) -> None:
        self._handlers.remove(handler)

    def add_indexers(self, indexers: Mapping[str, IndexFunc]) -> None:
        self.indexer.add_indexers(indexers)

    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_for_sync(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def start(self) -> asyncio.Task:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=repr(self))
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- list and watch ---------------------------------------------------------------

    async def run(self) -> None:
        """List, then watch, for ever (until cancelled)."""
        backoff = self.backoff
        must_list = True
        expired_again = False     # a second 410 in a row waits like any other error
        resync = (asyncio.create_task(self._resync_loop()) if self.resync_period > 0
                  else None)
        try:
            while True:
                try:
                    if must_list:
                        await self._list()
                        must_list = expired_again = False
                    started = time.monotonic()
                    events = await self._watch()
                    if events == 0 and time.monotonic() - started < 1.0:
                        # A server that ends watches at once must not be asked in a loop.
                        await asyncio.sleep(backoff.next())
                except ApiError as exc:
                    must_list = True
                    if is_expired(exc) and not expired_again:
                        expired_again = True
                        log.info("%r: watch expired (%s); listing again", self, exc.message or exc)
                        continue
                    log.warning("%r: %s", self, exc)
                    await asyncio.sleep(backoff.next())
                except ConnectionError as exc:
                    # The watch resumes from the last resourceVersion; no list needed.
                    log.warning("%r: %s", self, exc)
                    await asyncio.sleep(backoff.next())
                except Exception:
                    # An answer this code did not expect: the informer must live on.
                    log.exception("%r: list/watch failed", self)
                    must_list = True
                    await asyncio.sleep(backoff.next())
        finally:
            if resync is not None:
                resync.cancel()
                await asyncio.gather(resync, return_exceptions=True)

    async def _list(self) -> None:
        rt = self.resource
        token: str | None = None
        items: list[Obj] = []
        resource_version = ""
        while True:
            page = await self.client.list(rt, self.namespace, label_selector=self.label_selector,
                                          field_selector=self.field_selector,
                                          limit=self.page_size, continue_token=token)
            meta = page.get("metadata") or {}
            resource_version = resource_version or meta.get("resourceVersion", "")
            items.extend(page.get("items") or [])
            token = meta.get("continue")
            if not token:
                break
        self.list_count += 1
        self._replace(items, resource_version)

    async def _watch(self) -> int:
        """Follow one watch until the server ends it; the number of events seen."""
        seconds = int(random.uniform(self.watch_timeout, 2 * self.watch_timeout))
        count = 0
        async with self.client.watch(self.resource, self.namespace,
                                     resource_version=self.last_sync_resource_version,
                                     label_selector=self.label_selector,
                                     field_selector=self.field_selector,
                                     timeout_seconds=max(seconds, 1),
                                     allow_bookmarks=True) as events:
            async for event_type, obj in events:
                count += 1
                if event_type != "BOOKMARK":
                    self._apply(event_type, self._typed(obj))
                self.last_sync_resource_version = _rv(obj) or self.last_sync_resource_version
        return count

    # --- cache and handlers -----------------------------------------------------------

    def _typed(self, obj: Obj) -> Obj:
        # List items come without apiVersion/kind; handlers building references need them.
        if "kind" not in obj:
            obj["kind"] = self.resource.kind
        if "apiVersion" not in obj:
            obj["apiVersion"] = self.resource.api_version
        return obj

    def _apply(self, event_type: str, obj: Obj) -> None:
        key = namespace_key(obj)
        old = self.indexer.get(key)
        if event_type == "DELETED":
            if old is not None:
                self.indexer.remove(key)
                self._dispatch_delete(obj)
            return
        self.indexer.put(key, obj)
        if old is None:
            self._dispatch_add(obj)
        else:
            self._dispatch_update(old, obj)

    def _replace(self, items: list[Obj], resource_version: str) -> None:
        fresh = {namespace_key(obj): self._typed(obj) for obj in items}
        for key, obj in fresh.items():
            old = self.indexer.get(key)
            self.indexer.put(key, obj)
            if old is None:
                self._dispatch_add(obj)
            elif _rv(old) != _rv(obj):
                self._dispatch_update(old, obj)
        for key in [key for key in self.indexer.keys() if key not in fresh]:
            last = self.indexer.remove(key)
            self._dispatch_delete(DeletedFinalStateUnknown(key, last))
        self.last_sync_resource_version = resource_version
        self._synced.set()

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_period)
            if self.has_synced():
                for obj in self.indexer.list():
                    self._dispatch_update(obj, obj)

    def _dispatch_add(self, obj: Obj) -> None:
        for handler in list(self._handlers):
            if handler.on_add is not None:
                self._call(handler.on_add, obj)

    def _dispatch_update(self, old: Obj, new: Obj) -> None:
        for handler in list(self._handlers):
            if handler.on_update is not None:
                self._call(handler.on_update, old, new)

    def _dispatch_delete(self, obj: Obj | DeletedFinalStateUnknown) -> None:
        for handler in list(self._handlers):
            if handler.on_delete is not None:
                self._call(handler.on_delete, obj)

    def _call(self, func: Callable, *args: Any) -> None:
        try:
            func(*args)
        except Exception:
            log.exception("%r: event handler %r failed", self, func)


class InformerFactory:
    """Hands out one SharedInformer per (resource, namespace, selectors) and runs them.

    `namespace` limits every informer to one namespace unless asked otherwise."""

    def __init__(self, client: ApiClient, *, resync_period: float = 0.0,
                 namespace: str | None = None, page_size: int = 500,
                 watch_timeout: float = 300.0):
        self.client = client
        self.resync_period = resync_period
        self.namespace = namespace
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self._informers: dict[tuple, SharedInformer] = {}

    def informer(self, resource: Resource, *, namespace: str | None = None,
                 label_selector: str | None = None, field_selector: str | None = None
                 ) -> SharedInformer:
        rt = resource_type(resource)
        namespace = namespace or self.namespace
        key = (rt.group, rt.version, rt.plural, namespace if rt.namespaced else None,
               label_selector or None, field_selector or None)
        informer = self._informers.get(key)
        if informer is None:
            informer = SharedInformer(self.client, rt, namespace=key[3],
                                      label_selector=key[4], field_selector=key[5],
                                      resync_period=self.resync_period,
                                      page_size=self.page_size,
                                      watch_timeout=self.watch_timeout)
            self._informers[key] = informer
        return informer

    def lister(self, resource: Resource, **scope) -> Lister:
        return self.informer(resource, **scope).lister

    @property
    def informers(self) -> list[SharedInformer]:
        return list(self._informers.values())

    def start(self) -> None:
        """Start every informer asked for so far that is not running (call it again
        after asking for more)."""
        for informer in self._informers.values():
            if not informer.running:
                informer.start()

    async def wait_for_sync(self, timeout: float | None = None) -> bool:
        """True once every started informer has synced; False after `timeout`."""
        waits = [informer.wait_for_sync() for informer in self._informers.values()
                 if informer.running or informer.has_synced()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def shutdown(self) -> None:
        await asyncio.gather(*(informer.stop() for informer in self._informers.values()))
