"""End to end: the lab's hosts are real SSH targets with their own namespaces and roots.

Brings up a lab of its own (own name, subnet and lab folder, so an operator's lab is
never touched), checks the hosts from the inside over real `ssh` with the lab's key and
known_hosts, and checks that `down` leaves nothing behind, also after a crash. The lab
is torn down even when a step fails. Needs root.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from provision import lab as labmod

REPO = Path(__file__).resolve().parents[2]
NAME = f"kst{random.randrange(16 ** 4):04x}"
SUBNET_BASE = f"10.253.{random.randrange(1, 255)}"
SUBNET = f"{SUBNET_BASE}.0/24"

pytestmark = pytest.mark.e2e


def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, mounts)"
    for tool in ("ip", "unshare", "nsenter", "setsid", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    if not labmod._tool("sshd"):
        return "sshd is not installed (openssh-server)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        subprocess.run(["modprobe", "overlay"], capture_output=True, check=False)
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "the kernel has no overlay filesystem"
    return None


if _requirements():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=_requirements())]


class Lab:
    def __init__(self, lab_dir: Path):
        self.dir = lab_dir
        self.env = dict(os.environ, KUBESMITH_LAB_DIR=str(lab_dir), PYTHONPATH=str(REPO))

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "provision.lab", *args, "--name", NAME],
                                cwd=REPO, env=self.env, capture_output=True, text=True,
                                timeout=60)
        if check:
            assert result.returncode == 0, f"lab {args}:\n{result.stdout}\n{result.stderr}"
        return result

    def up(self, *args: str) -> subprocess.CompletedProcess:
        return self.cli("up", "--subnet", SUBNET, *args)

    @property
    def state(self) -> dict:
        state = labmod.load_state(self.dir)
        assert state is not None
        return state

    def ssh(self, host: str, command: str, *options: str) -> str:
        argv = labmod.ssh_command(host, command, lab_dir=self.dir)
        argv[1:1] = options
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{host}: {command}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def kill_inits(self, *hosts: str) -> None:
        for host in self.state["hosts"]:
            if host["name"] in hosts:
                os.kill(host["pid"], signal.SIGKILL)


def _leftovers(lab_dir: Path, state: dict) -> list[str]:
    """Everything of the lab still present on the machine."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [line for line in netns.splitlines() if f"ks-{NAME}-" in line]
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True,
                                      text=True).stdout)
    ours = {state["bridge"]} | {h["veth"] for h in state["hosts"]}
    found += [f"link {link['ifname']}" for link in links if link["ifname"] in ours]
    found += [f"mount {line.split()[4]}" for line in
              Path("/proc/self/mountinfo").read_text().splitlines() if str(lab_dir) in line]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(lab_dir) in cmdline:
                found.append(f"process {proc.name}: {cmdline.replace(chr(0), ' ')}")
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if hierarchy.is_dir():
            found += [f"cgroup {entry}" for entry in hierarchy.glob(f"kubesmith-lab-{NAME}-*")]
    if lab_dir.exists():
        found.append(f"directory {lab_dir}")
    return found


