"""kube-scheduler under load on simulated nodes: pods scheduled a second, against the API
server's own binding rate measured in the same run.

    .venv/bin/python bench/scheduler.py              # 5000 pods on 100, then 500 nodes
    .venv/bin/python bench/scheduler.py --quick      # 1000 pods, a smoke run
    .venv/bin/python bench/scheduler.py --json       # machine-readable figures
    .venv/bin/python bench/scheduler.py --nodes 100 --pods 2000

It starts a throwaway etcd and kube-apiserver (tests/apiserver/harness.py's, with
kubeadm's PKI and RBAC), kubesmith-hollow processes for the simulated nodes, and
kube-scheduler (--leader-elect=false, with scheduler.conf) as subprocesses; all are
stopped and every temporary folder removed at the end: on success, on failure, on
Ctrl-C and on SIGTERM. Every loop is bounded in count and in time; traffic goes to
127.0.0.1 only.

Measured, in order:

- raw binding rate: --pods pods created without a scheduler, then POST pods/binding for
  each as fast as this client goes (--concurrency in flight), to node names no hollow
  node serves (the API server alone; the pods are deleted afterwards);
- for each node count (--nodes, 100 then 500): --pods pods (cpu/memory requests, no
  affinity: upstream scheduler_perf's SchedulingBasic) are created first, then the
  scheduler starts; pods scheduled a second is the count over the time from the first
  binding seen to the last (the scheduler's own start-up is left out and printed apart);
  then the time until the hollow nodes have them all Running. The scheduler stops and
  the pods are deleted before the next node count;
- a Deployment of --replicas replicas (1000) until fully Ready on the last node count,
  with kube-controller-manager (deployment and replicaset controllers) and the scheduler
  running: the whole path from one create to every pod Ready. Skipped with a message when
  kube-controller-manager is not importable.

Figures depend on the machine and on what else runs on it; they are printed, never
compared against anything (the "target" lines only say where the figure stands).
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.apiserver import CPU, cpu_text, summary  # noqa: E402
from kubesmith.client.informers import InformerFactory, namespace_key  # noqa: E402
from kubesmith.client.rest import ApiClient, ApiError  # noqa: E402
from kubesmith.store.testing import etcd_available  # noqa: E402
from tests.apiserver.harness import PYTHON, Cluster  # noqa: E402

NODE_PREFIX = "hollow-node-"
TARGET_PODS_PER_S = 200.0       # with 100 nodes
PROCESS_START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 60.0


class BenchError(Exception):
    pass


def _raise_interrupt(signo, frame):
    raise KeyboardInterrupt(f"signal {signo}")


def have_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def bench_pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "sched-bench"}},
            "spec": {"containers": [{"name": "app", "image": "registry.example/pause:3.9",
                                     "resources": {"requests": {"cpu": "100m",
                                                                "memory": "128Mi"}}}]}}


def deployment(name: str, replicas: int) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": bench_pod(name)["spec"]}}}


# --- processes ------------------------------------------------------------------------

class Processes:
    """Subprocesses of this run, each with its log file; stopped in reverse order."""

    def __init__(self, base: Path):
        self.base = base
        self.running: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self.base / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=out,
                                       stdin=subprocess.DEVNULL)
        self.running.append((name, process, log))
        return process

    def check(self) -> None:
        for name, process, log in self.running:
            if process.poll() is not None:
                raise BenchError(f"{name} exited with {process.returncode}:\n{tail(log)}")

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running = [entry for entry in self.running if entry[1] is not process]

    def stop_all(self) -> None:
        for _, process, _ in reversed(list(self.running)):
            self.stop(process)

    def log_of(self, process: subprocess.Popen) -> str:
        for _, known, log in self.running:
            if known is process:
                return tail(log)
        return ""


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def supports_flag(module: str, flag: str) -> bool:
    try:
        result = subprocess.run([PYTHON, "-m", module, "--help"], cwd=REPO, timeout=60,
                                capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return False
    return flag in result.stdout


# --- measurements ---------------------------------------------------------------------

async def create_pods(client: ApiClient, namespace: str, names: list[str], concurrency: int,
                      max_seconds: float) -> dict:
    """Create the pods, `concurrency` in flight; bounded by `max_seconds`."""
    latencies: list[float] = []
    pending = list(reversed(names))
    started = time.perf_counter()
    deadline = started + max_seconds

    async def writer() -> None:
        while pending and time.perf_counter() < deadline:
            name = pending.pop()
            t0 = time.perf_counter()
            await client.create("v1 pods", bench_pod(name), namespace)
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(writer() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if pending:
        raise BenchError(f"only {len(latencies)} of {len(names)} pods created in "
                         f"{max_seconds:.0f} s")
    return {"ops": len(latencies), "seconds": round(elapsed, 3),
            "ops_per_s": round(len(latencies) / elapsed, 1), **summary(latencies)}


async def bind_pods(client: ApiClient, namespace: str, names: list[str], concurrency: int,
                    max_seconds: float, cpu: CPU) -> dict:
    """POST pods/binding for every pod as fast as this client can."""
    latencies: list[float] = []
    pending = list(reversed(names))
    before = cpu.sample()
    started = time.perf_counter()
    deadline = started + max_seconds

    async def binder() -> None:
        while pending and time.perf_counter() < deadline:
            name = pending.pop()
            node = f"bench-absent-{len(pending) % 100}"
            t0 = time.perf_counter()
            await client.create("v1 pods", {"apiVersion": "v1", "kind": "Binding",
                                            "metadata": {"name": name},
                                            "target": {"apiVersion": "v1", "kind": "Node",
                                                       "name": node}},
                                namespace, name=name, subresource="binding")
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(binder() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"ops": len(latencies), "seconds": round(elapsed, 3),
            "ops_per_s": round(len(latencies) / elapsed, 1), **summary(latencies),
            "cpu_ms": CPU.per_op(before, cpu.sample(), len(latencies))}


class PodTimes:
    """When each pod of a namespace was first seen bound, and first seen Running (from
    one informer, the shared machinery's watch)."""

    def __init__(self, client: ApiClient, namespace: str):
        self.factory = InformerFactory(client, namespace=namespace)
        self.informer = self.factory.informer("v1 pods")
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.informer.add_event_handler(on_add=self._seen,
                                        on_update=lambda old, new: self._seen(new))

    def _seen(self, pod: dict) -> None:
        now = time.perf_counter()
        key = namespace_key(pod)
        if (pod.get("spec") or {}).get("nodeName") and key not in self.bound:
            self.bound[key] = now
        if (pod.get("status") or {}).get("phase") == "Running" and key not in self.running:
            self.running[key] = now

    async def start(self) -> None:
        self.factory.start()
        if not await self.factory.wait_for_sync(timeout=REQUEST_TIMEOUT):
            raise BenchError("the pods informer did not sync")

    async def stop(self) -> None:
        await self.factory.shutdown()


async def wait_until(check, seconds: float, processes: Processes, what: str,
                     interval: float = 0.1) -> float:
    """Poll `check()` (plain or async) until true; the time it took. Bounded."""
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.perf_counter() - started
        processes.check()
        if time.perf_counter() >= deadline:
            raise BenchError(f"{what}: not done after {seconds:.0f} s")
        await asyncio.sleep(interval)


async def ready_nodes(client: ApiClient) -> int:
    nodes = await client.list_all("v1 nodes", label_selector="type=hollow")
    return sum(any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in (n.get("status") or {}).get("conditions") or [])
               for n in nodes["items"])


