"""The API server under load: creates, GETs, LISTs and watches, against raw etcd.

    .venv/bin/python bench/apiserver.py                # starts a local etcd + kube-apiserver
    .venv/bin/python bench/apiserver.py --quick        # small sizes, a smoke run (~20 s)
    .venv/bin/python bench/apiserver.py --json         # machine-readable figures
    .venv/bin/python bench/apiserver.py --profile apiserver.prof   # cProfile the server
    .venv/bin/python bench/apiserver.py --etcd-endpoints https://127.0.0.1:2379 \\
        --etcd-ca ca.crt --etcd-cert client.crt --etcd-key client.key     # reuse an etcd
    .venv/bin/python bench/apiserver.py --server https://127.0.0.1:6443 \\
        --ca ca.crt --cert admin.crt --key admin.key                      # reuse a server

Without --server it starts a kube-apiserver process (the one tests/apiserver/harness.py
starts: kubeadm's PKI, RBAC, an encryption config) on a throwaway etcd, or on the etcd
given with --etcd-endpoints, and removes both, and every temporary folder, at the end:
on success, on failure, on Ctrl-C and on SIGTERM. Every request loop is bounded in count
and in time; traffic goes to 127.0.0.1 only (other addresses are refused).

Measured, in order (one HTTPS client with the admin certificate, keep-alive connections):

- raw etcd: unconditional puts and create transactions of values the size of a stored pod,
  --concurrency writers on one channel (bench/etcd_raw.py's measurement);
- pod creates through the API: --concurrency requests in flight, a realistic pod (a
  Deployment's, with probes, env, resources, a volume); their rate over raw etcd's;
- LIST of the namespace's pods at a third of --pods and at --pods, one at a time: from
  etcd (resourceVersion unset), from the watch cache (resourceVersion=0), and whole lists
  fetched in limit=500 chunks (the time of all chunks together);
- single-pod GET latency at a fixed offered load (--get-rate, open loop: latency counts from
  each request's scheduled start), then the most GETs a second with --concurrency in flight;
- watch: --watchers watches of one namespace; pods are created paced (latency) and then as
  fast as they go (events a second delivered over every watcher). Each event's latency is
  from a timestamp the writer puts in the pod just before sending it, to the moment the
  watcher has read its line; also given from the create's acknowledgement.

Every phase prints the CPU each operation cost the server, etcd and this client (from
/proc). The summary says where the create rate stands against raw etcd's, and what the
target rate (half the raw put rate) would cost: etcd's and the client's share of the
machine's cores, and the CPU a create that leaves the API server.

Figures depend on the machine and on what else runs on it; they are printed, never
compared against anything (the "target" lines only say where the figure stands).
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import pstats
import random
import signal
import ssl
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from bench.etcd_raw import run_op  # noqa: E402
from kubesmith.store import EtcdStore  # noqa: E402
from kubesmith.store.testing import etcd_available  # noqa: E402
from tests.apiserver.harness import PYTHON, Cluster  # noqa: E402

SENT = "bench.kubesmith.io/sent"
SENT_MARK = b'"bench.kubesmith.io/sent":"'
REQUEST_TIMEOUT = 30.0
LIST_CHUNK = 500


class BenchError(Exception):
    pass


def _raise_interrupt(signo, frame):
    raise KeyboardInterrupt(f"signal {signo}")


def _loopback(url: str) -> str:
    host = urlsplit(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise BenchError(f"{url}: only 127.0.0.1 / localhost is benchmarked")
    return url


class CPU:
    """CPU seconds used by the server, etcd (when this run started them) and this client."""

    def __init__(self, server_pid: int | None, etcd_pid: int | None):
        self.pids = {"server": server_pid, "etcd": etcd_pid}
        self.tick = os.sysconf("SC_CLK_TCK")

    def _proc(self, pid: int | None) -> float | None:
        if pid is None:
            return None
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / self.tick   # utime + stime

    def sample(self) -> dict:
        now = {name: self._proc(pid) for name, pid in self.pids.items()}
        now["client"] = time.process_time()
        return now

    @staticmethod
    def per_op(before: dict, after: dict, ops: int) -> dict:
        """Milliseconds of CPU per operation, by process."""
        out = {}
        for name, start in before.items():
            end = after.get(name)
            if start is not None and end is not None and ops:
                out[name] = round((end - start) * 1000 / ops, 3)
        return out


def cpu_text(cpu: dict) -> str:
    return "   cpu/op " + " ".join(f"{k} {v:.2f}" for k, v in cpu.items()) + " ms" if cpu else ""


def pct(values: list[float], p: float) -> float:
    """The p-quantile (nearest rank, as bench/etcd_raw.py), in ms; values in seconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": pct(values, 0.50), "p99_ms": pct(values, 0.99),
            "max_ms": round(max(values) * 1000, 2) if values else float("nan")}


