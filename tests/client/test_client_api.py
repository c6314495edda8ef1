"""The API client against the real kube-apiserver: verbs, errors, watches, rate limits."""
from __future__ import annotations

import asyncio
import time

import pytest

from kubesmith.client.rest import (
    ApiError,
    is_already_exists,
    is_conflict,
    is_expired,
    is_invalid,
    is_not_found,
)


def configmap(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": dict(data)}


def deployment(name: str) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}


def test_crud_and_errors(connect, namespace):
    async def main():
        async with connect() as client:
            created = await client.create("v1 configmaps", configmap("one", a="1"), namespace)
            assert created["metadata"]["uid"] and created["data"] == {"a": "1"}
            got = await client.get("configmaps", "one", namespace)
            assert got["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]

            with pytest.raises(ApiError) as caught:
                await client.create("v1 configmaps", configmap("one"), namespace)
            assert is_already_exists(caught.value) and caught.value.code == 409
            assert caught.value.details["name"] == "one"

            got["data"]["b"] = "2"
            updated = await client.update("v1 configmaps", got)
            assert updated["data"] == {"a": "1", "b": "2"}
            with pytest.raises(ApiError) as caught:
                await client.update("v1 configmaps", got)     # resourceVersion is stale now
            assert is_conflict(caught.value) and not is_already_exists(caught.value)

            merged = await client.patch("v1 configmaps", "one", {"data": {"c": "3"}}, namespace)
            assert merged["data"] == {"a": "1", "b": "2", "c": "3"}
            patched = await client.patch("v1 configmaps", "one",
                                         [{"op": "remove", "path": "/data/a"}], namespace,
                                         patch_type="json")
            assert patched["data"] == {"b": "2", "c": "3"}
            strategic = await client.patch("v1 configmaps", "one",
                                           {"metadata": {"labels": {"x": "y"}}}, namespace,
                                           patch_type="strategic")
            assert strategic["metadata"]["labels"] == {"x": "y"}

            with pytest.raises(ApiError) as caught:
                await client.create("v1 configmaps", configmap("Not_Valid"), namespace)
            assert is_invalid(caught.value) and caught.value.code == 422
            assert caught.value.details.get("causes")

            deleted = await client.delete("v1 configmaps", "one", namespace)
            assert deleted.get("status") == "Success" or deleted["metadata"]["name"] == "one"
            with pytest.raises(ApiError) as caught:
                await client.get("v1 configmaps", "one", namespace)
            assert is_not_found(caught.value) and caught.value.reason == "NotFound"
            assert caught.value.status["kind"] == "Status"

            # Cluster-scoped, and a name that needs escaping in the URL.
            role = await client.get("rbac.authorization.k8s.io/v1 clusterroles",
                                    "system:basic-user")
            assert role["metadata"]["name"] == "system:basic-user"
            with pytest.raises(ValueError):
                await client.get("v1 configmaps", "one")      # namespaced: needs one
    asyncio.run(main())


def test_apply_conflicts_and_force(connect, namespace):
    async def main():
        async with connect() as client:
            body = configmap("applied", a="1")
            first = await client.apply("v1 configmaps", body, namespace, field_manager="alpha")
            assert first["data"] == {"a": "1"}
            managers = {m["manager"] for m in first["metadata"]["managedFields"]}
            assert managers == {"alpha"}
            with pytest.raises(ApiError) as caught:
                await client.apply("v1 configmaps", configmap("applied", a="2"), namespace,
                                   field_manager="beta")
            assert is_conflict(caught.value)
            forced = await client.apply("v1 configmaps", configmap("applied", a="2"),
                                        namespace, field_manager="beta", force=True)
            assert forced["data"] == {"a": "2"}
            with pytest.raises(ValueError):
                await client.patch("v1 configmaps", "applied", body, namespace,
                                   patch_type="apply")
    asyncio.run(main())


def test_delete_options_and_status(connect, namespace):
    async def main():
        async with connect() as client:
            made = await client.create("apps/v1 deployments", deployment("web"), namespace)
            with pytest.raises(ApiError) as caught:
                await client.delete("apps/v1 deployments", "web", namespace,
                                    preconditions={"uid": "not-the-uid"})
            assert is_conflict(caught.value)

            made["status"] = {"observedGeneration": 1, "replicas": 1}
            made["spec"]["replicas"] = 5    # ignored by a status update
            status = await client.update_status("apps/v1 deployments", made)
            assert status["status"]["replicas"] == 1 and status["spec"]["replicas"] == 1

            dry = await client.delete("apps/v1 deployments", "web", namespace, dry_run=True)
            assert dry.get("status") == "Success" or dry["metadata"]["name"] == "web"
            await client.get("apps/v1 deployments", "web", namespace)

            held = await client.delete("apps/v1 deployments", "web", namespace,
                                       propagation_policy="Foreground",
                                       preconditions={"uid": made["metadata"]["uid"]})
            assert "foregroundDeletion" in held["metadata"]["finalizers"]
            assert held["metadata"]["deletionTimestamp"]
            await client.patch("apps/v1 deployments", "web",
                               {"metadata": {"finalizers": None}}, namespace)
            with pytest.raises(ApiError) as caught:
                await client.get("apps/v1 deployments", "web", namespace)
            assert is_not_found(caught.value)

            for n in range(3):
                await client.create("v1 configmaps", {**configmap(f"c{n}"),
                                    "metadata": {"name": f"c{n}", "labels": {"g": "x"}}},
                                    namespace)
            await client.delete_collection("v1 configmaps", namespace, label_selector="g=x")
            left = await client.list("v1 configmaps", namespace, label_selector="g=x")
            assert left["items"] == []
    asyncio.run(main())


def test_graceful_pod_deletion(connect, cluster):
    namespace = cluster.new_namespace("client-pods-", default_service_account=True)

    async def main():
        async with connect() as client:
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                   "spec": {"nodeName": "node-1",
                            "containers": [{"name": "c", "image": "busybox"}]}}
            await client.create("v1 pods", pod, namespace)
            terminating = await client.delete("v1 pods", "p", namespace,
                                              grace_period_seconds=30)
            assert terminating["metadata"]["deletionGracePeriodSeconds"] == 30
            await client.delete("v1 pods", "p", namespace, grace_period_seconds=0)
            with pytest.raises(ApiError) as caught:
                await client.get("v1 pods", "p", namespace)
            assert is_not_found(caught.value)
    asyncio.run(main())


