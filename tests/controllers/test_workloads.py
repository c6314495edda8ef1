"""The workload controllers against a real etcd + kube-apiserver: each test builds the
controllers it needs on ControllerContexts of its own (each controller writing as its
ServiceAccount, under upstream's system:controller:* roles), runs them as asyncio tasks,
and plays the kubelet itself (binding pods to a node and patching their status)."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from types import SimpleNamespace
from typing import Any, AsyncIterator

import pytest

from kubesmith.client.informers import InformerFactory
from kubesmith.client.kubeconfig import ClientConfig
from kubesmith.client.rest import ApiClient, ApiError, is_forbidden, is_not_found
from kubesmith.controllers.context import ControllerContext
from kubesmith.controllers.credentials import CONTROLLER_SERVICE_ACCOUNTS
from kubesmith.controllers.common import is_pod_ready, meta
from tests.apiserver import module_cluster
from tests.apiserver.harness import Cluster
from tests.client import helpers

Obj = dict[str, Any]

# The `cluster` fixture: an API server of this module's own, no controller manager on it.
cluster = module_cluster.cluster

# Controllers converging through a real API server take longer than the client tests'
# default allows.
eventually = functools.partial(helpers.eventually, timeout=20.0, interval=0.1)


# --- helpers --------------------------------------------------------------------------

def account_client(cluster: Cluster, controller_class) -> ApiClient:
    """A client that is the controller's own ServiceAccount (as the manager's
    --use-service-account-credentials makes it), so upstream's system:controller:*
    roles are what the controller may do."""
    account = CONTROLLER_SERVICE_ACCOUNTS[controller_class.name]
    cert = cluster.client_cert(f"system:serviceaccount:kube-system:{account}",
                               "system:serviceaccounts", "system:serviceaccounts:kube-system")
    return ApiClient(ClientConfig(server=cluster.url, ssl_context=cluster.ssl_context(cert)),
                     component=account)


@contextlib.asynccontextmanager
async def running(cluster: Cluster, namespace: str, *controller_classes, clock=None
                  ) -> AsyncIterator[SimpleNamespace]:
    """The controllers running on informers of `namespace` (nodes: cluster-wide), each
    writing as its own ServiceAccount; `client` (in the answer) is the admin's."""
    client = ApiClient.from_kubeconfig(cluster.kubeconfig, component="workloads-test")
    factory = InformerFactory(client, namespace=namespace)
    contexts = [ControllerContext(client=account_client(cluster, cls), informers=factory,
                                  options=SimpleNamespace(), host="test")
                for cls in controller_classes]
    controllers = [cls(ctx, clock=clock) if clock else cls(ctx)
                   for cls, ctx in zip(controller_classes, contexts)]
    factory.start()
    assert await factory.wait_for_sync(timeout=20)
    tasks = [asyncio.create_task(c.run(2)) for c in controllers]
    try:
        yield SimpleNamespace(client=client, controllers=controllers, namespace=namespace)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ctx in contexts:
            for recorder in ctx._recorders.values():
                await recorder.flush()
            await ctx.client.close()
        await factory.shutdown()
        await client.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 80))


async def make_node(client: ApiClient, name: str | None = None, **labels: str) -> str:
    name = name or f"node-{uuid.uuid4().hex[:6]}"
    await client.create("v1 nodes", {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, **labels}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    return name


async def pods_of(client: ApiClient, namespace: str, selector: str | None = None
                  ) -> list[Obj]:
    items = (await client.list("v1 pods", namespace, label_selector=selector))["items"]
    return [p for p in items if not meta(p).get("deletionTimestamp")]


async def start_pod(client: ApiClient, pod: Obj, node: str, *, ready: bool = True,
                    ip: str | None = None) -> None:
    """What a kubelet would do: bind the pod (unless bound) and report it Running."""
    name, namespace = meta(pod)["name"], meta(pod)["namespace"]
    if not (pod.get("spec") or {}).get("nodeName"):
        await client.create("v1 pods", {"apiVersion": "v1", "kind": "Binding",
                                        "metadata": {"name": name},
                                        "target": {"kind": "Node", "name": node}},
                            namespace, name=name, subresource="binding")
    await set_pod_phase(client, pod, "Running", ready=ready, ip=ip)


async def set_pod_phase(client: ApiClient, pod: Obj, phase: str, *, ready: bool = False,
                        ip: str | None = None) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    flag = "True" if ready else "False"
    ip = ip or f"10.244.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 2}"
    status = {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}], "startTime": now,
              "conditions": [{"type": "Ready", "status": flag, "lastTransitionTime": now},
                             {"type": "ContainersReady", "status": flag,
                              "lastTransitionTime": now},
                             {"type": "PodScheduled", "status": "True",
                              "lastTransitionTime": now}]}
    await client.patch("v1 pods", meta(pod)["name"], {"status": status}, meta(pod)["namespace"],
                       subresource="status")


async def start_if_there(client: ApiClient, pod: Obj, node: str) -> None:
    """start_pod, unless a controller deleted the pod meanwhile."""
    try:
        await start_pod(client, pod, node)
    except ApiError as exc:
        if not is_not_found(exc):
            raise


async def start_all(client: ApiClient, namespace: str, node: str, selector: str | None = None,
                    ready: bool = True) -> int:
    """Start every pod not running yet; how many were started."""
    count = 0
    for pod in await pods_of(client, namespace, selector):
        if (pod.get("status") or {}).get("phase") != "Running":
            try:
                await start_pod(client, pod, node, ready=ready)
                count += 1
            except ApiError as exc:
                if not is_not_found(exc):
                    raise
    return count


def container(image: str = "registry.k8s.io/pause:3.9", **extra) -> Obj:
    return {"name": "main", "image": image, **extra}


def pod_template(labels: dict[str, str], image: str = "registry.k8s.io/pause:3.9",
                 **spec) -> Obj:
    # No grace period: without a kubelet, deleted pods would otherwise linger.
    return {"metadata": {"labels": labels},
            "spec": {"containers": [container(image)], "terminationGracePeriodSeconds": 0,
                     **spec}}