# --- the pod ------------------------------------------------------------------------------

def make_pod(name: str, namespace: str, sent: float | None = None) -> dict:
    """A pod as a Deployment's ReplicaSet makes it (what most pods in a cluster look like)."""
    annotations = {"kubectl.kubernetes.io/restartedAt": "2024-05-01T10:00:00Z",
                   "prometheus.io/scrape": "true", "prometheus.io/port": "9090"}
    if sent is not None:
        annotations[SENT] = repr(sent)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace,
            "generateName": "web-5d4f8c7b9d-",
            "labels": {"app.kubernetes.io/name": "web", "app.kubernetes.io/part-of": "shop",
                       "app.kubernetes.io/version": "1.25.3", "tier": "frontend",
                       "pod-template-hash": "5d4f8c7b9d"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "web-5d4f8c7b9d",
                                 "uid": "0f5b3a2e-8c1d-4e6f-9a7b-2c3d4e5f6a7b",
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "containers": [{
                "name": "web", "image": "registry.example/shop/web:1.25.3",
                "imagePullPolicy": "IfNotPresent",
                "args": ["--listen=:8080", "--metrics=:9090", "--log-format=json"],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                "env": [{"name": "MODE", "value": "production"},
                        {"name": "CACHE_URL", "value": "redis://cache.shop.svc:6379/0"},
                        {"name": "POD_NAME",
                         "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_IP",
                         "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "500m", "memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080},
                                   "periodSeconds": 5, "failureThreshold": 3},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                  "initialDelaySeconds": 10, "periodSeconds": 10},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/web",
                                  "readOnly": True}],
                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True},
            }],
            "volumes": [{"name": "config", "configMap": {"name": "web-config"}}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "web"}},
                    "topologyKey": "kubernetes.io/hostname"}}]}},
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
        },
    }


# --- the client ---------------------------------------------------------------------------

class Client:
    """One aiohttp client to the API server (client certificate, keep-alive)."""

    def __init__(self, url: str, context: ssl.SSLContext, connections: int):
        self.url = url.rstrip("/")
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=connections,
                                           limit_per_host=connections),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            json_serialize=lambda o: orjson.dumps(o).decode())

    async def close(self) -> None:
        await self.http.close()

    async def request(self, method: str, path: str, body: bytes | None = None
                      ) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else None
        async with self.http.request(method, self.url + path, data=body,
                                        headers=headers) as response:
            return response.status, await response.read()

    async def json(self, method: str, path: str, body=None, ok=(200, 201)) -> dict:
        data = orjson.dumps(body) if body is not None else None
        status, raw = await self.request(method, path, data)
        if status not in ok:
            text = raw[:300].decode(errors="replace")
            raise BenchError(f"{method} {path}: HTTP {status}: {text}")
        return orjson.loads(raw)


# --- measurements -------------------------------------------------------------------------

