"""Shared informers: the indexed cache (pure), then list + watch against the real
kube-apiserver, including a re-list after the watch's history was compacted away."""
from __future__ import annotations

import asyncio
import logging
import time

import pytest

from kubesmith.client.informers import (
    NAMESPACE_INDEX,
    DeletedFinalStateUnknown,
    Indexer,
    InformerFactory,
    Lister,
    namespace_key,
    split_key,
)
from kubesmith.client.kubeconfig import ClientConfig
from kubesmith.client.ratelimit import Backoff
from kubesmith.client.rest import ApiClient, resource_type
from kubesmith.store.testing import free_port
from tests.client.helpers import eventually


def obj(name: str, namespace: str | None = "ns", **labels: str) -> dict:
    meta = {"name": name, "labels": labels, "resourceVersion": "1"}
    if namespace:
        meta["namespace"] = namespace
    return {"metadata": meta}


class Recorder:
    """Event handlers that write down what they are told."""

    def __init__(self):
        self.events: list[tuple] = []

    def handlers(self) -> dict:
        return {"on_add": lambda o: self.events.append(("add", namespace_key(o))),
                "on_update": lambda old, new: self.events.append(
                    ("update", namespace_key(new), old["metadata"]["resourceVersion"],
                     new["metadata"]["resourceVersion"])),
                "on_delete": lambda o: self.events.append(
                    ("tombstone" if isinstance(o, DeletedFinalStateUnknown) else "delete",
                     namespace_key(o)))}

    def of(self, kind: str) -> list:
        return [e[1] for e in self.events if e[0] == kind]


# --- the cache, in process ------------------------------------------------------------

def test_indexer_and_lister():
    indexer = Indexer({"team": lambda o: [o["metadata"]["labels"].get("team", "")]})
    for item in (obj("a", team="x"), obj("b", team="y"), obj("c", "other", team="x"),
                 obj("node-1", None)):
        indexer.put(namespace_key(item), item)
    assert namespace_key(obj("node-1", None)) == "node-1"
    assert split_key("ns/a") == ("ns", "a") and split_key("node-1") == ("", "node-1")
    assert indexer.index_keys("team", "x") == ["ns/a", "other/c"]
    assert indexer.index_keys(NAMESPACE_INDEX, "ns") == ["ns/a", "ns/b"]

    indexer.put("ns/a", obj("a", team="y"))           # moves between index values
    assert indexer.index_keys("team", "x") == ["other/c"]
    assert indexer.index_keys("team", "y") == ["ns/a", "ns/b"]
    indexer.remove("ns/b")
    assert indexer.index_values("team") == ["", "x", "y"]
    indexer.add_indexers({"first": lambda o: [o["metadata"]["name"][0]]})   # built over all
    assert indexer.index_keys("first", "c") == ["other/c"]
    with pytest.raises(KeyError):
        indexer.by_index("missing", "x")

    lister = Lister(indexer, resource_type("v1 configmaps"))
    assert lister.get("a", "ns")["metadata"]["name"] == "a"
    assert lister.get("a", "other") is None
    assert [namespace_key(o) for o in lister.list("ns")] == ["ns/a"]
    assert sorted(namespace_key(o) for o in lister.list(selector={"team": "x"})) == ["other/c"]
    assert len(lister.list(selector=lambda labels: "team" in labels)) == 2
    assert Lister(indexer, resource_type("v1 nodes")).get("node-1") is not None


# --- against the API server -----------------------------------------------------------

def configmap(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels}, "data": {}}


def test_informer_sync_handlers_listers_and_selectors(connect, namespace):
    async def main():
        async with connect() as client:
            for name, labels in (("one", {"team": "a"}), ("two", {}), ("three", {"team": "a"})):
                await client.create("v1 configmaps", configmap(name, **labels), namespace)
            factory = InformerFactory(client, namespace=namespace, page_size=2)
            everything = factory.informer("v1 configmaps")
            assert factory.informer("configmaps") is everything      # shared
            team = factory.informer("v1 configmaps", label_selector="team=a")
            assert team is not everything
            seen, team_seen = Recorder(), Recorder()
            everything.add_event_handler(**seen.handlers())
            team.add_event_handler(**team_seen.handlers())
            everything.add_indexers({"team": lambda o: [(o["metadata"].get("labels") or {})
                                                        .get("team", "")]})
            factory.start()
            try:
                assert await factory.wait_for_sync(timeout=10)
                assert everything.has_synced() and everything.list_count == 1
                assert sorted(seen.of("add")) == [f"{namespace}/{n}"
                                                  for n in ("one", "three", "two")]
                assert sorted(team_seen.of("add")) == [f"{namespace}/one", f"{namespace}/three"]
                cached = everything.lister.get("one", namespace)
                assert cached["kind"] == "ConfigMap" and cached["apiVersion"] == "v1"
                assert len(everything.indexer.by_index("team", "a")) == 2
                assert [o["metadata"]["name"] for o in
                        everything.lister.list(namespace, {"team": "a"})] != []

                made = await client.create("v1 configmaps", configmap("four"), namespace)
                changed = await client.patch("v1 configmaps", "four",
                                             {"data": {"k": "v"}}, namespace)
                await client.delete("v1 configmaps", "two", namespace)
                # Leaving the label selector is a delete for the selective informer.
                await client.patch("v1 configmaps", "one",
                                   {"metadata": {"labels": {"team": None}}}, namespace)
                await eventually(lambda: f"{namespace}/two" in seen.of("delete")
                                 and f"{namespace}/one" in team_seen.of("delete"))
                assert ("add", f"{namespace}/four") in seen.events
                assert ("update", f"{namespace}/four", made["metadata"]["resourceVersion"],
                        changed["metadata"]["resourceVersion"]) in seen.events
                assert everything.lister.get("two", namespace) is None
                assert everything.lister.get("four", namespace)["data"] == {"k": "v"}
                assert team.lister.get("one", namespace) is None
                assert everything.last_sync_resource_version

                late = Recorder()   # a handler added after the sync hears of every object
                everything.add_event_handler(**late.handlers())
                assert sorted(late.of("add")) == [f"{namespace}/{n}"
                                                  for n in ("four", "one", "three")]
            finally:
                await factory.shutdown()
            assert not any(i.running for i in factory.informers)
    asyncio.run(main())


