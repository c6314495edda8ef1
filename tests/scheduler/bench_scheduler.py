"""Scheduling throughput against a real kube-apiserver (not collected by pytest).

    .venv/bin/python tests/scheduler/bench_scheduler.py [--nodes 100] [--pods 1000]
                                                        [--profile scheduler.prof]

Starts etcd and a kube-apiserver (tests/apiserver's harness), registers --nodes nodes
(4 CPUs, 16Gi, 110 pods each), creates --pods pending pods (100m CPU, 128Mi each), then
runs the scheduler in this process and reports pods bound a second: from the first
scheduling cycle to the last binding answered, and until the watch has shown every pod
bound. Figures depend on the machine and what else runs on it; they are printed only.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kubesmith.client.events import EventRecorder  # noqa: E402
from kubesmith.client.informers import InformerFactory  # noqa: E402
from kubesmith.client.rest import ApiClient  # noqa: E402
from kubesmith.scheduler.scheduler import Scheduler  # noqa: E402
from tests.apiserver.harness import Cluster  # noqa: E402
from tests.scheduler.fakes import make_node  # noqa: E402


def pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "bench"}},
            "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9",
                                     "resources": {"requests": {"cpu": "100m",
                                                                "memory": "128Mi"}}}]}}


async def gather_limited(coroutines, limit: int) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine):
        async with semaphore:
            await coroutine
    await asyncio.gather(*(one(c) for c in coroutines))


async def bench(cluster: Cluster, args) -> None:
    namespace = cluster.new_namespace("bench-", default_service_account=True)
    async with ApiClient.from_kubeconfig(cluster.kubeconfig, component="bench",
                                         qps=5000, burst=5000) as client:
        started = time.monotonic()
        for i in range(args.nodes):
            node = make_node(f"node-{i:04d}", cpu="4", memory="16Gi", pods=110,
                             labels={"topology.kubernetes.io/zone": f"zone-{i % 3}"})
            status = node.pop("status")
            await client.create("v1 nodes", node)
            await client.patch("v1 nodes", node["metadata"]["name"], {"status": status},
                               subresource="status")
        await gather_limited((client.create("v1 pods", pod(f"p-{i:05d}"), namespace)
                              for i in range(args.pods)), 32)
        print(f"{args.nodes} nodes and {args.pods} pods created in "
              f"{time.monotonic() - started:.1f}s")

    async with ApiClient.from_kubeconfig(cluster.kubeconfig, component="kube-scheduler",
                                         qps=args.qps, burst=args.qps * 2) as client:
        factory = InformerFactory(client)
        scheduler = Scheduler(client, factory, EventRecorder(client, "default-scheduler"))
        bound: dict[str, float] = {}
        scheduler.pods.add_event_handler(on_update=lambda old, new: bound.setdefault(
            new["metadata"]["name"], time.monotonic()) if new["spec"].get("nodeName") else None)
        factory.start()
        await factory.wait_for_sync(60)
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        started = time.monotonic()
        running = asyncio.create_task(scheduler.run())
        deadline = started + args.timeout
        while scheduler.scheduled < args.pods and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        binds_done = time.monotonic()
        while len(bound) < args.pods and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        watched = time.monotonic()
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await scheduler.drain(10)
        await factory.shutdown()
    print(f"bound {scheduler.scheduled}/{args.pods} pods in {binds_done - started:.2f}s: "
          f"{scheduler.scheduled / (binds_done - started):.0f} pods/s "
          f"(bind errors {scheduler.bind_errors}, unschedulable {scheduler.unschedulable})")
    print(f"every binding seen through the watch after {watched - started:.2f}s: "
          f"{len(bound) / (watched - started):.0f} pods/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--qps", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--profile", help="write a cProfile of the scheduling to this file")
    args = parser.parse_args()
    with Cluster() as cluster:
        asyncio.run(bench(cluster, args))


if __name__ == "__main__":
    main()