async def create_pods(client: Client, namespace: str, start: int, count: int,
                      concurrency: int, max_seconds: float, stamp: bool = False,
                      acks: dict | None = None) -> dict:
    """Pods start..start+count-1, `concurrency` in flight, until done or max_seconds."""
    path = f"/api/v1/namespaces/{namespace}/pods"
    latencies: list[float] = []
    failures: list[str] = []
    next_index = start
    end = start + count
    started = time.perf_counter()
    deadline = started + max_seconds

    async def writer() -> None:
        nonlocal next_index
        clock = time.perf_counter
        while next_index < end and clock() < deadline and len(failures) < 10:
            name = f"web-5d4f8c7b9d-{next_index:06d}"
            next_index += 1
            t0 = clock()
            body = orjson.dumps(make_pod(name, namespace, t0 if stamp else None))
            try:
                status, raw = await client.request("POST", path, body)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            t1 = clock()
            if status != 201:
                failures.append(f"HTTP {status}: {raw[:200].decode(errors='replace')}")
                continue
            latencies.append(t1 - t0)
            if acks is not None:
                acks[name] = t1

    await asyncio.gather(*(writer() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if failures:
        raise BenchError(f"{len(failures)} pod creates failed; first: {failures[0]}")
    return {"ops": len(latencies), "seconds": round(elapsed, 3),
            "ops_per_s": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
            **summary(latencies)}


def merge_rates(runs: list[dict]) -> dict:
    ops = sum(r["ops"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    return {"ops": ops, "seconds": round(seconds, 3),
            "ops_per_s": round(ops / seconds, 1) if seconds else 0.0,
            "p50_ms": max(r["p50_ms"] for r in runs), "p99_ms": max(r["p99_ms"] for r in runs)}


async def get_open_loop(client: Client, paths: list[str], rate: float, seconds: float) -> dict:
    """GETs scheduled at a fixed rate whatever the answers do (no coordinated omission)."""
    total = max(1, int(rate * seconds))
    latencies: list[float] = []
    failures = 0
    interval = 1.0 / rate
    rng = random.Random(1)
    tasks = []
    t0 = time.perf_counter()

    async def one(path: str, scheduled: float) -> None:
        nonlocal failures
        try:
            status, _ = await client.request("GET", path)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            failures += 1
            return
        if status != 200:
            failures += 1
            return
        latencies.append(time.perf_counter() - scheduled)

    for i in range(total):
        scheduled = t0 + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(rng.choice(paths), scheduled)))
    await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)
    elapsed = time.perf_counter() - t0
    return {"rate": rate, "requests": total, "failed": failures,
            "achieved_per_s": round(len(latencies) / elapsed, 1), **summary(latencies)}


async def get_closed_loop(client: Client, paths: list[str], concurrency: int, count: int,
                          max_seconds: float) -> dict:
    latencies: list[float] = []
    failures = 0
    done = 0
    rng = random.Random(2)
    started = time.perf_counter()
    deadline = started + max_seconds

    async def reader() -> None:
        nonlocal done, failures
        clock = time.perf_counter
        while done < count and clock() < deadline:
            done += 1
            t0 = clock()
            try:
                status, _ = await client.request("GET", rng.choice(paths))
            except (aiohttp.ClientError, asyncio.TimeoutError):
                failures += 1
                continue
            if status == 200:
                latencies.append(clock() - t0)
            else:
                failures += 1

    await asyncio.gather(*(reader() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, "ops": len(latencies), "failed": failures,
            "seconds": round(elapsed, 3), "ops_per_s": round(len(latencies) / elapsed, 1),
            **summary(latencies)}


async def list_series(client: Client, namespace: str, mode: str, reps: int,
                      max_seconds: float) -> dict:
    """`reps` LISTs one at a time: mode etcd (no resourceVersion), cache (rv=0) or chunks
    (limit=500, continue until the end; the time of the whole list)."""
    base = f"/api/v1/namespaces/{namespace}/pods"
    latencies: list[float] = []
    chunk_latencies: list[float] = []
    items = 0
    chunks = 0
    deadline = time.perf_counter() + max_seconds
    for _ in range(reps):
        if time.perf_counter() >= deadline:
            break
        if mode == "chunks":
            token, total, seen, pages = "", 0.0, 0, 0
            while True:
                path = f"{base}?limit={LIST_CHUNK}" + (f"&continue={token}" if token else "")
                t0 = time.perf_counter()
                status, raw = await client.request("GET", path)
                took = time.perf_counter() - t0
                if status != 200:
                    raise BenchError(f"LIST {path}: HTTP {status}")
                total += took
                chunk_latencies.append(took)
                pages += 1
                body = orjson.loads(raw)   # outside the timing
                seen += len(body["items"])
                token = body["metadata"].get("continue", "")
                if not token or pages > 10_000:
                    break
            latencies.append(total)
            items, chunks = seen, pages
        else:
            path = base + ("?resourceVersion=0" if mode == "cache" else "")
            t0 = time.perf_counter()
            status, raw = await client.request("GET", path)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                raise BenchError(f"LIST {path}: HTTP {status}")
            items = len(orjson.loads(raw)["items"])
    result = {"mode": mode, "items": items, **summary(latencies)}
    if mode == "chunks":
        result["chunks"] = chunks
        result["chunk"] = summary(chunk_latencies)
    return result


class Watcher:
    """One watch of a namespace's pods; records when each stamped ADDED event arrives."""

    def __init__(self, client: Client, namespace: str, rv: str, timeout_s: int):
        self.client = client
        self.path = (f"/api/v1/namespaces/{namespace}/pods?watch=1&resourceVersion={rv}"
                     f"&timeoutSeconds={timeout_s}")
        self.arrivals: list[tuple[float, float, bytes]] = []   # (arrived, sent, name)
        self.connected = asyncio.Event()
        self.error: str | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        clock = time.perf_counter
        try:
            async with self.client.http.get(
                    self.client.url + self.path,
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=120)) as response:
                if response.status != 200:
                    self.error = f"HTTP {response.status}"
                    return
                self.connected.set()
                async for line in response.content:
                    arrived = clock()
                    at = line.find(SENT_MARK)
                    if at < 0 or not line.startswith(b'{"type":"ADDED"'):
                        continue
                    begin = at + len(SENT_MARK)
                    sent = float(line[begin:line.index(b'"', begin)])
                    name_at = line.find(b'"name":"')
                    name = line[name_at + 8:line.index(b'"', name_at + 8)]
                    self.arrivals.append((arrived, sent, name))
        except asyncio.CancelledError:
            pass
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.connected.set()

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def watch_bench(client: Client, namespace: str, watchers_n: int, paced: int, rate: float,
                      burst: int, concurrency: int, max_seconds: float, cpu: CPU) -> dict:
    listing = await client.json("GET", f"/api/v1/namespaces/{namespace}/pods?limit=1")
    rv = listing["metadata"]["resourceVersion"]
    watchers = [Watcher(client, namespace, rv, int(max_seconds) + 60) for _ in range(watchers_n)]
    for w in watchers:
        w.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(w.connected.wait() for w in watchers)), 30)
        broken = [w.error for w in watchers if w.error]
        if broken:
            raise BenchError(f"{len(broken)} watches failed; first: {broken[0]}")
        acks: dict[bytes, float] = {}

        async def until_delivered(expected: int, seconds: float) -> None:
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                if all(len(w.arrivals) >= expected for w in watchers):
                    return
                await asyncio.sleep(0.02)

        # Paced: one create every 1/rate s (open loop), latency at a modest load.
        paced_acks: dict[str, float] = {}
        pod_path = f"/api/v1/namespaces/{namespace}/pods"
        failures: list[str] = []

        async def create_one(index: int) -> None:
            name = f"watched-{index:06d}"
            t0 = time.perf_counter()
            status, raw = await client.request("POST", pod_path,
                                               orjson.dumps(make_pod(name, namespace, t0)))
            if status != 201:
                failures.append(f"HTTP {status}: {raw[:200].decode(errors='replace')}")
            paced_acks[name] = time.perf_counter()

        t0 = time.perf_counter()
        tasks = []
        for i in range(paced):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(create_one(i)))
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT)
        if failures:
            raise BenchError(f"watched pod creates failed; first: {failures[0]}")
        await until_delivered(paced, 15)
        acks.update((k.encode(), v) for k, v in paced_acks.items())
        paced_marks = [len(w.arrivals) for w in watchers]

        # Burst: creates as fast as they go; events a second over every watcher.
        burst_acks: dict[str, float] = {}
        before = cpu.sample()
        burst_start = time.perf_counter()
        created = await create_pods(client, namespace, 0, burst, concurrency, max_seconds,
                                    stamp=True, acks=burst_acks)
        await until_delivered(paced + created["ops"], max_seconds)
        burst_cpu = cpu.sample()
        acks.update((k.encode(), v) for k, v in burst_acks.items())
    finally:
        for w in watchers:
            await w.stop()

    def figures(slices: list[list[tuple[float, float, bytes]]], expected: int) -> dict:
        from_send, from_ack = [], []
        last = 0.0
        for arrivals in slices:
            for arrived, sent, name in arrivals:
                from_send.append(arrived - sent)
                if name in acks:
                    from_ack.append(arrived - acks[name])
                last = max(last, arrived)
        missing = expected * len(slices) - len(from_send)
        return {"events": len(from_send), "missing": missing, "from_send": summary(from_send),
                "after_ack": {"p50_ms": pct(from_ack, 0.5), "p99_ms": pct(from_ack, 0.99)},
                "last": last}

    paced_fig = figures([w.arrivals[:m] for w, m in zip(watchers, paced_marks)], paced)
    burst_fig = figures([w.arrivals[m:] for w, m in zip(watchers, paced_marks)], created["ops"])
    span = burst_fig.pop("last") - burst_start
    paced_fig.pop("last")
    burst_fig["events_per_s"] = round(burst_fig["events"] / span, 1) if span > 0 else 0.0
    burst_fig["creates_per_s"] = created["ops_per_s"]
    burst_fig["writes"] = created["ops"]
    # Per event delivered (one write fans out to every watcher).
    burst_fig["cpu_ms"] = CPU.per_op(before, burst_cpu, burst_fig["events"])
    paced_fig["writes"] = paced
    paced_fig["rate"] = rate
    return {"watchers": watchers_n, "paced": paced_fig, "burst": burst_fig}


