"""Benchmark: lab up, first deploy, no-op re-deploys, on a lab of its own.

    sudo .venv/bin/python bench/deploy.py [--masters 1] [--workers 2] [--runs 3]

Brings up a lab named `benchdeploy` on 10.241.9.0/24 with its own lab folder and its
own cluster state folder (both in a fresh temporary folder, so an operator's lab and
cluster state are never touched), then measures, with `pyinfra --json` as the README
runs it:

- `lab up`: seconds until every host answers SSH;
- the first deploy: seconds, operations, and how many changed something;
- `--runs` no-op re-deploys: seconds each (min / median / max), operations, changes.

It runs from a snapshot of the checkout copied into the temporary folder at start, so
edits to the checkout while it runs (which would rebuild the component wheel and make a
re-deploy change things) do not skew the figures, and its wheel builds never share a
build folder with another run's.

The lab is torn down and the temporary folder removed in every case: on success, on a
failed step, on Ctrl-C and on SIGTERM. Every step has a timeout. Needs root (the lab
makes network namespaces and mounts).

Figures depend on the machine; they are printed, never compared against anything.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
LAB_NAME = "benchdeploy"
SUBNET = "10.241.9.0/24"

LAB_UP_TIMEOUT = 300
LAB_DOWN_TIMEOUT = 120
DEPLOY_TIMEOUT = 900
CMD_TIMEOUT = 30
# Not part of the snapshot: version control, the virtualenv, caches and build output.
SNAPSHOT_IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache",
                                         ".hypothesis", "build", "*.egg-info", ".vagrant")


class BenchError(Exception):
    pass


@dataclass
class Run:
    label: str
    seconds: float
    operations: int       # operations in the run (each may apply to several hosts)
    host_operations: int  # operation x host pairs executed
    changed_operations: int  # operations that changed something on at least one host
    changed: int          # operation x host pairs that changed something
    failed_hosts: list[str]
    changed_names: list[str]  # names of the operations that changed something


def summarize(label: str, seconds: float, payload: dict) -> Run:
    """Figures from `pyinfra --json` output (its `results` part)."""
    results = payload.get("results") or {}
    operations = results.get("operations", [])
    totals = results.get("totals", {})
    return Run(
        label=label,
        seconds=seconds,
        operations=len(operations),
        host_operations=totals.get("hosts", sum(op.get("hosts", 0) for op in operations)),
        changed_operations=sum(1 for op in operations if op.get("success")),
        changed=totals.get("success", sum(len(op.get("success", [])) for op in operations)),
        failed_hosts=list(results.get("failed_hosts", [])),
        changed_names=[op.get("name", "?") for op in operations if op.get("success")],
    )


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


class Bench:
    def __init__(self, masters: int, workers: int):
        self.masters = masters
        self.workers = workers
        self.base = Path(tempfile.mkdtemp(prefix="kubesmith-bench-"))
        self.repo = self.base / "checkout"
        self.lab_dir = self.base / "lab"
        self.state_root = self.base / "state"
        self.env = dict(os.environ, KUBESMITH_LAB_DIR=str(self.lab_dir),
                        KUBESMITH_STATE_DIR=str(self.state_root), PYTHONPATH=str(self.repo))
        self.created = False

    def snapshot(self) -> None:
        try:
            shutil.copytree(REPO, self.repo, symlinks=True, ignore=SNAPSHOT_IGNORE)
        except (OSError, shutil.Error) as exc:
            raise BenchError(f"could not copy the checkout to {self.repo}: {exc}") from exc

    # -- steps

    def _lab(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "-m", "provision.lab", *args, "--name", LAB_NAME],
                              cwd=self.repo, env=self.env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def lab_up(self) -> float:
        self.created = True  # from here on, anything may exist: always tear down
        start = time.monotonic()
        result = self._lab("up", "--masters", str(self.masters), "--workers", str(self.workers),
                           "--subnet", SUBNET, timeout=LAB_UP_TIMEOUT)
        seconds = time.monotonic() - start
        if result.returncode != 0:
            raise BenchError(f"lab up failed (exit {result.returncode}):\n"
                             + _tail(result.stdout + result.stderr))
        return seconds

    def deploy(self, label: str) -> Run:
        argv = [PYINFRA, "-y", "--json", "inventories/lab.py", "deploy.py"]
        start = time.monotonic()
        result = subprocess.run(argv, cwd=self.repo, env=self.env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=DEPLOY_TIMEOUT)
        seconds = time.monotonic() - start
        if result.returncode != 0:
            raise BenchError(f"{label} failed (exit {result.returncode}):\n"
                             + _tail(result.stderr) + "\n" + _tail(result.stdout, 10))
        if "Exiting upon user request" in result.stdout + result.stderr:
            raise KeyboardInterrupt(f"{label} interrupted")  # pyinfra got the Ctrl-C too
        try:
            payload = json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise BenchError(f"{label}: pyinfra printed no JSON ({exc}):\n"
                             + _tail(result.stdout, 10)) from exc
        run = summarize(label, seconds, payload)
        if run.failed_hosts:
            raise BenchError(f"{label}: failed hosts {', '.join(run.failed_hosts)}")
        return run

    # -- teardown

    def teardown(self) -> list[str]:
        """Take the lab down and remove the temporary folder; returns what is left behind."""
        problems = []
        if self.created:
            try:
                result = self._lab("down", timeout=LAB_DOWN_TIMEOUT)
                if result.returncode != 0:
                    problems.append("lab down failed:\n" + _tail(result.stdout + result.stderr))
            except subprocess.TimeoutExpired:
                problems.append(f"lab down timed out after {LAB_DOWN_TIMEOUT}s")
        problems += leftovers(self.base)
        if not any(p.startswith("mount") for p in problems):
            shutil.rmtree(self.base, ignore_errors=True)  # holds the cluster CA keys
        if self.base.exists():
            problems.append(f"{self.base} could not be removed")
        return problems


# --------------------------------------------------------------------------
# What a lab named LAB_NAME leaves behind (only this name is ever looked at)


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=CMD_TIMEOUT)
    return result.stdout if result.returncode == 0 else ""


def lab_namespaces() -> list[str]:
    pattern = re.compile(rf"ks-{LAB_NAME}-(master|worker)-\d+")
    return [line.split()[0] for line in _ip("netns", "list").splitlines()
            if line.strip() and pattern.fullmatch(line.split()[0])]


def lab_links() -> list[str]:
    try:
        links = json.loads(_ip("-j", "-d", "link", "show") or "[]")
    except json.JSONDecodeError:
        return []
    tag = f"kubesmith-lab:{LAB_NAME}"
    return [link["ifname"] for link in links
            if link["ifname"] == f"ks-{LAB_NAME}"
            or link.get("ifalias", "") == tag or link.get("ifalias", "").startswith(tag + ":")]


def lab_processes(base: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if (any(a.endswith("lab_init.py") for a in argv)
                and any(a.startswith(str(base)) for a in argv)):
            pids.append(int(entry.name))
    return pids


def mounts_under(base: Path) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == str(base) or point.startswith(str(base) + "/"):
            found.append(point)
    return found


def leftovers(base: Path) -> list[str]:
    problems = []
    if namespaces := lab_namespaces():
        problems.append(f"netns left: {', '.join(namespaces)}")
    if links := lab_links():
        problems.append(f"links left: {', '.join(links)}")
    if pids := lab_processes(base):
        problems.append(f"lab_init processes left: {pids}")
    if points := mounts_under(base):
        problems.append(f"mounts left: {', '.join(points)}")
    return problems


# --------------------------------------------------------------------------


def _raise_interrupt(signo, frame):
    raise KeyboardInterrupt(f"signal {signo}")


def _row(run: Run) -> str:
    return (f"  {run.label:<20} {run.seconds:7.1f} s   operations {run.operations:4d}"
            f"   on hosts {run.host_operations:4d}   changed {run.changed_operations:3d}"
            f" ops / {run.changed:3d} on hosts")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/deploy.py",
        description=f"Time lab up, a first deploy and no-op re-deploys on a lab of its own "
                    f"({LAB_NAME!r}, {SUBNET}). Needs root.")
    parser.add_argument("--masters", type=int, default=1, help="masters (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="workers (default 2)")
    parser.add_argument("--runs", type=int, default=1,
                        help="no-op re-deploys to time (default 1; min/median/max shown)")
    args = parser.parse_args(argv)
    if args.masters < 1 or args.workers < 0 or args.runs < 1:
        parser.error("needs --masters >= 1, --workers >= 0, --runs >= 1")
    if os.geteuid() != 0:
        print("bench/deploy.py: needs root (the lab makes namespaces and mounts)", file=sys.stderr)
        return 2
    if not Path(PYINFRA).exists():
        print(f"bench/deploy.py: {PYINFRA} not found; run it with the venv's python "
              "(./setup.sh deps makes .venv)", file=sys.stderr)
        return 2
    if lab_namespaces() or lab_links():
        print(f"bench/deploy.py: a lab named {LAB_NAME!r} already exists (another benchmark "
              "running, or a crashed one); not touching it", file=sys.stderr)
        return 2

    # Ctrl-C and SIGTERM end the benchmark through the teardown below, even when started
    # from a shell that had SIGINT ignored (as it does for background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    bench = Bench(args.masters, args.workers)
    print(f"benchmark: lab {LAB_NAME!r} on {SUBNET}, {args.masters} master(s), "
          f"{args.workers} worker(s), {args.runs} no-op re-deploy(s); folder {bench.base}",
          flush=True)
    status = 0
    runs: list[Run] = []
    try:
        bench.snapshot()
        up_seconds = bench.lab_up()
        print(f"  {'lab up':<20} {up_seconds:7.1f} s", flush=True)
        first = bench.deploy("first deploy")
        runs.append(first)
        print(_row(first), flush=True)
        for index in range(1, args.runs + 1):
            again = bench.deploy(f"no-op re-deploy {index}")
            runs.append(again)
            print(_row(again), flush=True)
            if again.changed:
                # A re-deploy should change nothing: say what did.
                print(f"  warning: {again.label} changed: "
                      + "; ".join(again.changed_names[:5]), flush=True)
        noop = [run.seconds for run in runs[1:]]
        print(f"  no-op re-deploy      min {min(noop):.1f} s"
              f"   median {statistics.median(noop):.1f} s   max {max(noop):.1f} s"
              f"   ({len(noop)} run(s))")
    except BenchError as exc:
        print(f"bench/deploy.py: {exc}", file=sys.stderr)
        status = 1
    except subprocess.TimeoutExpired as exc:
        print(f"bench/deploy.py: timed out after {exc.timeout}s: {' '.join(map(str, exc.cmd))}",
              file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("\nbench/deploy.py: interrupted; tearing the lab down", file=sys.stderr)
        status = 130
    finally:
        # A second Ctrl-C must not cut the teardown short (every step has a timeout).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        problems = bench.teardown()
        if problems:
            print("bench/deploy.py: teardown left things behind:\n  " + "\n  ".join(problems),
                  file=sys.stderr)
            status = status or 1
        else:
            print(f"  teardown: lab {LAB_NAME!r} down, nothing left behind", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
