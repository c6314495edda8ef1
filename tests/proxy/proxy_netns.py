"""Throwaway network namespaces for the real tests of kube-proxy and the pod-network
agent: made with `ip netns add ks-test-<random>`, always deleted (with everything in
them: interfaces, routes, iptables rules, conntrack entries) when the block ends."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
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