async def raw_etcd(store: EtcdStore, writers: int, count: int, max_seconds: float,
                   value_size: int, cpu: CPU) -> dict:
    """bench/etcd_raw.py's runs (put, then create), with a warm-up, under a prefix of their
    own that is deleted afterwards."""
    prefix = f"/kubesmith-bench/{uuid.uuid4().hex[:8]}/".encode()
    value = os.urandom(value_size // 2).hex().encode().ljust(value_size, b"x")
    results = {}
    try:
        for op in ("put", "create"):
            await run_op(store, op, prefix + b"warmup/", writers, writers * 4, 5, value)
            before = cpu.sample()
            results[op] = await run_op(store, op, prefix, writers, count, max_seconds, value)
            results[op]["cpu_ms"] = CPU.per_op(before, cpu.sample(), results[op]["ops"])
    finally:
        await store.delete_range(prefix)
    return results


# --- the run ------------------------------------------------------------------------------

def cpu_budget(rate: float, cpu_ms: dict) -> dict | None:
    """What `rate` creates a second would cost in CPU on this machine, from the per-create
    CPU measured in the create phase: etcd's and the client's share, and what is left
    for the API server (the bound on the create rate when the machine is CPU-bound)."""
    if not rate or cpu_ms.get("server") is None or cpu_ms.get("etcd") is None:
        return None
    cores = len(os.sched_getaffinity(0))
    others = cpu_ms["etcd"] + cpu_ms.get("client", 0.0)
    return {"rate": round(rate, 1), "cores": cores, "others_ms": round(others, 3),
            "others_cores": round(others * rate / 1000, 2),
            "server_budget_ms": round(cores * 1000 / rate - others, 3),
            "server_ms": cpu_ms["server"]}


def say(args, text: str = "") -> None:
    if not args.json:
        print(text, flush=True)


def row(label: str, figures: dict, extra: str = "") -> str:
    return (f"  {label:<34} p50 {figures['p50_ms']:8.2f} ms   p99 {figures['p99_ms']:8.2f} ms"
            f"{extra}")


async def bench(args, url: str, context: ssl.SSLContext, etcd, cpu: CPU) -> dict:
    results: dict = {"config": {"pods": args.pods, "concurrency": args.concurrency,
                                "watchers": args.watchers, "get_rate": args.get_rate,
                                "quick": args.quick}}
    suffix = uuid.uuid4().hex[:6]
    ns, ns_watch, ns_warm = f"bench-{suffix}", f"bench-watch-{suffix}", f"bench-warm-{suffix}"
    client = Client(url, context, args.concurrency + args.watchers + 16)
    store = None
    try:
        version = await client.json("GET", "/version")
        say(args, f"kube-apiserver {version.get('gitVersion', '?')} at {url}; "
                  f"{args.concurrency} in flight, {args.pods} pods, {args.watchers} watchers")
        for name in (ns, ns_watch, ns_warm):
            await client.json("POST", "/api/v1/namespaces",
                              {"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": name}})
            # What the controller manager's service account controller would make: pods
            # run as "default" (409: the server made it already).
            await client.json("POST", f"/api/v1/namespaces/{name}/serviceaccounts",
                              {"apiVersion": "v1", "kind": "ServiceAccount",
                               "metadata": {"name": "default"}}, ok=(201, 409))
        # Warm-up: connections, the pods watch cache (a real server has it running for
        # its kubelets and scheduler), code paths.
        await client.json("GET", f"/api/v1/namespaces/{ns}/pods?resourceVersion=0")
        await create_pods(client, ns_warm, 0, args.concurrency * 4, args.concurrency, 20)

        # The stored size of a pod: raw etcd writes values of that size.
        value_size = None
        if etcd is not None:
            store = EtcdStore(etcd.endpoint, etcd.pki.ca_file, etcd.pki.client_cert,
                              etcd.pki.client_key)
            await store.connect()
            kv = await store.get(f"/registry/pods/{ns_warm}/web-5d4f8c7b9d-000000".encode())
            value_size = len(kv.value) if kv is not None else None
        if value_size is None:
            pod = await client.json("GET", f"/api/v1/namespaces/{ns_warm}/pods/"
                                           "web-5d4f8c7b9d-000000")
            value_size = len(orjson.dumps(pod))
        results["pod_bytes"] = value_size

        say(args, "")
        if store is not None:
            raw = await raw_etcd(store, args.concurrency, max(args.pods, 2000),
                                 args.phase_seconds, value_size, cpu)
            results["etcd"] = raw
            for op, r in raw.items():
                say(args, f"  raw etcd {op:<25} {r['ops']:6d} in {r['seconds']:6.2f} s "
                          f"= {r['ops_per_s']:8.1f}/s   p50 {r['p50_ms']:6.2f} ms   "
                          f"p99 {r['p99_ms']:6.2f} ms   ({value_size}-byte values)"
                          + cpu_text({k: v for k, v in r["cpu_ms"].items() if k != "server"}))
        else:
            say(args, "  raw etcd: not measured (no --etcd-endpoints with a reused server)")

        # Creates, in two steps, with LISTs after each.
        first = max(1, args.pods // 3)
        steps = [(0, first), (first, args.pods - first)] if args.pods > first else [(0, first)]
        creates, lists = [], []
        create_deadline = time.perf_counter() + args.create_seconds
        total = 0
        for start, count in steps:
            left = create_deadline - time.perf_counter()
            if left > 0 and count > 0:
                before = cpu.sample()
                run = await create_pods(client, ns, start, count, args.concurrency, left)
                run["cpu_s"] = {k: v * run["ops"] / 1000 for k, v in
                                CPU.per_op(before, cpu.sample(), run["ops"]).items()}
                creates.append(run)
                total += run["ops"]
            reps = args.list_reps if total <= 1500 else max(3, args.list_reps // 2)
            for mode in ("etcd", "cache", "chunks"):
                before = cpu.sample()
                entry = {"pods": total, **await list_series(client, ns, mode, reps,
                                                            args.phase_seconds)}
                entry["cpu_ms"] = CPU.per_op(before, cpu.sample(), entry["n"])
                lists.append(entry)
        merged = merge_rates(creates)
        merged["cpu_ms"] = {k: round(sum(r["cpu_s"].get(k, 0) for r in creates) * 1000
                                     / merged["ops"], 3)
                            for k in creates[0]["cpu_s"]} if creates and merged["ops"] else {}
        results["create"] = merged
        say(args, f"  {'pod creates via API':<34} {merged['ops']:6d} in {merged['seconds']:6.2f} s"
                  f" = {merged['ops_per_s']:8.1f}/s   p50 {merged['p50_ms']:6.2f} ms   "
                  f"p99 {merged['p99_ms']:6.2f} ms" + cpu_text(merged["cpu_ms"]))
        results["list"] = lists
        labels = {"etcd": "from etcd", "cache": "rv=0, watch cache",
                  "chunks": f"limit={LIST_CHUNK}, whole list"}
        for entry in lists:
            extra = f"   ({entry['n']} lists, {entry['items']} items"
            if entry["mode"] == "chunks":
                extra += (f", {entry['chunks']} chunks; a chunk p50 "
                          f"{entry['chunk']['p50_ms']:.2f} ms "
                          f"p99 {entry['chunk']['p99_ms']:.2f} ms")
            say(args, row(f"LIST {entry['pods']} pods {labels[entry['mode']]}", entry,
                          extra + ")" + cpu_text(entry["cpu_ms"])))

        # GETs.
        names = [f"web-5d4f8c7b9d-{i:06d}" for i in range(total)]
        paths = [f"/api/v1/namespaces/{ns}/pods/{n}" for n in names] or \
            [f"/api/v1/namespaces/{ns_warm}/pods/web-5d4f8c7b9d-000000"]
        before = cpu.sample()
        fixed = await get_open_loop(client, paths, args.get_rate, args.get_seconds)
        fixed["cpu_ms"] = CPU.per_op(before, cpu.sample(), fixed["n"])
        results["get_fixed"] = fixed
        say(args, row(f"GET at {args.get_rate:g}/s offered (open loop)", fixed,
                      f"   ({fixed['requests']} requests, {fixed['failed']} failed)"
                      + cpu_text(fixed["cpu_ms"])))
        before = cpu.sample()
        peak = await get_closed_loop(client, paths, args.concurrency, args.get_count,
                                     args.phase_seconds)
        peak["cpu_ms"] = CPU.per_op(before, cpu.sample(), peak["ops"])
        results["get_max"] = peak
        say(args, f"  {'GET max, ' + str(args.concurrency) + ' in flight':<34} "
                  f"{peak['ops']:6d} in {peak['seconds']:6.2f} s = {peak['ops_per_s']:8.1f}/s"
                  f"   p50 {peak['p50_ms']:6.2f} ms   p99 {peak['p99_ms']:6.2f} ms"
                  + cpu_text(peak["cpu_ms"]))

        # Watches.
        watch = await watch_bench(client, ns_watch, args.watchers, args.watch_paced,
                                  args.watch_rate, args.watch_burst, args.concurrency,
                                  args.phase_seconds, cpu)
        results["watch"] = watch
        for label, part in (("paced", watch["paced"]), ("burst", watch["burst"])):
            figures = part["from_send"]
            what = (f"{part['writes']} creates at {part['rate']:g}/s" if label == "paced" else
                    f"{part['writes']} creates at {part['creates_per_s']:.0f}/s, "
                    f"{part['events_per_s']:.0f} events/s delivered")
            say(args, row(f"watch x{watch['watchers']} {label}, from write", figures,
                          f"   ({what}; {part['events']} events, {part['missing']} missing; "
                          f"after ack p50 {part['after_ack']['p50_ms']:.2f} ms "
                          f"p99 {part['after_ack']['p99_ms']:.2f} ms)"
                          + (cpu_text(part["cpu_ms"]) + " per event" if "cpu_ms" in part
                             else "")))

        # Where the figures stand.
        say(args, "")
        targets = {}
        if "etcd" in results:
            ratio = merged["ops_per_s"] / results["etcd"]["put"]["ops_per_s"]
            ratio_c = merged["ops_per_s"] / results["etcd"]["create"]["ops_per_s"]
            targets["creates_over_raw_put"] = round(ratio, 3)
            targets["creates_over_raw_create"] = round(ratio_c, 3)
            say(args, f"  creates/raw etcd = {ratio:.2f} (target >= 0.50)   "
                      f"[over raw etcd create txns: {ratio_c:.2f}]")
            budget = cpu_budget(results["etcd"]["put"]["ops_per_s"] * 0.5,
                                merged.get("cpu_ms") or {})
            if budget:
                targets["cpu_budget"] = budget
                say(args, f"  CPU at the target rate ({budget['rate']:.0f} creates/s, "
                          f"{budget['cores']} cores): etcd + this client alone take "
                          f"{budget['others_ms']:.2f} ms a create = {budget['others_cores']:.2f}"
                          f" cores, leaving the API server {budget['server_budget_ms']:.2f} ms "
                          f"a create (it takes {budget['server_ms']:.2f} ms)")
        targets["get_p99_ms"] = fixed["p99_ms"]
        say(args, f"  GET p99 at {args.get_rate:g}/s = {fixed['p99_ms']:.2f} ms "
                  f"(target <= 20 ms)")
        results["targets"] = targets

        # Remove what was made when the server is not ours to throw away.
        if args.server:
            for name in (ns, ns_watch, ns_warm):
                await client.request("DELETE", f"/api/v1/namespaces/{name}/pods")
                await client.request("DELETE", f"/api/v1/namespaces/{name}")
        return results
    finally:
        if store is not None:
            await store.close()
        await client.close()


# The server under cProfile, timed by its main thread's CPU time: on a busy machine wall
# time would charge whatever ran when the process was descheduled.
PROFILED_SERVER = """
import cProfile, sys, time
out = sys.argv[1]
sys.argv = ["kube-apiserver", *sys.argv[2:]]
from kubesmith.apiserver import main
profile = cProfile.Profile(time.thread_time)
try:
    profile.runcall(main.main)
finally:
    profile.dump_stats(out)
"""


class BenchCluster(Cluster):
    """The harness's etcd + kube-apiserver; the server optionally under cProfile."""

    profile: Path | None = None

    def spawn(self, flags: list[str], log_path: Path) -> subprocess.Popen:
        if self.profile is None:
            return super().spawn(flags, log_path)
        with open(log_path, "ab") as log:
            return subprocess.Popen([PYTHON, "-c", PROFILED_SERVER, str(self.profile), *flags],
                                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
                                    stdin=subprocess.DEVNULL)


def print_profile(path: Path, top: int, stream) -> None:
    stats = pstats.Stats(str(path), stream=stream)
    stats.strip_dirs()
    for order in ("tottime", "cumulative"):
        print(f"\n--- kube-apiserver profile, top {top} by {order} ({path}) ---", file=stream)
        stats.sort_stats(order).print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/apiserver.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, help="pods to create (3000; --quick 300)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="requests in flight, and raw etcd writers (32)")
    parser.add_argument("--watchers", type=int, help="concurrent watches (100; --quick 20)")
    parser.add_argument("--get-rate", type=float, default=100.0,
                        help="offered GETs a second for the latency figure (100)")
    parser.add_argument("--profile", type=Path,
                        help="run the started kube-apiserver under cProfile, keep its stats in "
                             "this file and print the top functions")
    parser.add_argument("--server", help="a running kube-apiserver on 127.0.0.1 to use")
    parser.add_argument("--ca", help="with --server: CA file of its serving certificate")
    parser.add_argument("--cert", help="with --server: client certificate (a cluster admin)")
    parser.add_argument("--key", help="with --server: client key")
    parser.add_argument("--etcd-endpoints", help="a running etcd on 127.0.0.1 to use "
                                                 "(without --server: start the server on it)")
    parser.add_argument("--etcd-ca", help="CA file of the etcd")
    parser.add_argument("--etcd-cert", help="etcd client certificate")
    parser.add_argument("--etcd-key", help="etcd client key")
    args = parser.parse_args(argv)

    quick = args.quick
    args.pods = args.pods or (300 if quick else 3000)
    args.watchers = args.watchers or (20 if quick else 100)
    args.list_reps = 5 if quick else 20
    args.get_seconds = 3.0 if quick else 10.0
    args.get_count = 600 if quick else 5000
    args.phase_seconds = 5.0 if quick else 15.0
    args.create_seconds = 20.0 if quick else 60.0
    args.watch_paced = 30 if quick else 100
    args.watch_rate = 20.0
    args.watch_burst = 60 if quick else 300
    if args.pods < 1 or args.concurrency < 1 or args.watchers < 1 or args.get_rate <= 0:
        parser.error("--pods, --concurrency, --watchers and --get-rate must be positive")
    if args.server and not (args.ca and args.cert and args.key):
        parser.error("--server needs --ca, --cert and --key")
    if args.server and args.profile:
        parser.error("--profile profiles a server this run starts (not with --server)")
    try:
        if args.server:
            _loopback(args.server)
        if args.etcd_endpoints:
            for endpoint in args.etcd_endpoints.split(","):
                _loopback(endpoint)
    except BenchError as exc:
        parser.error(str(exc))
    etcd = None
    if args.etcd_endpoints:
        etcd = types.SimpleNamespace(endpoint=args.etcd_endpoints, pki=types.SimpleNamespace(
            ca_file=args.etcd_ca, client_cert=args.etcd_cert, client_key=args.etcd_key))
    if not args.server and etcd is None and not etcd_available():
        print("bench/apiserver.py: needs /usr/bin/etcd (etcd-server), or --etcd-endpoints",
              file=sys.stderr)
        return 2

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    cluster = None
    status = 0
    results = None
    started = time.monotonic()
    try:
        if args.server:
            context = ssl.create_default_context(cafile=args.ca)
            context.load_cert_chain(args.cert, args.key)
            url = args.server
        else:
            # Upstream's defaults for what the harness sets for tests; no access log.
            cluster = BenchCluster(["--default-watch-cache-size=100", "--v=2"], etcd=etcd)
            if args.profile:
                cluster.profile = args.profile.resolve()
            cluster.start()
            etcd = cluster.etcd
            context, url = cluster.ssl_context(), cluster.url
        cpu = CPU(cluster.process.pid if cluster is not None else None,
                  getattr(getattr(etcd, "process", None), "pid", None))
        results = asyncio.run(bench(args, url, context, etcd, cpu))
        results["seconds"] = round(time.monotonic() - started, 1)
    except BenchError as exc:
        print(f"bench/apiserver.py: {exc}", file=sys.stderr)
        status = 1
    except RuntimeError as exc:   # the harness: a process that would not start
        print(f"bench/apiserver.py: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("\nbench/apiserver.py: interrupted; stopping", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if cluster is not None:
            if status == 1:
                tail = cluster.log_tail(20)
                if tail:
                    print(f"kube-apiserver log (last lines):\n{tail}", file=sys.stderr)
            cluster.cleanup()   # stops the server (stats written) and an etcd it started
    if results is not None:
        if args.json:
            print(json.dumps(results))
        else:
            print(f"  ({results['seconds']:.0f} s in all)")
    if args.profile and status == 0 and args.profile.exists():
        print_profile(args.profile, 30, sys.stderr if args.json else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())