def test_list_pages(connect, namespace):
    async def main():
        async with connect() as client:
            for n in range(7):
                await client.create("v1 configmaps", configmap(f"cm-{n}"), namespace)
            page = await client.list("v1 configmaps", namespace, limit=3)
            assert len(page["items"]) == 3 and page["metadata"]["continue"]
            whole = await client.list_all("v1 configmaps", namespace, page_size=3)
            names = sorted(i["metadata"]["name"] for i in whole["items"])
            assert names == [f"cm-{n}" for n in range(7)]
            assert "continue" not in whole["metadata"]
            selected = await client.list_all("v1 configmaps", namespace,
                                             field_selector="metadata.name=cm-4")
            assert [i["metadata"]["name"] for i in selected["items"]] == ["cm-4"]
    asyncio.run(main())


def test_watch_from_resource_version(connect, namespace):
    async def main():
        async with connect() as client:
            made = await client.create("v1 configmaps", configmap("w", a="1"), namespace)
            start = made["metadata"]["resourceVersion"]
            await client.patch("v1 configmaps", "w", {"data": {"a": "2"}}, namespace)
            await client.create("v1 configmaps", configmap("w2"), namespace)
            await client.delete("v1 configmaps", "w", namespace)
            seen = []
            async with client.watch("v1 configmaps", namespace, resource_version=start,
                                    timeout_seconds=5) as events:
                async for event_type, obj in events:
                    seen.append((event_type, obj["metadata"]["name"]))
                    if len(seen) == 3:
                        break
            assert seen == [("MODIFIED", "w"), ("ADDED", "w2"), ("DELETED", "w")]

            # A quiet watch still reports progress with a bookmark before it ends.
            latest = (await client.list("v1 configmaps", namespace))["metadata"]
            kinds = [(t, o.get("kind")) async for t, o in client.watch(
                "v1 configmaps", namespace, resource_version=latest["resourceVersion"],
                timeout_seconds=2)]
            assert kinds == [("BOOKMARK", "ConfigMap")]
    asyncio.run(main())


def test_watch_from_compacted_revision_is_expired(connect, namespace, cluster):
    async def main():
        async with connect() as client:
            made = await client.create("v1 configmaps", configmap("old"), namespace)
            start = made["metadata"]["resourceVersion"]
            # More changes than the server's watch-cache window (20), then compaction.
            for n in range(25):
                await client.patch("v1 configmaps", "old", {"data": {"n": str(n)}}, namespace)
            store = cluster.etcd.store()
            try:
                current = (await store.range(b"/registry/", limit=1, keys_only=True)).revision
                await store.compact(current)
            finally:
                await store.close()
            with pytest.raises(ApiError) as caught:
                async with client.watch("v1 configmaps", namespace, resource_version=start,
                                        timeout_seconds=5) as events:
                    async for _ in events:
                        pass
            assert is_expired(caught.value) and caught.value.code == 410
    asyncio.run(main())


def test_client_side_rate_limit(connect):
    async def main():
        async with connect(qps=20, burst=2) as client:
            started = time.monotonic()
            for _ in range(6):
                await client.get("v1 namespaces", "default")
            # 2 at once, then 4 more at 20 a second.
            assert time.monotonic() - started >= 0.19
    asyncio.run(main())
