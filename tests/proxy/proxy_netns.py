"""Throwaway network namespaces for the real tests of kube-proxy and the pod-network
agent: made with `ip netns add ks-test-<random>`, always deleted (with everything in
them: interfaces, routes, iptables rules, conntrack entries) when the block ends."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest


def require_root_networking() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("ip", "iptables", "iptables-restore", "iptables-save"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


def in_ns(name: str, *argv: str, check: bool = True, timeout: float = 30
          ) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", name, *argv, check=check, timeout=timeout)


@contextlib.contextmanager
def netns(count: int = 1):
    """`count` fresh namespaces (names), each with its loopback up."""
    names = [f"ks-test-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    made = []
    try:
        for name in names:
            sh("ip", "netns", "add", name)
            made.append(name)
            in_ns(name, "ip", "link", "set", "lo", "up")
        yield names if count > 1 else names[0]
    finally:
        for name in made:
            sh("ip", "netns", "del", name, check=False)


# A client for HTTP tests: GET <url> <count> times (new connection each), print bodies.
HTTP_CLIENT = """
import sys, urllib.request
seen = []
for _ in range(int(sys.argv[2])):
    with urllib.request.urlopen(sys.argv[1], timeout=3) as response:
        seen.append(response.read().decode().strip())
print(" ".join(seen))
"""


def wait_listening(ns: str, ip: str, port: int, timeout: float = 10.0) -> None:
    probe = (f"import socket; socket.create_connection(('{ip}', {port}), timeout=0.5)"
             ".close()")
    deadline = time.monotonic() + timeout
    while in_ns(ns, sys.executable, "-c", probe, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"{ip}:{port} not listening after {timeout}s")
        time.sleep(0.1)