def test_field_selector_informer_with_resync(connect, cluster):
    namespace = cluster.new_namespace("client-pods-", default_service_account=True)

    def pod(name: str, node: str) -> dict:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}

    async def main():
        async with connect() as client:
            await client.create("v1 pods", pod("on-a", "node-a"), namespace)
            await client.create("v1 pods", pod("on-b", "node-b"), namespace)
            factory = InformerFactory(client, resync_period=0.2)
            # The kubelet's view: pods bound to its node, in every namespace.
            mine = factory.informer("v1 pods", field_selector="spec.nodeName=node-a")
            seen = Recorder()
            mine.add_event_handler(**seen.handlers())
            factory.start()
            try:
                assert await factory.wait_for_sync(timeout=10)
                keys = mine.indexer.index_keys(NAMESPACE_INDEX, namespace)
                assert keys == [f"{namespace}/on-a"]
                await client.create("v1 pods", pod("also-a", "node-a"), namespace)
                await client.create("v1 pods", pod("also-b", "node-b"), namespace)
                await eventually(lambda: f"{namespace}/also-a" in seen.of("add"))
                # Resync: on_update with the same object, again and again.
                await eventually(lambda: sum(1 for e in seen.events if e[0] == "update"
                                             and e[1] == f"{namespace}/on-a"
                                             and e[2] == e[3]) >= 2, timeout=3)
                assert not [k for k in seen.of("add") if k.endswith("-b")]
            finally:
                await factory.shutdown()
    asyncio.run(main())


def test_relist_after_the_watch_history_is_compacted(connect, namespace, cluster, caplog):
    """The informer talks to its own kube-apiserver. That server is stopped; meanwhile
    objects change through the other server and etcd compacts its history. When the
    server is back, the informer's resumed watch gets 410 Expired and it lists again:
    changes are updates, new objects adds, vanished ones DeletedFinalStateUnknown."""
    caplog.set_level(logging.INFO, logger="kubesmith.client.informers")
    port = free_port()
    log_path = cluster.base / f"apiserver-{port}.log"

    def start_server():
        process = cluster.spawn(cluster.flags(port=port), log_path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()[-2000:]
            try:
                if cluster.request("GET", "/readyz", port=port, timeout=2).status == 200:
                    return process
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"second kube-apiserver not ready: {log_path.read_text()[-2000:]}")

    def stop_server(process):
        process.terminate()
        try:
            process.wait(timeout=10)
        except Exception:
            process.kill()
            process.wait()

    async def compact_etcd():
        store = cluster.etcd.store()
        try:
            revision = (await store.range(b"/registry/", limit=1, keys_only=True)).revision
            await store.compact(revision)
        finally:
            await store.close()

    server = start_server()
    try:
        async def main():
            config = ClientConfig(server=f"https://127.0.0.1:{port}",
                                  ssl_context=cluster.ssl_context())
            async with connect() as admin, ApiClient(config, component="relist-test") as own:
                for name in ("stay", "doomed"):
                    await admin.create("v1 configmaps", configmap(name), namespace)
                factory = InformerFactory(own, namespace=namespace)
                informer = factory.informer("v1 configmaps")
                informer.backoff = Backoff(0.05, 0.2)     # reconnect quickly in a test
                seen = Recorder()
                informer.add_event_handler(**seen.handlers())
                factory.start()
                try:
                    assert await factory.wait_for_sync(timeout=10)
                    await admin.create("v1 configmaps", configmap("live"), namespace)
                    await eventually(lambda: f"{namespace}/live" in seen.of("add"))

                    await asyncio.to_thread(stop_server, server)
                    await admin.delete("v1 configmaps", "doomed", namespace)
                    await admin.create("v1 configmaps", configmap("newcomer"), namespace)
                    await admin.patch("v1 configmaps", "stay", {"data": {"k": "v"}}, namespace)
                    await compact_etcd()
                    assert informer.list_count == 1
                    restarted.append(await asyncio.to_thread(start_server))

                    await eventually(lambda: informer.list_count == 2, timeout=10)
                    assert "watch expired" in caplog.text
                    assert (f"{namespace}/doomed") in seen.of("tombstone")
                    assert f"{namespace}/newcomer" in seen.of("add")
                    assert f"{namespace}/stay" in seen.of("update")
                    assert informer.lister.get("doomed", namespace) is None
                    assert informer.lister.get("stay", namespace)["data"] == {"k": "v"}
                    # And the watch follows again after the list.
                    await admin.create("v1 configmaps", configmap("after"), namespace)
                    await eventually(lambda: f"{namespace}/after" in seen.of("add"))
                finally:
                    await factory.shutdown()

        restarted: list = []
        try:
            asyncio.run(main())
        finally:
            for process in restarted:
                stop_server(process)
    finally:
        if server.poll() is None:
            stop_server(server)