def _wait_clean(lab_dir: Path, state: dict, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := _leftovers(lab_dir, state)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture(scope="module")
def lab():
    # Not under /tmp: a host's /tmp is a fresh tmpfs, so hiding the lab dir would
    # go untested there.
    base = Path(tempfile.mkdtemp(prefix="kubesmith-lab-test-", dir="/var/tmp"))
    env_lab = Lab(base / "lab")
    try:
        yield env_lab
    finally:
        env_lab.cli("down", check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_up_creates_the_hosts(lab):
    result = lab.up("--masters", "1", "--workers", "2")
    for host in ("master-1", "worker-1", "worker-2"):
        assert host in result.stdout
    state = lab.state
    assert state["name"] == NAME and state["subnet"] == SUBNET
    assert state["bridge_address"] == f"{SUBNET_BASE}.1"
    hosts = {h["name"]: h for h in state["hosts"]}
    assert hosts["master-1"]["address"] == f"{SUBNET_BASE}.11"
    assert hosts["worker-2"]["address"] == f"{SUBNET_BASE}.13"
    assert hosts["master-1"]["groups"] == ["masters", "etcd"]
    assert hosts["worker-1"]["groups"] == ["workers"]
    assert all(len(h["veth"]) <= 15 for h in hosts.values())
    assert oct(Path(state["ssh_key"]).stat().st_mode & 0o777) == "0o600"


def test_up_again_changes_nothing(lab):
    before = lab.state
    result = lab.up()
    assert "nothing to do" in result.stdout
    assert lab.state == before


def test_up_with_another_size_is_refused(lab):
    result = lab.cli("up", "--workers", "3", check=False)
    assert result.returncode == 1
    assert "down" in result.stderr and "Traceback" not in result.stderr


def test_each_host_is_its_own_machine(lab):
    script = ("hostname; echo ---; cat /etc/hostname; echo ---; tr '\\0' ' ' </proc/1/cmdline;"
              " echo; echo ---; ip route; echo ---; stat -f -c %T /run /tmp;"
              " echo ---; ls /sys/class/net; echo ---; test -x /usr/sbin/sshd && echo visible;"
              f" echo ---; ls -A {lab.dir} | wc -l; echo ---;"
              f" stat -f -c %T {lab.dir} ~/.kubesmith; echo ---; ls /sys/fs/cgroup | wc -l")
    for host in lab.state["hosts"]:
        parts = [p.strip() for p in lab.ssh(host["name"], script).split("---")]
        name, etc_hostname, init, routes, tmpfs, links, sshd, hidden, hidden_fs, cgroup = parts
        assert name == host["name"] == etc_hostname
        assert "lab_init.py" in init and f"--host {host['name']}" in init
        assert "default" not in routes and SUBNET in routes
        assert tmpfs.split() == ["tmpfs", "tmpfs"]
        assert links.split() == ["eth0", "lo"]
        assert sshd == "visible"
        assert hidden == "0", "the lab dir must be hidden inside hosts"
        assert hidden_fs.split() == ["tmpfs", "tmpfs"]
        assert int(cgroup) > 0
    # A pty for interactive logins (ssh -tt forces one even without a local terminal).
    assert lab.ssh("worker-1", "tty", "-tt").strip().startswith("/dev/pts/")


def test_containerd_data_is_on_the_real_disk(lab):
    # containerd's overlayfs snapshotter cannot work on the overlay root.
    for host in ("master-1", "worker-1"):
        kinds = lab.ssh(host, "stat -f -c %T / /var/lib/containerd /var/lib").split()
        assert kinds[0] == "overlayfs" and kinds[2] == "overlayfs"
        assert kinds[1] != "overlayfs"
    lab.ssh("worker-1", "touch /var/lib/containerd/marker")
    assert (lab.dir / "hosts" / "worker-1" / "containerd" / "marker").exists()
    assert lab.ssh("master-1", "ls -A /var/lib/containerd").strip() == ""


def test_host_cgroups_go_under_the_hosts_cgroup_root(lab):
    # What a kubelet's pods would leave behind in the shared cgroup tree: `down`
    # must remove it (see test_down_removes_everything).
    root = labmod.cgroup_root(NAME, "worker-1")
    assert root == f"/kubesmith-lab-{NAME}-worker-1"
    lab.ssh("worker-1", f"mkdir -p /sys/fs/cgroup/pids{root}/kubepods/pod1 "
                        f"/sys/fs/cgroup/memory{root}/kubepods")
    assert Path(f"/sys/fs/cgroup/pids{root}/kubepods/pod1").is_dir()


def test_host_root_is_its_mount_namespace_root(lab):
    # Not a chroot: a runtime entering a container's mount namespace (setns, as for
    # `kubectl exec`) lands at that namespace's root, which must be the container's.
    roots = lab.ssh("worker-1", "awk '$5 == \"/\" {print $9, $7}' /proc/self/mountinfo")
    assert roots.split("\n")[0].split()[0] == "overlay"
    assert len(roots.strip().splitlines()) == 1, roots
    assert "shared:" in roots


def test_containers_run_in_a_host_and_exec_lands_inside_them(lab):
    """containerd and runc work in a host (snapshots on the real disk, cgroups under
    the host's cgroup root), and an exec joins the container's root, not the host's."""
    from provision import images

    if not (shutil.which("containerd") and shutil.which("ctr") and shutil.which("runc")):
        pytest.skip("containerd, ctr and runc are not installed")
    tarball = images.build_image(images.BUSYBOX_IMAGE, lab.dir.parent / "images")
    copy = subprocess.run(labmod.ssh_command("worker-1", "cat > /tmp/busybox.tar",
                                             lab_dir=lab.dir),
                          input=tarball.read_bytes(), capture_output=True, timeout=30)
    assert copy.returncode == 0, copy.stderr
    cgroup = f"{labmod.cgroup_root(NAME, 'worker-1')}/ctr-test"
    ctr = "ctr --namespace lab-test"
    lab.ssh("worker-1", "printf 'version = 2\\n' > /tmp/containerd.toml; "
                        "(setsid containerd --config /tmp/containerd.toml "
                        ">/tmp/containerd.log 2>&1 &); "
                        "for i in $(seq 50); do ctr version >/dev/null 2>&1 && exit 0; "
                        "sleep 0.2; done; cat /tmp/containerd.log; exit 1")
    lab.ssh("worker-1", f"{ctr} images import /tmp/busybox.tar >/dev/null && "
                        f"{ctr} run --detach --cgroup {cgroup} {images.BUSYBOX_IMAGE} t1 "
                        "sleep 600")
    inside = lab.ssh("worker-1", f"{ctr} tasks exec --exec-id e1 t1 cat /etc/passwd")
    assert inside.splitlines()[0].startswith("root:x:0:0:")
    assert len(inside.splitlines()) == 2, "the image's passwd, not the host's"
    assert Path(f"/sys/fs/cgroup/pids{cgroup}").is_dir()
    # Left running on purpose: `down` must remove the container, its shim and cgroups
    # (test_down_removes_everything).


def test_writes_stay_private_to_the_host(lab):
    marker = f"/root/{NAME}-marker"
    assert not Path(marker).exists()
    lab.ssh("master-1", f"echo private > {marker}")
    assert lab.ssh("master-1", f"cat {marker}").strip() == "private"
    assert lab.ssh("worker-1", f"test -e {marker} && echo yes || echo no").strip() == "no"
    assert not Path(marker).exists()


def test_hosts_reach_each_other_and_nothing_else(lab):
    worker = f"{SUBNET_BASE}.13"
    banner = lab.ssh("master-1", f"timeout 5 bash -c 'exec 3<>/dev/tcp/{worker}/22; head -c 4 <&3'")
    assert banner == "SSH-"
    by_name = lab.ssh("worker-1", "timeout 5 bash -c 'exec 3<>/dev/tcp/worker-2/22; head -c 4 <&3'")
    assert by_name == "SSH-"
    outside = lab.ssh("master-1", "ip route get 192.0.2.1 2>&1 || true")
    assert "unreachable" in outside


def test_status_lists_the_hosts(lab):
    result = lab.cli("status")
    for host in lab.state["hosts"]:
        line = next(l for l in result.stdout.splitlines() if l.startswith(host["name"] + " "))
        assert host["address"] in line and "alive" in line and "reachable" in line


def test_dead_host_is_restarted_by_up(lab):
    before = {h["name"]: h for h in lab.state["hosts"]}
    lab.kill_inits("worker-1")
    result = lab.up()
    assert "worker-1: started" in result.stdout
    after = {h["name"]: h for h in lab.state["hosts"]}
    assert after["worker-1"]["pid"] != before["worker-1"]["pid"]
    assert after["master-1"]["pid"] == before["master-1"]["pid"]
    assert {n: h["address"] for n, h in after.items()} == {
        n: h["address"] for n, h in before.items()}
    # Host keys are stable: strict checking still passes after the restart.
    assert lab.ssh("worker-1", "hostname").strip() == "worker-1"


def test_down_removes_everything(lab):
    state = lab.state
    assert "is down" in lab.cli("down").stdout
    assert _wait_clean(lab.dir, state) == []
    assert "nothing to do" in lab.cli("down").stdout


def test_down_cleans_up_after_a_crash(lab):
    lab.up("--masters", "1", "--workers", "1")
    state = lab.state
    # Simulate a crash: every host's init dies and the state is left behind.
    lab.kill_inits("master-1", "worker-1")
    assert lab.cli("status", check=False).returncode == 1
    lab.cli("down")
    assert _wait_clean(lab.dir, state) == []
    lab.cli("down")
