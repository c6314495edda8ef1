"""Raw etcd write rate through EtcdStore: the baseline the API server benchmark compares to.

    .venv/bin/python bench/etcd_raw.py                 # starts a throwaway local etcd (TLS)
    .venv/bin/python bench/etcd_raw.py --endpoints https://127.0.0.1:2379 \\
        --ca ca.crt --cert client.crt --key client.key

N concurrent writers share one EtcdStore (one channel) and write distinct keys until
--count writes are done or --max-seconds have passed, whichever comes first. "put" is
an unconditional put; "create" is the create-if-absent transaction the API server uses.
Keys written under the benchmark's prefix are deleted afterwards.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kubesmith.store import EtcdStore  # noqa: E402
from kubesmith.store.testing import LocalEtcd  # noqa: E402

OPS = ("put", "create")


async def run_op(store: EtcdStore, op: str, prefix: bytes, writers: int, count: int,
                 max_seconds: float, value: bytes) -> dict:
    write = store.put if op == "put" else store.create
    latencies: list[float] = []
    next_index = 0
    started = time.perf_counter()
    deadline = started + max_seconds

    async def writer() -> None:
        nonlocal next_index
        clock = time.perf_counter
        while next_index < count and clock() < deadline:
            key = b"%s%s/%08d" % (prefix, op.encode(), next_index)
            next_index += 1
            t0 = clock()
            await write(key, value)
            latencies.append(clock() - t0)

    await asyncio.gather(*(writer() for _ in range(writers)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {"op": op, "writers": writers, "value_bytes": len(value), "ops": len(latencies),
            "seconds": round(elapsed, 3), "ops_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(pct(0.50), 2), "p99_ms": round(pct(0.99), 2),
            "max_ms": round(latencies[-1] * 1000, 2)}


async def bench(args, endpoints: str, ca: str | None, cert: str | None, key: str | None) -> list:
    prefix = f"/kubesmith-bench/{uuid.uuid4().hex[:8]}/".encode()
    value = os.urandom(args.value_size // 2).hex().encode().ljust(args.value_size, b"x")
    results = []
    async with EtcdStore(endpoints, ca, cert, key) as store:
        status = await store.connect()
        if not args.json:
            print(f"etcd {status.version} at {endpoints}; {args.writers} writers, "
                  f"{args.value_size}-byte values, at most {args.count} writes "
                  f"or {args.max_seconds:g} s per run")
        try:
            for op in args.ops:
                # A short warm-up, so connection set-up is not in the figures.
                await run_op(store, op, prefix + b"warmup/", args.writers,
                             args.writers * 4, 5, value)
                result = await run_op(store, op, prefix, args.writers, args.count,
                                      args.max_seconds, value)
                results.append(result)
                if not args.json:
                    print(f"{op:7} {result['ops']:6d} writes in {result['seconds']:6.2f} s "
                          f"= {result['ops_per_s']:8.1f}/s   p50 {result['p50_ms']:6.2f} ms   "
                          f"p99 {result['p99_ms']:6.2f} ms   max {result['max_ms']:6.2f} ms")
        finally:
            await store.delete_range(prefix)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", help="etcd URLs, comma-separated (default: start one)")
    parser.add_argument("--ca", help="CA certificate file of the etcd members")
    parser.add_argument("--cert", help="client certificate file")
    parser.add_argument("--key", help="client key file")
    parser.add_argument("--data-dir", help="data folder of the local etcd (default: temporary)")
    parser.add_argument("--writers", type=int, default=32, help="concurrent writers (32)")
    parser.add_argument("--count", type=int, default=5000, help="writes per run at most (5000)")
    parser.add_argument("--max-seconds", type=float, default=20,
                        help="seconds per run at most (20)")
    parser.add_argument("--value-size", type=int, default=2048, help="bytes per value (2048)")
    parser.add_argument("--ops", default="put,create", help="runs to make: put,create")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    args.ops = [op for op in args.ops.split(",") if op]
    if not args.ops or set(args.ops) - set(OPS):
        parser.error(f"--ops takes {', '.join(OPS)}")

    if args.endpoints:
        results = asyncio.run(bench(args, args.endpoints, args.ca, args.cert, args.key))
    else:
        with LocalEtcd(data_dir=args.data_dir) as etcd:
            pki = etcd.pki
            results = asyncio.run(bench(args, etcd.endpoint, pki.ca_file, pki.client_cert,
                                        pki.client_key))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