async def get_status(client: ApiClient, resource: str, name: str, namespace: str) -> Obj:
    return (await client.get(resource, name, namespace)).get("status") or {}


async def in_thread(func, *args, **kwargs):
    return await asyncio.get_running_loop().run_in_executor(None, lambda: func(*args, **kwargs))


# --- ReplicaSet / ReplicationController -----------------------------------------------

def test_replicaset_scales_adopts_and_releases(cluster):
    from kubesmith.controllers.replicaset import ReplicaSetController
    namespace = cluster.new_namespace("rs-", default_service_account=True)

    async def main():
        async with running(cluster, namespace, ReplicaSetController) as env:
            client = env.client
            node = await make_node(client)
            # An orphan that matches is adopted, so only two pods are created.
            orphan = await client.create("v1 pods", {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "orphan", "labels": {"app": "web"}},
                "spec": {"containers": [container()], "terminationGracePeriodSeconds": 0}},
                namespace)
            rs = await client.create("apps/v1 replicasets", {
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web"},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                         "template": pod_template({"app": "web"})}}, namespace)
            pods = await eventually(lambda: _count(client, namespace, "app=web", 3))
            for pod in pods:
                ref = meta(pod)["ownerReferences"][0]
                assert ref == {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                               "uid": meta(rs)["uid"], "controller": True,
                               "blockOwnerDeletion": True}
            names = {meta(p)["name"] for p in pods}
            assert "orphan" in names and all(n.startswith("web-") for n in names - {"orphan"})
            assert meta(orphan)["name"] in names
            await start_all(client, namespace, node, "app=web")
            status = await eventually(lambda: _status_is(client, "apps/v1 replicasets", "web",
                                                         namespace, readyReplicas=3,
                                                         availableReplicas=3, replicas=3,
                                                         fullyLabeledReplicas=3))
            assert status["observedGeneration"] == meta(rs)["generation"]

            # Release: a pod relabelled away loses its ownerReference and is replaced.
            await client.patch("v1 pods", "orphan", {"metadata": {"labels": {"app": "other"}}},
                               namespace)

            async def released():
                pod = await client.get("v1 pods", "orphan", namespace)
                return not meta(pod).get("ownerReferences")
            await eventually(released)
            await eventually(lambda: _count(client, namespace, "app=web", 3))

            # Scale down: the pods not running go first.
            await client.patch("apps/v1 replicasets", "web", {"spec": {"replicas": 1}},
                               namespace)
            pods = await eventually(lambda: _count(client, namespace, "app=web", 1))
            assert (pods[0].get("status") or {}).get("phase") == "Running"
            await eventually(lambda: _status_is(client, "apps/v1 replicasets", "web",
                                                namespace, replicas=1, readyReplicas=1))
            # Scale up in a burst.
            await client.patch("apps/v1 replicasets", "web", {"spec": {"replicas": 7}},
                               namespace)
            await eventually(lambda: _count(client, namespace, "app=web", 7))
            await asyncio.sleep(0.5)
            assert len(await pods_of(client, namespace, "app=web")) == 7   # no over-creation
            events = (await client.list("v1 events", namespace))["items"]
            reasons = {e["reason"] for e in events if e["source"]["component"]
                       == "replicaset-controller"}
            assert {"SuccessfulCreate", "SuccessfulDelete"} <= reasons
            # The controller's identity is held to its role.
            [controller] = env.controllers
            with pytest.raises(ApiError) as refused:
                await controller.client.create("v1 configmaps", {
                    "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
                    namespace)
            assert is_forbidden(refused.value)
    run(main())


def test_replicationcontroller(cluster):
    from kubesmith.controllers.replicaset import ReplicationControllerController
    namespace = cluster.new_namespace("rc-", default_service_account=True)

    async def main():
        async with running(cluster, namespace, ReplicationControllerController) as env:
            client = env.client
            await client.create("v1 replicationcontrollers", {
                "apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "rc"},
                "spec": {"replicas": 2, "selector": {"app": "rc"},
                         "template": pod_template({"app": "rc"})}}, namespace)
            pods = await eventually(lambda: _count(client, namespace, "app=rc", 2))
            assert meta(pods[0])["ownerReferences"][0]["kind"] == "ReplicationController"
            await eventually(lambda: _status_is(client, "v1 replicationcontrollers", "rc",
                                                namespace, replicas=2))
            # A quota that refuses more pods: the ReplicaFailure condition says so.
            await client.create("v1 resourcequotas", {
                "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods"},
                "spec": {"hard": {"pods": "2"}}}, namespace)
            await asyncio.sleep(0.5)
            await client.patch("v1 replicationcontrollers", "rc", {"spec": {"replicas": 3}},
                               namespace)

            async def failure():
                status = await get_status(client, "v1 replicationcontrollers", "rc", namespace)
                return [c for c in status.get("conditions") or []
                        if c["type"] == "ReplicaFailure"]
            [condition] = await eventually(failure)
            assert condition["reason"] == "FailedCreate" and condition["status"] == "True"
            assert "quota" in condition["message"].lower()
            await client.patch("v1 replicationcontrollers", "rc", {"spec": {"replicas": 2}},
                               namespace)
            await eventually(lambda: _not(failure))
    run(main())


async def _not(check):
    return not await check()


async def _count(client: ApiClient, namespace: str, selector: str, n: int) -> list[Obj] | None:
    pods = await pods_of(client, namespace, selector)
    return pods if len(pods) == n else None


async def _status_is(client: ApiClient, resource: str, name: str, namespace: str,
                     **wanted: int) -> Obj | None:
    status = await get_status(client, resource, name, namespace)
    return status if all(status.get(k, 0) == v for k, v in wanted.items()) else None


# --- Deployment -----------------------------------------------------------------------

def _deployment(name: str, replicas: int, image: str, strategy: Obj | None = None) -> Obj:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "strategy": strategy or {"type": "RollingUpdate", "rollingUpdate": {
                         "maxSurge": 1, "maxUnavailable": 1}},
                     "template": pod_template({"app": name}, image)}}


