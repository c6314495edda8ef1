"""Shared by the deploy end-to-end tests: a lab of a test's own, driven like an operator would.

Each test module gives its lab its own name, subnet, lab folder and cluster state folder,
so an operator's lab is never touched, and tears it down even when a step fails.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))

# The 1-master 2-worker lab that conftest.py shares between the deploy and kubectl tests.
DEPLOY_LAB_NAME = "e2edeploy"
DEPLOY_LAB_SUBNET = "10.241.7.0/24"
DEPLOY_LAB_MASTER_IP = "10.241.7.11"


def missing_requirement() -> str | None:
    """Why deploy tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, mounts)"
    for tool in ("ip", "unshare", "/usr/sbin/sshd", "/usr/bin/etcd", "/usr/bin/etcdctl",
                 "/usr/bin/supervisord"):
        if not shutil.which(tool):
            return f"{tool} is not installed (./setup.sh deps installs it)"
    return None


class DeployLab:
    def __init__(self, name: str, base: Path):
        self.name = name
        self.lab_dir = base / "lab"
        self.state_root = base / "state"
        self.env = dict(os.environ, KUBESMITH_LAB_DIR=str(self.lab_dir),
                        KUBESMITH_STATE_DIR=str(self.state_root), PYTHONPATH=str(REPO))
        self.timings: dict[str, float] = {}
        self.started = time.monotonic()  # reset when `up` starts: figures count from it

    @property
    def state_dir(self) -> Path:
        return self.state_root / "kubesmith"

    def lab(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "provision.lab", *args, "--name", self.name],
                              cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=300, check=check)

    def deploy(self, *extra: str, timed: str | None = None) -> subprocess.CompletedProcess:
        start = time.monotonic()
        # `-y` would skip the change listing that `--dry` exists to show.
        confirm = [] if "--dry" in extra else ["-y"]
        result = subprocess.run([PYINFRA, *confirm, *extra, "inventories/lab.py", "deploy.py"],
                                cwd=REPO, env=self.env, capture_output=True, text=True,
                                timeout=900)
        if timed:
            self.timings[timed] = time.monotonic() - start
        return result

    def deploy_json(self, *extra: str, timed: str | None = None) -> dict:
        result = self.deploy("--json", *extra, timed=timed)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        return json.loads(result.stdout)

    def ssh(self, host: str, command: str, check: bool = True,
            input: bytes | None = None) -> subprocess.CompletedProcess:
        from provision import lab
        argv = lab.ssh_command(host, command, lab_dir=self.lab_dir)
        result = subprocess.run(argv, capture_output=True, input=input, timeout=120)
        result.stdout = result.stdout.decode(errors="replace")
        result.stderr = result.stderr.decode(errors="replace")
        if check:
            assert result.returncode == 0, f"{host}: {command}\n{result.stdout}\n{result.stderr}"
        return result

    def copy_to(self, host: str, local: Path, remote: str) -> None:
        self.ssh(host, f"mkdir -p {os.path.dirname(remote)} && cat > {remote}",
                 input=local.read_bytes())


@contextmanager
def running_lab(name: str, base: Path, subnet: str, masters: int, workers: int):
    """A lab that exists for the duration of the block; timings printed at the end."""
    lab = DeployLab(name, base)
    try:
        start = lab.started = time.monotonic()
        lab.lab("up", "--masters", str(masters), "--workers", str(workers), "--subnet", subnet)
        lab.timings["lab up"] = time.monotonic() - start
        yield lab
    finally:
        lab.lab("down", check=False)
        print(f"\n{name} timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in lab.timings.items()))


def changed(results: dict) -> list[str]:
    """Operations that changed something, as 'name on host' lines."""
    return [f"{op['name']} on {', '.join(op['success'])}"
            for op in results["results"]["operations"] if op["success"]]
