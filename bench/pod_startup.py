"""Benchmark: pod startup latency on real nodes, from create to Running as a watch sees it.

    .venv/bin/python bench/pod_startup.py [--kubeconfig FILE] [--pods 30] [--image REF]

Runs against a deployed cluster (by default the lab's: `bin/kubesmithctl kubeconfig`).
In a namespace of its own it creates `--pods` busybox pods (image imported by the deploy,
imagePullPolicy IfNotPresent, so no registry is involved), all at once by default or at a
steady `--qps` rate as upstream's density tests do, that the scheduler spreads over the
workers, and records for each pod the time from the create request to the first
watch event showing it Running with every container started. It prints p50/p90/p99 and
the worst, how the pods spread over nodes, the startup throughput (pods Running per
second of the run: all at once, the nodes' limit), and the ratio of p99 to upstream's pod
startup SLO (5 s at p99) and to the project's target (2 s).

Bounded: pods are created at most `--concurrency` at a time, the wait ends after
`--timeout` seconds, and the namespace is deleted in every case (also on Ctrl-C).
Traffic goes only to the cluster's API server.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubesmith.client.rest import ApiClient  # noqa: E402

SLO_P99_SECONDS = 5.0      # upstream's pod startup SLO (stateless pods, images present)
TARGET_P99_SECONDS = 2.0


def default_kubeconfig() -> str:
    result = subprocess.run([str(REPO / "bin" / "kubesmithctl"), "kubeconfig"],
                            capture_output=True, text=True, timeout=30, check=True)
    return result.stdout.strip()


def bench_pod(name: str, image: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "pod-startup-bench"}},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": image,
                                     "imagePullPolicy": "IfNotPresent",
                                     "command": ["sh", "-c",
                                                 "trap 'exit 0' TERM; sleep 600 & wait"]}]}}


def is_running(pod: dict) -> bool:
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    return (status.get("phase") == "Running" and bool(containers)
            and all("running" in (c.get("state") or {}) for c in containers))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


async def run(args) -> int:
    namespace = f"pod-startup-{uuid.uuid4().hex[:6]}"
    created: dict[str, float] = {}
    running: dict[str, float] = {}
    nodes: dict[str, str] = {}
    async with ApiClient.from_kubeconfig(args.kubeconfig, component="bench-pod-startup") as client:
        await client.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": namespace}})
        try:
            # The ServiceAccount admission needs the namespace's default account, and the
            # pods' token volume its kube-root-ca.crt: both come from the controller
            # manager, and a pod created before them waits for them, which is not the
            # startup latency measured here.
            deadline = time.monotonic() + 30
            for resource, name in (("serviceaccounts", "default"),
                                   ("configmaps", "kube-root-ca.crt")):
                while True:
                    try:
                        await client.get(resource, name, namespace)
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
            listed = await client.list("pods", namespace)
            version = listed["metadata"]["resourceVersion"]
            done = asyncio.Event()

            async def watch() -> None:
                async with client.watch("pods", namespace, resource_version=version,
                                        timeout_seconds=int(args.timeout) + 5) as events:
                    async for event in events:
                        pod = event.object
                        name = pod["metadata"]["name"]
                        if name not in running and is_running(pod):
                            running[name] = time.monotonic()
                            nodes[name] = pod["spec"].get("nodeName", "?")
                            if len(running) == args.pods:
                                done.set()
                                return

            watcher = asyncio.create_task(watch())
            limit = asyncio.Semaphore(args.concurrency)

            start = time.monotonic()

            async def create(index: int) -> None:
                if args.qps:    # paced: pod i is created at start + i / qps
                    await asyncio.sleep(max(0.0, start + index / args.qps - time.monotonic()))
                name = f"p{index:03d}"
                async with limit:
                    created[name] = time.monotonic()
                    await client.create("pods", bench_pod(name, args.image), namespace)

            await asyncio.gather(*(create(i) for i in range(args.pods)))
            try:
                await asyncio.wait_for(done.wait(), args.timeout)
            except asyncio.TimeoutError:
                pass
            watcher.cancel()
            elapsed = time.monotonic() - start
        finally:
            await client.delete("namespaces", namespace)
            # Wait (bounded) until its pods are stopped and the namespace is gone, so the
            # teardown does not load the nodes during a following run.
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                try:
                    await client.get("namespaces", namespace)
                except Exception:
                    break
                await asyncio.sleep(0.5)

    latencies = [running[n] - created[n] for n in running]
    pacing = f"at {args.qps:g} pods/s" if args.qps else \
        f"all at once ({args.concurrency} requests in flight)"
    print(f"pods: {args.pods} created {pacing}, {len(running)} Running within "
          f"{args.timeout:.0f} s "
          f"(all in {elapsed:.1f} s)")
    if not latencies:
        print("no pod reached Running")
        return 1
    p50, p90, p99 = (percentile(latencies, f) for f in (0.50, 0.90, 0.99))
    print(f"create -> Running: p50 {p50:.2f} s, p90 {p90:.2f} s, p99 {p99:.2f} s, "
          f"max {max(latencies):.2f} s, mean {statistics.mean(latencies):.2f} s")
    print(f"p99 / upstream SLO ({SLO_P99_SECONDS:.0f} s): {p99 / SLO_P99_SECONDS:.2f}; "
          f"p99 / target ({TARGET_P99_SECONDS:.0f} s): {p99 / TARGET_P99_SECONDS:.2f}")
    print(f"startup throughput: {len(running) / elapsed:.1f} pods/s Running over the run")
    spread = Counter(nodes.values())
    print("pods per node: " + ", ".join(f"{n} {c}" for n, c in sorted(spread.items())))
    return 0 if len(running) == args.pods else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig")
    parser.add_argument("--pods", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--qps", type=float, default=0.0,
                        help="create pods at this steady rate, as upstream's density tests "
                             "do (default 0: all at once)")
    parser.add_argument("--image", default="kubesmith.local/busybox:latest")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    if args.pods < 1 or args.pods > 500:
        parser.error("--pods must be 1..500")
    args.kubeconfig = args.kubeconfig or default_kubeconfig()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