async def _ready_pods(client: ApiClient, namespace: str, selector: str) -> list[Obj]:
    return [p for p in await pods_of(client, namespace, selector) if is_pod_ready(p)]


async def _deployment_done(client: ApiClient, namespace: str, name: str, replicas: int):
    d = await client.get("apps/v1 deployments", name, namespace)
    status = d.get("status") or {}
    if status.get("observedGeneration", 0) < meta(d)["generation"]:
        return None
    if all(status.get(k, 0) == replicas for k in ("replicas", "updatedReplicas",
                                                   "availableReplicas", "readyReplicas")):
        return d
    return None


def test_deployment_rolling_update_and_kubectl_rollout(cluster):
    from kubesmith.controllers.deployment import DeploymentController
    from kubesmith.controllers.replicaset import ReplicaSetController
    namespace = cluster.new_namespace("deploy-", default_service_account=True)

    async def main():
        async with running(cluster, namespace, DeploymentController,
                           ReplicaSetController) as env:
            client = env.client
            node = await make_node(client)
            body = _deployment("web", 4, "registry.k8s.io/pause:3.9")
            body["metadata"]["annotations"] = {"kubernetes.io/change-cause": "first"}
            await client.create("apps/v1 deployments", body, namespace)
            await eventually(lambda: _count(client, namespace, "app=web", 4))
            await start_all(client, namespace, node, "app=web")
            d = await eventually(lambda: _deployment_done(client, namespace, "web", 4))
            assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
            conditions = {c["type"]: c for c in d["status"]["conditions"]}
            assert conditions["Available"]["reason"] == "MinimumReplicasAvailable"
            assert conditions["Progressing"]["reason"] == "NewReplicaSetAvailable"
            rollout = await in_thread(cluster.kubectl, "-n", namespace, "rollout", "status",
                                      "deployment/web", "--timeout=20s")
            assert "successfully rolled out" in rollout.stdout
            [first_rs] = (await client.list("apps/v1 replicasets", namespace))["items"]
            first_hash = first_rs["metadata"]["labels"]["pod-template-hash"]
            assert first_rs["metadata"]["name"] == f"web-{first_hash}"
            assert first_rs["spec"]["selector"]["matchLabels"]["pod-template-hash"] == first_hash
            assert first_rs["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"] \
                == "5"

            # A new template: never fewer than replicas - maxUnavailable = 3 ready pods.
            await client.patch("apps/v1 deployments", "web", {
                "metadata": {"annotations": {"kubernetes.io/change-cause": "second"}},
                "spec": {"template": {"spec": {"containers": [container("busybox:2")]}}}},
                namespace)
            lowest, highest = 4, 4
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                lowest = min(lowest, len(await _ready_pods(client, namespace, "app=web")))
                highest = max(highest, len(await pods_of(client, namespace, "app=web")))
                if await _deployment_done(client, namespace, "web", 4) and all(
                        p["spec"]["containers"][0]["image"] == "busybox:2"
                        for p in await pods_of(client, namespace, "app=web")):
                    break
                # Start one new pod at a time, as a slow kubelet would.
                for pod in await pods_of(client, namespace, "app=web"):
                    if (pod.get("status") or {}).get("phase") != "Running":
                        await start_if_there(client, pod, node)
                        break
                await asyncio.sleep(0.3)
            else:
                raise AssertionError("rollout did not finish")
            assert lowest >= 3      # replicas - maxUnavailable
            assert highest <= 5     # replicas + maxSurge
            rollout = await in_thread(cluster.kubectl, "-n", namespace, "rollout", "status",
                                      "deployment/web", "--timeout=20s")
            assert "successfully rolled out" in rollout.stdout
            history = (await in_thread(cluster.kubectl, "-n", namespace, "rollout", "history",
                                       "deployment/web")).stdout
            assert "1         first" in history and "2         second" in history, history
            rss = (await client.list("apps/v1 replicasets", namespace))["items"]
            assert sorted(rs["spec"]["replicas"] for rs in rss) == [0, 4]
            events = (await client.list("v1 events", namespace))["items"]
            messages = [e["message"] for e in events if e["reason"] == "ScalingReplicaSet"]
            assert f"Scaled up replica set web-{first_hash} from 0 to 4" in messages, messages

            # kubectl rollout undo puts the first template back: the first set again,
            # with revision 3.
            await in_thread(cluster.kubectl, "-n", namespace, "rollout", "undo",
                            "deployment/web")
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                await start_all(client, namespace, node, "app=web")
                d = await _deployment_done(client, namespace, "web", 4)
                first = await client.get("apps/v1 replicasets", f"web-{first_hash}", namespace)
                if d and first["spec"]["replicas"] == 4 and (first.get("status") or {}).get(
                        "availableReplicas") == 4:
                    break
                await asyncio.sleep(0.3)
            else:
                dd = await client.get("apps/v1 deployments", "web", namespace)
                rss = (await client.list("apps/v1 replicasets", namespace))["items"]
                raise AssertionError("undo did not finish" + json.dumps([{k: v for k, v in o["metadata"].items() if k not in ("managedFields",)} | {"spec": o["spec"], "status": o.get("status")} for o in [dd] + rss], indent=1))
            assert first["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
            assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
            rollout = await in_thread(cluster.kubectl, "-n", namespace, "rollout", "status",
                                      "deployment/web", "--timeout=20s")
            assert "successfully rolled out" in rollout.stdout
            history = (await in_thread(cluster.kubectl, "-n", namespace, "rollout", "history",
                                       "deployment/web")).stdout
            assert "2         second" in history and "3         first" in history, history
    run(main())


def test_deployment_recreate_paused_and_history_limit(cluster):
    from kubesmith.controllers.deployment import DeploymentController
    from kubesmith.controllers.replicaset import ReplicaSetController
    namespace = cluster.new_namespace("recreate-", default_service_account=True)

    async def main():
        async with running(cluster, namespace, DeploymentController,
                           ReplicaSetController) as env:
            client = env.client
            node = await make_node(client)
            body = _deployment("db", 2, "img:1", {"type": "Recreate"})
            body["spec"]["revisionHistoryLimit"] = 1
            await client.create("apps/v1 deployments", body, namespace)
            await eventually(lambda: _count(client, namespace, "app=db", 2))
            await start_all(client, namespace, node, "app=db")
            await eventually(lambda: _deployment_done(client, namespace, "db", 2))
            for image in ("img:2", "img:3"):
                await client.patch("apps/v1 deployments", "db", {"spec": {"template": {
                    "spec": {"containers": [container(image)]}}}}, namespace)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    pods = await pods_of(client, namespace, "app=db")
                    images = {p["spec"]["containers"][0]["image"] for p in pods}
                    # Recreate: old and new pods never exist at once.
                    assert len(images) <= 1, images
                    await start_all(client, namespace, node, "app=db")
                    if images == {image} and await _deployment_done(client, namespace, "db", 2):
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise AssertionError(f"recreate to {image} did not finish")
            # revisionHistoryLimit 1: one old set kept besides the new one.
            await eventually(lambda: _rs_count(client, namespace, 2))

            # Paused: a new template makes no new set.
            await client.patch("apps/v1 deployments", "db", {"spec": {"paused": True}},
                               namespace)
            await client.patch("apps/v1 deployments", "db", {"spec": {"template": {
                "spec": {"containers": [container("img:4")]}}}}, namespace)

            async def paused_seen():
                d = await client.get("apps/v1 deployments", "db", namespace)
                progressing = [c for c in d["status"].get("conditions", [])
                               if c["type"] == "Progressing"]
                return progressing and progressing[0]["reason"] == "DeploymentPaused"
            await eventually(paused_seen)
            await asyncio.sleep(0.5)
            assert len((await client.list("apps/v1 replicasets", namespace))["items"]) == 2
    run(main())


async def _rs_count(client: ApiClient, namespace: str, n: int) -> bool:
    return len((await client.list("apps/v1 replicasets", namespace))["items"]) == n


# --- Job ------------------------------------------------------------------------------

def _job(name: str, **spec) -> Obj:
    template = pod_template({}, restartPolicy="Never")
    template["metadata"] = {}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": template, **spec}}


async def _job_pods(client: ApiClient, namespace: str, job: Obj) -> list[Obj]:
    return await pods_of(client, namespace,
                         f"batch.kubernetes.io/controller-uid={meta(job)['uid']}")


async def _job_condition(client: ApiClient, namespace: str, name: str, kind: str) -> Obj | None:
    status = await get_status(client, "batch/v1 jobs", name, namespace)
    for condition in status.get("conditions") or []:
        if condition["type"] == kind and condition["status"] == "True":
            return status
    return None


def test_job_completes_and_fails_with_backoff_limit(cluster):
    from kubesmith.controllers.job import JobController, TTLAfterFinishedController
    namespace = cluster.new_namespace("job-", default_service_account=True)

    async def main():
        async with running(cluster, namespace, JobController,
                           TTLAfterFinishedController) as env:
            client = env.client
            node = await make_node(client)
            job = await client.create("batch/v1 jobs", _job("work", completions=3,
                                                             parallelism=2), namespace)
            pods = await eventually(lambda: _count(client, namespace,
                                                   "job-name=work", 2))
            for pod in pods:
                labels = meta(pod)["labels"]
                assert labels["batch.kubernetes.io/controller-uid"] == meta(job)["uid"]
                assert labels["batch.kubernetes.io/job-name"] == "work"
                assert meta(pod)["name"].startswith("work-")
            await eventually(lambda: _status_is(client, "batch/v1 jobs", "work", namespace,
                                                active=2))
            finished = 0
            deadline = time.monotonic() + 30
            while finished < 3 and time.monotonic() < deadline:
                for pod in await pods_of(client, namespace, "job-name=work"):
                    if (pod.get("status") or {}).get("phase") != "Succeeded":
                        await start_pod(client, pod, node)
                        await set_pod_phase(client, pod, "Succeeded")
                        finished += 1
                        break
                await asyncio.sleep(0.2)
            status = await eventually(lambda: _job_condition(client, namespace, "work",
                                                             "Complete"))
            assert status["succeeded"] == 3 and not status.get("active")
            assert status["startTime"] and status["completionTime"]
            assert len(await pods_of(client, namespace, "job-name=work")) == 3

            # backoffLimit 0: the first failed pod fails the Job, active pods deleted.
            await client.create("batch/v1 jobs", _job("doomed", parallelism=2, completions=4,
                                                       backoffLimit=0), namespace)
            pods = await eventually(lambda: _count(client, namespace, "job-name=doomed", 2))
            await start_pod(client, pods[0], node)
            await set_pod_phase(client, pods[0], "Failed")
            status = await eventually(lambda: _job_condition(client, namespace, "doomed",
                                                             "Failed"))
            failed = [c for c in status["conditions"] if c["type"] == "Failed"][0]
            assert failed["reason"] == "BackoffLimitExceeded"
            assert status["failed"] == 1
            await eventually(lambda: _count(client, namespace, "job-name=doomed", 1))

            # Indexed: one pod per index, completedIndexes.
            await client.create("batch/v1 jobs", _job("indexed", parallelism=3, completions=3,
                                                       completionMode="Indexed"), namespace)
            pods = await eventually(lambda: _count(client, namespace, "job-name=indexed", 3))
            indexes = sorted(meta(p)["annotations"]["batch.kubernetes.io/job-completion-index"]
                             for p in pods)
            assert indexes == ["0", "1", "2"]
            for pod in pods:
                await start_pod(client, pod, node)
                await set_pod_phase(client, pod, "Succeeded")
            status = await eventually(lambda: _job_condition(client, namespace, "indexed",
                                                             "Complete"))
            assert status["completedIndexes"] == "0-2"

            # activeDeadlineSeconds; ttlSecondsAfterFinished then deletes the Job.
            await client.create("batch/v1 jobs", _job("slow", activeDeadlineSeconds=1,
                                                       ttlSecondsAfterFinished=1), namespace)
            status = await eventually(lambda: _job_condition(client, namespace, "slow",
                                                             "Failed"))
            assert [c for c in status["conditions"] if c["type"] == "Failed"][0]["reason"] \
                == "DeadlineExceeded"

            async def deleted():
                try:
                    job = await client.get("batch/v1 jobs", "slow", namespace)
                except ApiError as exc:
                    return is_not_found(exc)
                # Foreground deletion waits for the garbage collector (not running here).
                return bool(meta(job).get("deletionTimestamp"))
            await eventually(deleted, timeout=15)
    run(main())


# --- Endpoints and EndpointSlices -----------------------------------------------------

def test_endpoints_and_slices_follow_readiness(cluster):
    from kubesmith.controllers.endpoints import EndpointsController
    from kubesmith.controllers.endpointslice import EndpointSliceController
    namespace = cluster.new_namespace("ep-", default_service_account=True)

    async def main():
        async with running(cluster, namespace, EndpointsController,
                           EndpointSliceController) as env:
            client = env.client
            node = await make_node(client, **{"topology.kubernetes.io/zone": "z1"})
            await client.create("v1 services", {
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [
                    {"name": "http", "port": 80, "targetPort": "http-port"},
                    {"name": "metrics", "port": 9090, "targetPort": 9100}]}}, namespace)
            await client.create("v1 services", {
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "manual"},
                "spec": {"ports": [{"port": 80}]}}, namespace)
            pods = []
            for i in range(3):
                spec = {"containers": [container(ports=[{"name": "http-port",
                                                         "containerPort": 8080}])]}
                pods.append(await client.create("v1 pods", {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"web-{i}", "labels": {"app": "web"}},
                    "spec": spec}, namespace))
            for i, pod in enumerate(pods):
                await start_pod(client, pod, node, ready=(i != 2), ip=f"10.1.0.{i + 10}")

            async def endpoints_are(ready: list[str], not_ready: list[str]):
                try:
                    ep = await client.get("v1 endpoints", "web", namespace)
                except ApiError:
                    return None
                subsets = ep.get("subsets") or []
                got_ready = sorted(a["ip"] for s in subsets for a in s.get("addresses", []))
                got_not = sorted(a["ip"] for s in subsets
                                 for a in s.get("notReadyAddresses", []))
                return ep if (got_ready, got_not) == (ready, not_ready) else None

            ep = await eventually(lambda: endpoints_are(["10.1.0.10", "10.1.0.11"],
                                                        ["10.1.0.12"]))
            [subset] = ep["subsets"]
            assert sorted((p["name"], p["port"]) for p in subset["ports"]) == [
                ("http", 8080), ("metrics", 9100)]
            address = subset["addresses"][0]
            assert address["nodeName"] == node
            assert address["targetRef"]["kind"] == "Pod"
            assert address["targetRef"]["name"] == "web-0"
            assert "endpoints.kubernetes.io/last-change-trigger-time" in \
                ep["metadata"]["annotations"]

            async def slice_ready():
                slices = (await client.list(
                    "discovery.k8s.io/v1 endpointslices", namespace,
                    label_selector="kubernetes.io/service-name=web"))["items"]
                if len(slices) != 1:
                    return None
                return {e["targetRef"]["name"]: e for e in slices[0].get("endpoints") or []}, \
                    slices[0]
            endpoints, slice_ = await eventually(slice_ready)
            assert slice_["addressType"] == "IPv4"
            assert slice_["metadata"]["labels"][
                "endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
            assert slice_["metadata"]["ownerReferences"][0]["kind"] == "Service"
            assert sorted((p["name"], p["port"]) for p in slice_["ports"]) == [
                ("http", 8080), ("metrics", 9100)]
            assert endpoints["web-2"]["conditions"] == {"ready": False, "serving": False,
                                                        "terminating": False}
            assert endpoints["web-0"]["conditions"]["ready"] is True
            assert endpoints["web-0"]["nodeName"] == node
            assert endpoints["web-0"]["zone"] == "z1"

            # Readiness flips both ways.
            await set_pod_phase(client, pods[2], "Running", ready=True, ip="10.1.0.12")
            await set_pod_phase(client, pods[0], "Running", ready=False, ip="10.1.0.10")
            await eventually(lambda: endpoints_are(["10.1.0.11", "10.1.0.12"],
                                                   ["10.1.0.10"]))

            async def slice_flipped():
                found = await slice_ready()
                return found and found[0]["web-2"]["conditions"]["ready"] \
                    and not found[0]["web-0"]["conditions"]["ready"]
            await eventually(slice_flipped)
            # Settled: no more writes.
            ep = await client.get("v1 endpoints", "web", namespace)
            _, slice_ = await slice_ready()
            await asyncio.sleep(1.0)
            assert (await client.get("v1 endpoints", "web", namespace))["metadata"][
                "resourceVersion"] == ep["metadata"]["resourceVersion"]
            assert (await slice_ready())[1]["metadata"]["resourceVersion"] == \
                slice_["metadata"]["resourceVersion"]
            # A deleted pod leaves.
            await client.delete("v1 pods", "web-1", namespace, grace_period_seconds=0)
            await eventually(lambda: endpoints_are(["10.1.0.12"], ["10.1.0.10"]))
            # Services without a selector are left alone.
            with pytest.raises(ApiError):
                await client.get("v1 endpoints", "manual", namespace)
            # The Service deleted: its Endpoints go too.
            await client.delete("v1 services", "web", namespace)

            async def gone():
                try:
                    await client.get("v1 endpoints", "web", namespace)
                except ApiError as exc:
                    return is_not_found(exc)
            await eventually(gone)
    run(main())


# --- DaemonSet ------------------------------------------------------------------------

def test_daemonset_one_pod_per_eligible_node(cluster):
    from kubesmith.controllers.daemonset import DaemonSetController, pod_node
    namespace = cluster.new_namespace("ds-", default_service_account=True)

    async def main():
        async with running(cluster, namespace, DaemonSetController) as env:
            client = env.client
            tag = uuid.uuid4().hex[:6]
            plain = await make_node(client, f"ds-{tag}-a", pool=tag)
            not_ready = await make_node(client, f"ds-{tag}-b", pool=tag)
            await client.patch("v1 nodes", not_ready, {"spec": {"taints": [
                {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]}})
            tainted = await make_node(client, f"ds-{tag}-c", pool=tag)
            await client.patch("v1 nodes", tainted, {"spec": {"taints": [
                {"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}})
            await make_node(client, f"ds-{tag}-d", pool="elsewhere")
            template = pod_template({"app": "agent"}, "agent:1", nodeSelector={"pool": tag})
            await client.create("apps/v1 daemonsets", {
                "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
                "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template}},
                namespace)
            pods = await eventually(lambda: _count(client, namespace, "app=agent", 2))
            assert sorted(pod_node(p) for p in pods) == sorted([plain, not_ready])
            for pod in pods:
                terms = pod["spec"]["affinity"]["nodeAffinity"][
                    "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                   "values": [pod_node(p)]}]}
                                 for p in [pod]]
                keys = {t["key"] for t in pod["spec"]["tolerations"]}
                assert "node.kubernetes.io/unreachable" in keys
                assert meta(pod)["labels"]["controller-revision-hash"]
                await start_pod(client, pod, pod_node(pod))
            await eventually(lambda: _status_is(
                client, "apps/v1 daemonsets", "agent", namespace, desiredNumberScheduled=2,
                currentNumberScheduled=2, numberReady=2, numberAvailable=2,
                updatedNumberScheduled=2))
            revisions = (await client.list("apps/v1 controllerrevisions", namespace))["items"]
            assert len(revisions) == 1 and revisions[0]["revision"] == 1

            # A new eligible node gets a pod; a tolerated taint makes the tainted one fit.
            extra = await make_node(client, f"ds-{tag}-e", pool=tag)
            pods = await eventually(lambda: _count(client, namespace, "app=agent", 3))
            assert extra in {pod_node(p) for p in pods}

            # Rolling update, maxUnavailable 1 (the default).
            await client.patch("apps/v1 daemonsets", "agent", {"spec": {"template": {"spec": {
                "containers": [container("agent:2")]}}}}, namespace)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                pods = await pods_of(client, namespace, "app=agent")
                old = [p for p in pods if p["spec"]["containers"][0]["image"] == "agent:1"
                       and is_pod_ready(p)]
                for pod in pods:
                    if (pod.get("status") or {}).get("phase") != "Running":
                        await start_if_there(client, pod, pod_node(pod))
                if not old and len(pods) == 3 and all(is_pod_ready(p) for p in pods):
                    break
                # maxUnavailable 1: never more than one of the three nodes without a ready pod
                assert sum(is_pod_ready(p) for p in pods) >= 2
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("daemonset rolling update did not finish")
            assert len((await client.list("apps/v1 controllerrevisions",
                                          namespace))["items"]) == 2
            rollout = await in_thread(cluster.kubectl, "-n", namespace, "rollout", "status",
                                      "daemonset/agent", "--timeout=20s")
            assert "successfully rolled out" in rollout.stdout
            history = (await in_thread(cluster.kubectl, "-n", namespace, "rollout", "history",
                                       "daemonset/agent")).stdout
            assert "1 " in history and "2 " in history, history
            # kubectl rollout undo applies revision 1's template: it becomes revision 3.
            await in_thread(cluster.kubectl, "-n", namespace, "rollout", "undo",
                            "daemonset/agent")

            async def renumbered():
                revisions = (await client.list("apps/v1 controllerrevisions",
                                               namespace))["items"]
                return sorted(r["revision"] for r in revisions) == [2, 3]
            await eventually(renumbered)
    run(main())


# --- StatefulSet ----------------------------------------------------------------------

def test_statefulset_ordered_creation_scale_down_and_rolling_update(cluster):
    from kubesmith.controllers.statefulset import StatefulSetController
    namespace = cluster.new_namespace("sts-", default_service_account=True)

    async def main():
        async with running(cluster, namespace, StatefulSetController) as env:
            client = env.client
            node = await make_node(client)
            await client.create("apps/v1 statefulsets", {
                "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
                "spec": {"replicas": 3, "serviceName": "db",
                         "selector": {"matchLabels": {"app": "db"}},
                         "template": pod_template({"app": "db"}, "db:1")}}, namespace)
            # OrderedReady: db-1 only once db-0 is Running and Ready, and so on.
            for ordinal in range(3):
                pods = await eventually(lambda: _count(client, namespace, "app=db",
                                                       ordinal + 1))
                await asyncio.sleep(0.3)
                pods = await pods_of(client, namespace, "app=db")
                assert sorted(meta(p)["name"] for p in pods) == [f"db-{i}"
                                                                for i in range(ordinal + 1)]
                pod = next(p for p in pods if meta(p)["name"] == f"db-{ordinal}")
                assert pod["spec"]["hostname"] == f"db-{ordinal}"
                assert pod["spec"]["subdomain"] == "db"
                labels = meta(pod)["labels"]
                assert labels["statefulset.kubernetes.io/pod-name"] == f"db-{ordinal}"
                assert labels["apps.kubernetes.io/pod-index"] == str(ordinal)
                assert labels["controller-revision-hash"]
                await start_pod(client, pod, node)
            status = await eventually(lambda: _status_is(
                client, "apps/v1 statefulsets", "db", namespace, replicas=3, readyReplicas=3,
                updatedReplicas=3, currentReplicas=3))
            assert status["currentRevision"] == status["updateRevision"]

            # Rolling update: highest ordinal first, one at a time.
            await client.patch("apps/v1 statefulsets", "db", {"spec": {"template": {"spec": {
                "containers": [container("db:2")]}}}}, namespace)
            order = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                pods = await pods_of(client, namespace, "app=db")
                for pod in pods:
                    if (pod.get("status") or {}).get("phase") != "Running":
                        if pod["spec"]["containers"][0]["image"] == "db:2":
                            order.append(meta(pod)["name"])
                        await start_if_there(client, pod, node)
                if len(pods) == 3 and all(p["spec"]["containers"][0]["image"] == "db:2"
                                          and is_pod_ready(p) for p in pods):
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("statefulset rolling update did not finish")
            assert order == ["db-2", "db-1", "db-0"], order
            status = await eventually(lambda: _status_is(
                client, "apps/v1 statefulsets", "db", namespace, replicas=3, updatedReplicas=3))
            assert status["currentRevision"] == status["updateRevision"]
            rollout = await in_thread(cluster.kubectl, "-n", namespace, "rollout", "status",
                                      "statefulset/db", "--timeout=20s")
            assert "partitioned roll out complete" in rollout.stdout or \
                "roll out complete" in rollout.stdout, rollout.stdout

            # Scale down: highest ordinal first.
            await client.patch("apps/v1 statefulsets", "db", {"spec": {"replicas": 1}},
                               namespace)
            pods = await eventually(lambda: _count(client, namespace, "app=db", 1))
            assert meta(pods[0])["name"] == "db-0"
    run(main())


# --- CronJob --------------------------------------------------------------------------

def test_cronjob_creates_jobs_when_due(cluster):
    from kubesmith.controllers.cronjob import CronJobController
    namespace = cluster.new_namespace("cron-", default_service_account=True)
    now = [time.time()]

    async def main():
        async with running(cluster, namespace, CronJobController,
                           clock=lambda: now[0]) as env:
            client = env.client
            [controller] = env.controllers
            template = pod_template({}, restartPolicy="Never")
            template["metadata"] = {}
            await client.create("batch/v1 cronjobs", {
                "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
                "spec": {"schedule": "*/5 * * * *", "concurrencyPolicy": "Forbid",
                         "successfulJobsHistoryLimit": 1,
                         "jobTemplate": {"metadata": {"labels": {"from": "tick"}},
                                         "spec": {"template": template}}}}, namespace)
            await asyncio.sleep(0.5)
            assert not (await client.list("batch/v1 jobs", namespace))["items"]

            async def jobs(n: int):
                items = (await client.list("batch/v1 jobs", namespace))["items"]
                return items if len(items) == n else None

            # Five minutes later the CronJob is due (a schedule time has passed).
            now[0] += 300
            controller.queue.add(f"{namespace}/tick")
            [job] = await eventually(lambda: jobs(1))
            first_due = (int(now[0]) // 300) * 300
            assert job["metadata"]["name"] == f"tick-{first_due // 60}"
            assert job["metadata"]["labels"]["from"] == "tick"
            assert job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
            assert job["metadata"]["annotations"][
                "batch.kubernetes.io/cronjob-scheduled-timestamp"]
            status = await eventually(lambda: _active(client, namespace, 1))
            assert status["lastScheduleTime"]

            # Forbid: the next time passes while the first Job is active: no new Job.
            now[0] += 300
            controller.queue.add(f"{namespace}/tick")
            await asyncio.sleep(0.8)
            assert len((await client.list("batch/v1 jobs", namespace))["items"]) == 1

            # The Job completes: active empties, lastSuccessfulTime is set, and the time
            # Forbid held back is run now (still within any starting deadline).
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            await client.patch("batch/v1 jobs", job["metadata"]["name"], {"status": {
                "conditions": [{"type": "SuccessCriteriaMet", "status": "True"},
                               {"type": "Complete", "status": "True"}],
                "startTime": stamp, "completionTime": stamp, "succeeded": 1}}, namespace,
                subresource="status")
            [second] = await eventually(lambda: _jobs_named_not(client, namespace,
                                                                job["metadata"]["name"]))
            assert second["metadata"]["name"] == f"tick-{(first_due + 300) // 60}"

            async def second_active():
                status = await _active(client, namespace, 1)
                return status if status and status["active"][0]["name"] == \
                    second["metadata"]["name"] else None
            status = await eventually(second_active)
            assert status["lastSuccessfulTime"] == stamp
    run(main())


async def _active(client: ApiClient, namespace: str, n: int) -> Obj | None:
    status = await get_status(client, "batch/v1 cronjobs", "tick", namespace)
    return status if len(status.get("active") or []) == n else None


async def _jobs_named_not(client: ApiClient, namespace: str, name: str) -> list[Obj] | None:
    items = (await client.list("batch/v1 jobs", namespace))["items"]
    others = [j for j in items if j["metadata"]["name"] != name]
    return others if len(others) == 1 else None


def test_deployment_progress_deadline_and_min_ready_seconds(cluster):
    from kubesmith.controllers.deployment import DeploymentController
    from kubesmith.controllers.replicaset import ReplicaSetController
    namespace = cluster.new_namespace("deadline-", default_service_account=True)

    async def main():
        async with running(cluster, namespace, DeploymentController,
                           ReplicaSetController) as env:
            client = env.client
            node = await make_node(client)
            # Pods that never become ready: the rollout times out.
            body = _deployment("stuck", 1, "img:1")
            body["spec"]["progressDeadlineSeconds"] = 1
            await client.create("apps/v1 deployments", body, namespace)

            async def timed_out():
                status = await get_status(client, "apps/v1 deployments", "stuck", namespace)
                return [c for c in status.get("conditions") or []
                        if c["type"] == "Progressing"
                        and c["reason"] == "ProgressDeadlineExceeded"]
            [condition] = await eventually(timed_out, timeout=15)
            assert condition["status"] == "False"
            assert condition["message"].endswith("has timed out progressing.")
            result = await in_thread(cluster.kubectl, "-n", namespace, "rollout", "status",
                                     "deployment/stuck", "--timeout=10s", check=False)
            assert result.returncode != 0
            assert "exceeded its progress deadline" in result.stderr

            # minReadySeconds: ready pods count as available only after it.
            body = _deployment("slow", 1, "img:1")
            body["spec"]["minReadySeconds"] = 2
            await client.create("apps/v1 deployments", body, namespace)
            await eventually(lambda: _count(client, namespace, "app=slow", 1))
            await start_all(client, namespace, node, "app=slow")
            ready_at = time.monotonic()
            await eventually(lambda: _status_is(client, "apps/v1 deployments", "slow",
                                                namespace, readyReplicas=1))
            status = await get_status(client, "apps/v1 deployments", "slow", namespace)
            if time.monotonic() - ready_at < 1.5:
                assert not status.get("availableReplicas")
            await eventually(lambda: _status_is(client, "apps/v1 deployments", "slow",
                                                namespace, availableReplicas=1), timeout=15)
            assert time.monotonic() - ready_at >= 1.0

            # A quota that refuses a new ReplicaSet: Progressing False ReplicaSetCreateError.
            await client.create("v1 resourcequotas", {
                "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "sets"},
                "spec": {"hard": {"count/replicasets.apps": "2"}}}, namespace)
            await asyncio.sleep(0.5)
            await client.patch("apps/v1 deployments", "slow", {"spec": {"template": {
                "spec": {"containers": [container("img:2")]}}}}, namespace)

            async def create_error():
                status = await get_status(client, "apps/v1 deployments", "slow", namespace)
                return [c for c in status.get("conditions") or []
                        if c["type"] == "Progressing" and c["reason"] == "ReplicaSetCreateError"]
            [condition] = await eventually(create_error)
            assert condition["status"] == "False" and "quota" in condition["message"].lower()
    run(main())


def test_deployment_scaled_mid_rollout_proportionally(cluster):
    from kubesmith.controllers.deployment import DeploymentController
    from kubesmith.controllers.replicaset import ReplicaSetController
    namespace = cluster.new_namespace("proportional-", default_service_account=True)

    async def main():
        async with running(cluster, namespace, DeploymentController,
                           ReplicaSetController) as env:
            client = env.client
            node = await make_node(client)
            body = _deployment("web", 4, "img:1", {"type": "RollingUpdate", "rollingUpdate": {
                "maxSurge": 1, "maxUnavailable": 0}})
            await client.create("apps/v1 deployments", body, namespace)
            await eventually(lambda: _count(client, namespace, "app=web", 4))
            await start_all(client, namespace, node, "app=web")
            await eventually(lambda: _deployment_done(client, namespace, "web", 4))
            # A rollout that cannot go on (the new pod never gets ready): old 4, new 1.
            await client.patch("apps/v1 deployments", "web", {"spec": {"template": {
                "spec": {"containers": [container("img:2")]}}}}, namespace)

            async def sizes(wanted: list[int]):
                rss = (await client.list("apps/v1 replicasets", namespace))["items"]
                found = sorted((rs["spec"]["template"]["spec"]["containers"][0]["image"],
                                rs["spec"]["replicas"]) for rs in rss)
                return found if [n for _, n in found] == wanted else None
            await eventually(lambda: sizes([4, 1]))
            # Scaled to 8 (9 with the surge): the 4 extra shared 3 old + 1 new, as upstream.
            await client.patch("apps/v1 deployments", "web", {"spec": {"replicas": 8}},
                               namespace)
            found = await eventually(lambda: sizes([7, 2]))
            assert found == [("img:1", 7), ("img:2", 2)]
            rss = (await client.list("apps/v1 replicasets", namespace))["items"]
            assert {rs["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"]
                    for rs in rss} == {"8"}
    run(main())


def test_daemonset_rolling_update_with_surge(cluster):
    from kubesmith.controllers.daemonset import DaemonSetController, pod_node
    namespace = cluster.new_namespace("dssurge-", default_service_account=True)

    async def main():
        async with running(cluster, namespace, DaemonSetController) as env:
            client = env.client
            tag = uuid.uuid4().hex[:6]
            for suffix in "ab":
                await make_node(client, f"surge-{tag}-{suffix}", pool=tag)
            template = pod_template({"app": "proxy"}, "proxy:1", nodeSelector={"pool": tag})
            await client.create("apps/v1 daemonsets", {
                "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "proxy"},
                "spec": {"selector": {"matchLabels": {"app": "proxy"}}, "template": template,
                         "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {
                             "maxSurge": 1, "maxUnavailable": 0}}}}, namespace)
            pods = await eventually(lambda: _count(client, namespace, "app=proxy", 2))
            for pod in pods:
                await start_pod(client, pod, pod_node(pod))
            await eventually(lambda: _status_is(client, "apps/v1 daemonsets", "proxy",
                                                namespace, numberAvailable=2))
            await client.patch("apps/v1 daemonsets", "proxy", {"spec": {"template": {"spec": {
                "containers": [container("proxy:2")]}}}}, namespace)
            most = 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                pods = await pods_of(client, namespace, "app=proxy")
                most = max(most, len(pods))
                # maxUnavailable 0: every node keeps a ready pod throughout.
                assert len({pod_node(p) for p in pods if is_pod_ready(p)}) == 2
                if len(pods) == 2 and all(p["spec"]["containers"][0]["image"] == "proxy:2"
                                          and is_pod_ready(p) for p in pods):
                    break
                for pod in pods:
                    if (pod.get("status") or {}).get("phase") != "Running":
                        await start_if_there(client, pod, pod_node(pod))
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("surge rollout did not finish")
            assert most == 3     # one node at a time ran its old and new pod side by side
    run(main())