async def new_namespace(client: ApiClient, prefix: str) -> str:
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    await client.create("v1 namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": name}})
    # What the service-account controller would make; pods need it (admission).
    await client.create("v1 serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount",
                                               "metadata": {"name": "default"}}, name)
    return name


async def delete_pods(client: ApiClient, namespace: str, processes: Processes) -> float:
    """All pods of the namespace deleted for good (gracePeriodSeconds=0); bounded."""
    started = time.perf_counter()
    await client.delete_collection("v1 pods", namespace, grace_period_seconds=0)

    async def empty() -> bool:
        return not (await client.list("v1 pods", namespace, limit=1))["items"]
    await wait_until(empty, 120, processes, f"deleting the pods of {namespace}", 0.5)
    return time.perf_counter() - started


# --- the run --------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, cluster: Cluster, processes: Processes,
                 cpu: CPU):
        self.args = args
        self.cluster = cluster
        self.processes = processes
        self.cpu = cpu
        self.kubeconfigs = cluster.state / "kubeconfigs"
        self.nodes_started = 0
        self.scheduler_flags: list[str] = []

    def say(self, text: str) -> None:
        if not self.args.json:
            print(text, flush=True)

    def start_hollow(self, total: int) -> None:
        """More hollow nodes, up to `total` (a process for each new range)."""
        if total <= self.nodes_started:
            return
        process = self.processes.start(f"hollow-{self.nodes_started}", [
            PYTHON, "-m", "kubesmith.hollow.main",
            f"--kubeconfig={self.kubeconfigs / 'admin.conf'}",
            f"--nodes={total - self.nodes_started}", f"--start-index={self.nodes_started}",
            f"--name-prefix={NODE_PREFIX}", "--cpu=32", "--memory=256Gi", "--pods=110",
            "--v=1"])
        self.cpu.pids[f"hollow-{self.nodes_started}"] = process.pid
        self.nodes_started = total

    def start_scheduler(self) -> subprocess.Popen:
        conf = self.kubeconfigs / "scheduler.conf"
        return self.processes.start("kube-scheduler", [
            PYTHON, "-m", "kubesmith.scheduler.main", f"--kubeconfig={conf}",
            "--leader-elect=false", *self.scheduler_flags,
            # Client rate limits out of the way, as upstream's scheduler_perf sets them
            # (5000/5000): the scheduler's rate is measured, not its client throttle.
            "--kube-api-qps=5000", "--kube-api-burst=5000"])

    def start_controller_manager(self) -> subprocess.Popen:
        # Upstream's controller identities are per-controller service accounts
        # (--use-service-account-credentials); system:kube-controller-manager alone may
        # not create ReplicaSets or pods, so the bench runs the manager as admin.
        conf = self.kubeconfigs / "admin.conf"
        return self.processes.start("kube-controller-manager", [
            PYTHON, "-m", "kubesmith.controllers.main", f"--kubeconfig={conf}",
            "--leader-elect=false", "--secure-port=0",
            "--controllers=deployment,replicaset", "--kube-api-qps=500",
            "--kube-api-burst=1000"])

    async def run(self) -> dict:
        args = self.args
        results: dict = {"pods": args.pods, "nodes": args.nodes}
        have_scheduler = have_module("kubesmith.scheduler.main")
        if have_scheduler and supports_flag("kubesmith.scheduler.main", "--secure-port"):
            # No fixed port: other schedulers may run on this machine.
            self.scheduler_flags.append("--secure-port=0")
        async with ApiClient.from_kubeconfig(self.kubeconfigs / "admin.conf",
                                             component="bench-scheduler", qps=0,
                                             timeout=REQUEST_TIMEOUT) as client:
            self.say(f"  etcd + kube-apiserver up; {args.pods} pods a phase, "
                     f"{args.concurrency} requests in flight")
            # The API server alone: pods/binding as fast as one client goes.
            ns = await new_namespace(client, "bench-bind-")
            await create_pods(client, ns, [f"bind-{i:05d}" for i in range(args.pods)],
                              args.concurrency, args.phase_seconds)
            binding = await bind_pods(client, ns, [f"bind-{i:05d}" for i in range(args.pods)],
                                      args.concurrency, args.phase_seconds, self.cpu)
            results["binding"] = binding
            self.say(f"  {'raw pods/binding via API':<40} {binding['ops']:6d} in "
                     f"{binding['seconds']:6.2f} s = {binding['ops_per_s']:8.1f}/s   "
                     f"p50 {binding['p50_ms']:6.2f} ms   p99 {binding['p99_ms']:6.2f} ms"
                     + cpu_text({k: v for k, v in binding["cpu_ms"].items()
                                 if k != "scheduler"}))
            await delete_pods(client, ns, self.processes)

            if not have_scheduler:
                self.say("  kube-scheduler: kubesmith.scheduler.main is not importable yet; "
                         "scheduling not measured")
                return results
            phases = []
            for count in args.nodes:
                phases.append(await self.schedule_phase(client, count))
            results["schedule"] = phases

            if not have_module("kubesmith.controllers.main"):
                self.say("  Deployment: kube-controller-manager (kubesmith.controllers.main) "
                         "is not importable yet; not measured")
            else:
                results["deployment"] = await self.deployment_phase(client, args.nodes[-1])

        self.say("")
        targets = {}
        for phase in phases:
            ratio = phase["pods_per_s"] / binding["ops_per_s"] if binding["ops_per_s"] else 0
            targets[f"scheduled_over_binding_{phase['nodes']}"] = round(ratio, 3)
            self.say(f"  scheduled/binding rate with {phase['nodes']} nodes = {ratio:.2f}")
        first = next((p for p in phases if p["nodes"] == 100), None)
        if first is not None:
            targets["pods_per_s_100_nodes"] = first["pods_per_s"]
            self.say(f"  pods scheduled/s with 100 nodes = {first['pods_per_s']:.1f} "
                     f"(target >= {TARGET_PODS_PER_S:.0f})")
        results["targets"] = targets
        return results

    async def wait_nodes(self, client: ApiClient, count: int) -> float:
        async def enough() -> bool:
            return await ready_nodes(client) >= count
        return await wait_until(enough, PROCESS_START_TIMEOUT + count / 10, self.processes,
                                f"{count} hollow nodes Ready", 0.5)

    async def schedule_phase(self, client: ApiClient, node_count: int) -> dict:
        args = self.args
        self.start_hollow(node_count)
        took = await self.wait_nodes(client, node_count)
        ns = await new_namespace(client, f"bench-sched-{node_count}-")
        names = [f"pod-{i:05d}" for i in range(args.pods)]
        created = await create_pods(client, ns, names, args.concurrency, args.phase_seconds)
        times = PodTimes(client, ns)
        await times.start()
        try:
            started = time.perf_counter()
            scheduler = self.start_scheduler()
            self.cpu.pids["scheduler"] = scheduler.pid
            before = self.cpu.sample()
            await wait_until(lambda: len(times.bound) >= args.pods, args.phase_seconds,
                             self.processes, f"{args.pods} pods scheduled on {node_count} "
                             f"nodes ({len(times.bound)} so far)", 0.05)
            after = self.cpu.sample()
            await wait_until(lambda: len(times.running) >= args.pods, args.phase_seconds,
                             self.processes, f"{args.pods} pods Running on {node_count} nodes",
                             0.1)
            running = self.cpu.sample()
            self.processes.stop(scheduler)
            self.cpu.pids.pop("scheduler", None)
        finally:
            await times.stop()
        first, last = min(times.bound.values()), max(times.bound.values())
        spread = max(last - first, 1e-6)
        phase = {
            "nodes": node_count, "pods": args.pods,
            "nodes_ready_s": round(took, 1),
            "create_per_s": created["ops_per_s"],
            "startup_s": round(first - started, 2),
            "seconds": round(spread, 3),
            "pods_per_s": round(args.pods / spread, 1),
            "all_running_after_first_bind_s": round(max(times.running.values()) - first, 2),
            "cpu_ms": CPU.per_op(before, after, args.pods),
        }
        # The hollow nodes work until every pod runs: their CPU is counted to then.
        phase["cpu_ms"]["hollow"] = round(sum(
            v for k, v in CPU.per_op(before, running, args.pods).items()
            if k.startswith("hollow-")), 3)
        self.say(f"  {f'{node_count} nodes: pods scheduled':<40} {args.pods:6d} in "
                 f"{phase['seconds']:6.2f} s = {phase['pods_per_s']:8.1f}/s   "
                 f"(scheduler up and first bind after {phase['startup_s']:.1f} s; all Running "
                 f"{phase['all_running_after_first_bind_s']:.1f} s after the first bind)"
                 + cpu_text({k: v for k, v in phase["cpu_ms"].items()
                             if k in ("scheduler", "server", "etcd", "hollow")})
                 + " per pod")
        phase["delete_s"] = round(await delete_pods(client, ns, self.processes), 1)
        return phase

    async def deployment_phase(self, client: ApiClient, node_count: int) -> dict:
        args = self.args
        self.start_hollow(node_count)
        await self.wait_nodes(client, node_count)
        ns = await new_namespace(client, "bench-deploy-")
        manager = self.start_controller_manager()
        scheduler = self.start_scheduler()
        await asyncio.sleep(2.0)    # both list and watch before the Deployment arrives
        self.processes.check()
        await client.create("apps/v1 deployments", deployment("web", args.replicas), ns)

        async def ready() -> bool:
            status = (await client.get("apps/v1 deployments", "web", ns)).get("status") or {}
            return (status.get("readyReplicas") or 0) >= args.replicas

        try:
            took = await wait_until(ready, args.deployment_seconds, self.processes,
                                    f"Deployment of {args.replicas} Ready", 0.5)
        finally:
            self.processes.stop(scheduler)
            self.processes.stop(manager)
        self.say(f"  {f'Deployment {args.replicas} replicas Ready':<40} in {took:6.2f} s "
                 f"({node_count} hollow nodes; controller-manager + scheduler)")
        return {"replicas": args.replicas, "nodes": node_count, "seconds": round(took, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/scheduler.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, help="pods a phase (5000; --quick 1000)")
    parser.add_argument("--nodes", default="100,500",
                        help="hollow node counts, one phase each, increasing (100,500)")
    parser.add_argument("--replicas", type=int,
                        help="replicas of the Deployment (1000; --quick 300)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="bench client requests in flight (32)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    args.pods = args.pods or (1000 if args.quick else 5000)
    args.replicas = args.replicas or (300 if args.quick else 1000)
    try:
        args.nodes = [int(n) for n in args.nodes.split(",") if n.strip()]
    except ValueError:
        parser.error("--nodes: comma-separated counts, e.g. 100,500")
    if not args.nodes or any(n < 1 for n in args.nodes) or args.nodes != sorted(args.nodes):
        parser.error("--nodes: positive counts in increasing order")
    if args.pods < 1 or args.replicas < 1 or args.concurrency < 1:
        parser.error("--pods, --replicas and --concurrency must be positive")
    # Bounds on every wait, scaled with the sizes (a slow machine is not a hang).
    args.phase_seconds = 60.0 + args.pods / 10
    args.deployment_seconds = 120.0 + args.replicas / 5
    if not etcd_available():
        print("bench/scheduler.py: needs /usr/bin/etcd (etcd-server)", file=sys.stderr)
        return 2

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    cluster = Cluster(["--default-watch-cache-size=100", "--v=2"])
    processes = Processes(cluster.base)
    status = 0
    results = None
    started = time.monotonic()
    try:
        cluster.start()
        cpu = CPU(cluster.process.pid, getattr(getattr(cluster.etcd, "process", None), "pid",
                                               None))
        results = asyncio.run(Bench(args, cluster, processes, cpu).run())
        results["seconds"] = round(time.monotonic() - started, 1)
    except (BenchError, ApiError, ConnectionError) as exc:
        print(f"bench/scheduler.py: {exc}", file=sys.stderr)
        status = 1
    except RuntimeError as exc:   # the harness: a process that would not start
        print(f"bench/scheduler.py: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("\nbench/scheduler.py: interrupted; stopping", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        processes.stop_all()
        if status == 1:
            for name, log in (("kube-apiserver", cluster.log_path),
                              *((p.name, p) for p in sorted(cluster.base.glob("*.log"))
                                if p.name != "apiserver.log")):
                text = tail(log, 15)
                if text:
                    print(f"--- {name} (last lines):\n{text}", file=sys.stderr)
        cluster.cleanup()
    if results is not None:
        if args.json:
            print(json.dumps(results))
        else:
            print(f"  ({results['seconds']:.0f} s in all)")
    return status


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
