"""The lab: throw-away "machines" on one Linux box, reachable over real SSH.

Each lab host is a set of namespaces rather than a VM:

* its own network namespace, whose ``eth0`` is one end of a veth pair plugged
  into the lab's bridge on the machine (the machine side of the bridge holds the
  subnet's ``.1``); hosts have no default route, and the lab sets up no NAT or
  forwarding, so a host reaches the other hosts and the bridge address only;
* its own mount, UTS, IPC and PID namespaces, with a copy-on-write root: an
  overlay whose lower layer is the machine's ``/`` (everything installed on the
  machine is there) and whose upper layer is private to the host;
* ``provision/lab_init.py`` as PID 1, which builds that root and runs sshd;
* ``/var/lib/containerd`` bound from ``hosts/<host>/containerd`` in the lab dir,
  on the machine's real disk: containerd's overlayfs snapshotter cannot stack
  its layers on the overlay root (``/var/lib/kubelet`` stays on the overlay);
* the machine's cgroup tree, shared by every host: the node role configures a
  lab host's kubelet with the cgroup root ``/kubesmith-lab-<lab name>-<host>``
  (``cgroup_root()``, handed to the deploy as the inventory's
  ``kubelet_cgroup_root`` host data), so every cgroup its pods make sits under
  that folder in each controller's hierarchy, and ``down`` removes those folders.

Usage::

    python -m provision.lab up [--masters M] [--workers W] [--etcd E] [--subnet CIDR] [--name NAME]
    python -m provision.lab status [--name NAME]
    python -m provision.lab down [--name NAME]
    python -m provision.lab ssh HOST [COMMAND...] [--name NAME]

Everything about a lab lives in its lab dir (``$KUBESMITH_LAB_DIR``, default
``/var/lib/kubesmith-lab/<name>``): ``state.json``, the SSH key pair used to
log in as root, ``known_hosts``, the hosts' SSH host keys, the hosts' overlay
directories (overlay upper dirs and containerd's data) and logs.
``inventories/lab.py`` turns the state into a pyinfra inventory.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

PROG = "kubesmith-lab"
DEFAULT_NAME = "lab"
DEFAULT_SUBNET = "10.240.0.0/24"
DEFAULT_BASE = Path("/var/lib/kubesmith-lab")
LAB_DIR_ENV = "KUBESMITH_LAB_DIR"
STATE_DIR_ENV = "KUBESMITH_STATE_DIR"  # the operator's cluster state (CA keys)
STATE_FILE = "state.json"
MARKER_FILE = ".kubesmith-lab"  # only directories carrying it are ever deleted
STATE_VERSION = 1
FIRST_HOST_OFFSET = 11  # hosts get .11, .12, ...; the bridge gets .1
SSH_PORT = 22
NETNS_DIR = Path("/var/run/netns")  # where `ip netns` keeps its namespaces
INIT_SCRIPT = Path(__file__).resolve().with_name("lab_init.py")
IFNAMSIZ = 15  # longest interface name Linux accepts
CGROUP_MOUNT = Path("/sys/fs/cgroup")  # every controller's hierarchy is a folder in it
# A host folder bound over the host's own path: (folder in hosts/<host>/, path in the host).
HOST_BINDS = (("containerd", "/var/lib/containerd"),)

MASTERS, WORKERS, ETCD = "masters", "workers", "etcd"

TOOLS = {  # command -> Debian package providing it
    "ip": "iproute2",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "setsid": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
}
NAMESPACES = ("net", "mnt", "uts", "ipc", "pid")

CMD_TIMEOUT = 30
START_TIMEOUT = 15  # seconds for a host's init to come up
SSH_READY_TIMEOUT = 30  # seconds for all hosts' sshd to answer
STOP_GRACE = 5  # seconds between SIGTERM and SIGKILL on `down`

Output = Callable[[str], None]


class LabError(Exception):
    """A failure to report to the operator (without a traceback)."""

    exit_code = 1


class CorruptStateError(LabError):
    """state.json exists but cannot be read."""


class UsageError(LabError):
    """A bad option value (name, subnet, sizes)."""

    exit_code = 2


class PreflightError(LabError):
    """The machine cannot host a lab; nothing has been touched."""

    exit_code = 2


# --------------------------------------------------------------------------
# Public helpers


def lab_dir(name: str = DEFAULT_NAME) -> Path:
    """The directory of lab ``name``: ``$KUBESMITH_LAB_DIR`` when set."""
    return _lab_dir(name)


def _lab_dir(name: str) -> Path:
    override = os.environ.get(LAB_DIR_ENV)
    if override:
        return Path(override).absolute()
    return DEFAULT_BASE / name


def load_state(lab_dir: str | os.PathLike | None = None) -> dict | None:
    """The lab's state (see ``state.json``), or None when no lab exists there.

    ``lab_dir`` defaults to that of the default lab (``$KUBESMITH_LAB_DIR`` when set).
    """
    directory = Path(lab_dir) if lab_dir is not None else _lab_dir(DEFAULT_NAME)
    try:
        text = (directory / STATE_FILE).read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptStateError(
            f"{directory / STATE_FILE} is corrupt ({exc}); run `{PROG} down`") from exc


def ssh_command(host_name: str, *cmd: str, lab_dir: str | os.PathLike | None = None) -> list[str]:
    """argv running ``cmd`` (interpreted by the host's shell, as with ssh) as root on a lab host.

    Uses only the lab's key and known_hosts, with strict host key checking.
    """
    state = load_state(lab_dir)
    if state is None:
        raise LabError(f"no lab is up; run `{PROG} up`")
    host = _find_host(state, host_name)
    return [
        "ssh",
        "-F", "none",
        "-i", state["ssh_key"],
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={state['known_hosts']}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=10",
        "-o", "LogLevel=ERROR",
        f"root@{host['address']}",
        *(["--", *cmd] if cmd else []),
    ]


def cgroup_root(name: str, host: str) -> str:
    """The cgroup folder a lab host's kubelet puts its pods under (its cgroupRoot).

    One per host and lab, at the top of every controller's hierarchy of the machine's
    cgroup tree (which all hosts share), so hosts never mix their pods' cgroups and
    `down` knows exactly what to remove.
    """
    return f"/kubesmith-lab-{name}-{host}"


def default_etcd(masters: int) -> int:
    """etcd wants an odd member count: every master, less one if that is even."""
    return masters if masters % 2 else masters - 1


# --------------------------------------------------------------------------
# Running commands


def _run(argv: list[str], *, timeout: float = CMD_TIMEOUT, check: bool = True,
         ) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {argv[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"command timed out after {timeout}s: {shlex.join(argv)}") from exc
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise LabError(f"command failed (exit {result.returncode}): {shlex.join(argv)}\n{detail}")
    return result


def _tool(name: str) -> str | None:
    # sshd & co live in sbin, which is not always on PATH.
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(name, path=path)


def _need(name: str) -> str:
    found = _tool(name)
    if found is None:
        raise PreflightError(f"'{name}' not found (Debian package {TOOLS.get(name, name)})")
    return found


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = [_need("ip")]
    if netns:
        argv += ["-n", netns]
    return _run(argv + list(args), check=check)


def _ip_json(*args: str, netns: str | None = None) -> list[dict] | None:
    """`ip -j ...` output, or None when the object does not exist."""
    result = _ip("-j", *args, netns=netns, check=False)
    if result.returncode != 0:
        if "does not exist" in result.stderr or "Cannot find device" in result.stderr:
            return None
        argv = ["ip"] + (["-n", netns] if netns else []) + ["-j", *args]
        raise LabError(f"command failed: {shlex.join(argv)}\n{result.stderr.strip()}")
    return json.loads(result.stdout or "[]")


def _link(name: str, netns: str | None = None) -> dict | None:
    links = _ip_json("-d", "link", "show", "dev", name, netns=netns)
    return links[0] if links else None


def _links() -> list[dict]:
    return _ip_json("-d", "link", "show") or []


def _ipv4_addresses(device: str, netns: str | None = None) -> list[str]:
    links = _ip_json("-4", "addr", "show", "dev", device, netns=netns) or []
    return [f"{a['local']}/{a['prefixlen']}" for link in links for a in link.get("addr_info", [])]


def _netns_names() -> set[str]:
    # Lines look like "ks-lab-master-1 (id: 0)".
    output = _ip("netns", "list").stdout
    return {line.split()[0] for line in output.splitlines() if line.strip()}


# --------------------------------------------------------------------------
# Naming and planning


def _check_name(name: str) -> None:
    # The bridge is called ks-<name> and must fit IFNAMSIZ.
    limit = IFNAMSIZ - len("ks-")
    if not re.fullmatch(rf"[a-z0-9][a-z0-9-]{{0,{limit - 1}}}", name):
        raise UsageError(
            f"invalid lab name {name!r}: use up to {limit} lowercase letters, digits or '-'",
        )


def _bridge_name(name: str) -> str:
    return f"ks-{name}"


def _netns_name(name: str, host: str) -> str:
    return f"ks-{name}-{host}"


def _veth_name(name: str, host: str) -> str:
    # Host-side veth names must be unique on the machine and fit IFNAMSIZ.
    return "ksv" + hashlib.sha1(f"{name}/{host}".encode()).hexdigest()[:10]


def _alias(name: str, host: str | None = None) -> str:
    """ifalias tagging the lab's links, so `down` finds them even without state."""
    return f"kubesmith-lab:{name}" + (f":{host}" if host else "")


def _parse_subnet(subnet: str, host_count: int) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(subnet, strict=True)
    except ValueError as exc:
        raise UsageError(f"invalid subnet {subnet!r}: {exc}") from exc
    if not isinstance(network, ipaddress.IPv4Network):
        raise UsageError(f"subnet {subnet} is not IPv4; the lab needs an IPv4 subnet")
    last = int(network.network_address) + FIRST_HOST_OFFSET + host_count - 1
    if last >= int(network.broadcast_address):
        raise UsageError(
            f"subnet {subnet} has no room for {host_count} hosts "
            f"(they take .{FIRST_HOST_OFFSET} onwards); use a larger one, e.g. a /24"
        )
    return network


def _plan_hosts(name: str, directory: Path, network: ipaddress.IPv4Network,
                masters: int, workers: int, etcd: int) -> list[dict]:
    names = [f"master-{i}" for i in range(1, masters + 1)]
    names += [f"worker-{i}" for i in range(1, workers + 1)]
    hosts = []
    for index, host in enumerate(names):
        if host.startswith("master-"):
            groups = [MASTERS] + ([ETCD] if index < etcd else [])
        else:
            groups = [WORKERS]
        hosts.append({
            "name": host,
            "address": str(network.network_address + FIRST_HOST_OFFSET + index),
            "groups": groups,
            "netns": _netns_name(name, host),
            "veth": _veth_name(name, host),
            "root": str(directory / "hosts" / host),
            "pid": None,
        })
    return hosts


def _find_host(state: dict, host_name: str) -> dict:
    for host in state["hosts"]:
        if host["name"] == host_name:
            return host
    names = ", ".join(h["name"] for h in state["hosts"])
    raise LabError(f"no lab host named {host_name!r} (hosts: {names})")


def _describe_size(masters: int, workers: int, etcd: int) -> str:
    return f"{masters} master(s), {workers} worker(s), {etcd} etcd member(s)"


# --------------------------------------------------------------------------
# State and files


def _write_file(path: Path, content: str, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _save_state(state: dict) -> None:
    _write_file(Path(state["lab_dir"]) / STATE_FILE, json.dumps(state, indent=2) + "\n", 0o600)


def _ssh_keygen(path: Path, comment: str) -> None:
    if path.exists() and path.with_name(path.name + ".pub").exists():
        return
    path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _run([_need("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _host_key(state: dict, host: dict) -> Path:
    return Path(state["lab_dir"]) / "hostkeys" / host["name"] / "ssh_host_ed25519_key"


def _ensure_keys(state: dict) -> None:
    """The operator's login key, one stable host key per host, and known_hosts."""
    _ssh_keygen(Path(state["ssh_key"]), f"kubesmith-lab-{state['name']}")
    lines = []
    for host in state["hosts"]:
        key = _host_key(state, host)
        _ssh_keygen(key, f"root@{host['name']}")
        key_type, key_data = key.with_name(key.name + ".pub").read_text().split()[:2]
        lines.append(f"{host['address']} {key_type} {key_data}\n")
    _write_file(Path(state["known_hosts"]), "".join(lines), 0o644)


def _home_dirs() -> set[Path]:
    homes = {Path(pwd.getpwuid(os.getuid()).pw_dir)}
    if os.environ.get("HOME"):
        homes.add(Path(os.environ["HOME"]))
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        try:
            homes.add(Path(pwd.getpwnam(sudo_user).pw_dir))
        except KeyError:
            pass
    return homes


def _hidden_paths(directory: Path) -> list[str]:
    """Machine paths a host must not see through its overlay root.

    The lab dir (other hosts' upper dirs, the lab's keys) and the operator's
    cluster state (CA keys). /tmp and /run are fresh tmpfs in a host anyway.
    """
    paths = {directory}
    if directory.is_relative_to(DEFAULT_BASE):
        paths.add(DEFAULT_BASE)  # every other lab as well
    paths |= {home / ".kubesmith" for home in _home_dirs()}
    if os.environ.get(STATE_DIR_ENV):
        paths.add(Path(os.environ[STATE_DIR_ENV]).absolute())
    kept = set()
    for path in paths:
        if any(path.is_relative_to(p) for p in (Path("/tmp"), Path("/run"), Path("/var/run"))):
            continue
        if path == Path("/") or any(path != other and path.is_relative_to(other) for other in paths):
            continue
        kept.add(str(path))
    return sorted(kept)


def _etc_hosts(state: dict) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             "ff02::1\tip6-allnodes", "ff02::2\tip6-allrouters"]
    lines += [f"{host['address']}\t{host['name']}" for host in state["hosts"]]
    return "\n".join(lines) + "\n"


def _sshd_config(host: dict) -> str:
    return f"""\
# Written by kubesmith-lab each time this host starts.
ListenAddress {host['address']}:{SSH_PORT}
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
X11Forwarding no
PrintMotd no
PidFile /run/sshd.pid
AcceptEnv LANG LC_*
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
"""


def _boot_config(state: dict, host: dict) -> dict:
    """Everything lab_init needs to build the host (lab_init reads no state.json)."""
    directory = Path(state["lab_dir"])
    key = _host_key(state, host)
    public_key = Path(state["ssh_key"] + ".pub").read_text()
    # Stable and unique per host: hosts must not share the machine's machine-id.
    machine_id = hashlib.sha256(f"{directory}/{host['name']}".encode()).hexdigest()[:32]
    files = [
        ("/etc/hostname", f"{host['name']}\n", 0o644),
        ("/etc/hosts", _etc_hosts(state), 0o644),
        ("/etc/machine-id", f"{machine_id}\n", 0o444),
        ("/etc/ssh/sshd_config", _sshd_config(host), 0o644),
        ("/etc/ssh/ssh_host_ed25519_key", key.read_text(), 0o600),
        ("/etc/ssh/ssh_host_ed25519_key.pub", key.with_name(key.name + ".pub").read_text(), 0o644),
    ]
    entries = [{"path": p, "content": c, "mode": m} for p, c, m in files]
    entries.append({"path": "/root/.ssh/authorized_keys", "content": public_key,
                    "mode": 0o600, "dir_mode": 0o700})
    return {
        "hostname": host["name"],
        "address": host["address"],
        "root": host["root"],
        "hide": _hidden_paths(directory),
        "binds": [{"source": str(Path(host["root"]) / folder), "target": target}
                  for folder, target in HOST_BINDS],
        "files": entries,
        "sshd": [_need("sshd"), "-D", "-e", "-f", "/etc/ssh/sshd_config"],
    }


# --------------------------------------------------------------------------
# Processes


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _is_lab_process(argv: list[str], directory: Path, host: str | None = None) -> bool:
    """Whether argv is a lab init of this lab dir (or its unshare/nsenter wrapper)."""
    if not any(arg.endswith("lab_init.py") for arg in argv):
        return False
    pairs = set(zip(argv, argv[1:]))
    if ("--lab-dir", str(directory)) not in pairs:
        return False
    return host is None or ("--host", host) in pairs


def _is_wrapper(argv: list[str]) -> bool:
    return bool(argv) and os.path.basename(argv[0]) in ("unshare", "nsenter", "setsid")


def _lab_processes(directory: Path) -> dict[int, list[str]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            argv = _cmdline(pid)
            if _is_lab_process(argv, directory) and not _is_zombie(pid):
                found[pid] = argv
    return found


def _host_alive(state: dict, host: dict) -> bool:
    pid = host.get("pid")
    if not pid:
        return False
    argv = _cmdline(pid)
    return (not _is_zombie(pid) and not _is_wrapper(argv)
            and _is_lab_process(argv, Path(state["lab_dir"]), host["name"]))


def _signal(pids: Iterable[int], signo: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signo)
        except ProcessLookupError:
            pass


def _wait_gone(directory: Path, timeout: float) -> dict[int, list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        left = _lab_processes(directory)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def _ssh_answers(address: str, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, SSH_PORT), timeout=timeout) as conn:
            conn.settimeout(timeout)
            banner = b""
            # Read the whole identification line: closing with unread data
            # would reset the connection.
            while not banner.endswith(b"\n") and len(banner) < 256:
                chunk = conn.recv(256)
                if not chunk:
                    break
                banner += chunk
            return banner.startswith(b"SSH-")
    except OSError:
        return False


def _log_path(state: dict, host: dict) -> Path:
    return Path(state["lab_dir"]) / "logs" / f"{host['name']}.log"


def _log_tail(state: dict, host: dict, lines: int = 15) -> str:
    try:
        text = _log_path(state, host).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


# --------------------------------------------------------------------------
# Preflight


def _has_overlay() -> bool:
    try:
        return any(line.split()[-1] == "overlay"
                   for line in Path("/proc/filesystems").read_text().splitlines() if line.strip())
    except OSError:
        return False


def _preflight_machine() -> None:
    """Read-only checks: root, tools, kernel features. Raises PreflightError."""
    if os.geteuid() != 0:
        raise PreflightError("the lab must be run as root (it creates namespaces, links and mounts)")
    problems = []
    for tool, package in TOOLS.items():
        if _tool(tool) is None:
            problems.append(f"'{tool}' not found (Debian package {package})")
    for ns in NAMESPACES:
        if not Path(f"/proc/self/ns/{ns}").exists():
            problems.append(f"kernel lacks {ns} namespaces (/proc/self/ns/{ns} missing)")
    if not _has_overlay():
        modprobe = _tool("modprobe")
        if modprobe:
            _run([modprobe, "overlay"], check=False)
        if not _has_overlay():
            problems.append("kernel lacks the overlay filesystem "
                            "(not in /proc/filesystems, `modprobe overlay` did not help)")
    sshd = _tool("sshd")
    if sshd and os.stat(sshd).st_dev != os.stat("/").st_dev:
        # A host's root is an overlay of the machine's / alone: other
        # filesystems mounted on the machine do not show up inside hosts.
        problems.append(f"{sshd} is not on the root filesystem, so hosts cannot see it")
    if problems:
        raise PreflightError("this machine cannot run the lab:\n  - " + "\n  - ".join(problems))


def _preflight_network(network: ipaddress.IPv4Network, bridge: str) -> None:
    """Subnet clashes, and whether the kernel can make bridges and veths."""
    problems = []
    for link in _ip_json("-4", "addr", "show") or []:
        if link["ifname"] == bridge:
            continue
        for addr in link.get("addr_info", []):
            theirs = ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False)
            if theirs.overlaps(network):
                problems.append(f"subnet {network} overlaps {theirs} on {link['ifname']}; "
                                "choose another with --subnet")
    for route in _ip_json("-4", "route", "show") or []:
        if route.get("dst") in (None, "default") or route.get("dev") == bridge:
            continue
        theirs = ipaddress.ip_network(route["dst"], strict=False)
        # Broader routes are merely shadowed by the lab's subnet; narrower or
        # equal ones would take the lab's traffic elsewhere.
        if theirs.overlaps(network) and theirs.prefixlen >= network.prefixlen:
            if not any(str(theirs) in p for p in problems):
                problems.append(f"subnet {network} clashes with route {theirs} via "
                                f"{route.get('dev', '?')}; choose another with --subnet")
    probe = f"ksprobe{os.getpid() % 100000}"
    for kind, args in (("bridge", ["type", "bridge"]),
                       ("veth", ["type", "veth", "peer", "name", probe + "p"])):
        result = _ip("link", "add", probe, *args, check=False)
        if result.returncode != 0:
            problems.append(f"kernel cannot create {kind} devices "
                            f"(ip link add type {kind}: {result.stderr.strip()})")
        else:
            _ip("link", "del", probe, check=False)
    if problems:
        raise PreflightError("cannot set up the lab network:\n  - " + "\n  - ".join(problems))


def _warn_bridge_netfilter(out: Output) -> None:
    try:
        if Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip() == "1":
            out("warning: br_netfilter is active: traffic between hosts crosses the machine's "
                "iptables FORWARD chain; if that drops packets, hosts cannot reach each other")
    except OSError:
        pass


# --------------------------------------------------------------------------
# Network


def _ensure_bridge(state: dict, out: Output) -> None:
    bridge = state["bridge"]
    link = _link(bridge)
    if link is None:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("link", "set", "dev", bridge, "alias", _alias(state["name"]))
        out(f"  bridge {bridge}: created")
        link = _link(bridge)
    elif link.get("linkinfo", {}).get("info_kind") != "bridge":
        raise LabError(f"{bridge} exists but is not a bridge; remove it or use another --name")
    cidr = f"{state['bridge_address']}/{ipaddress.ip_network(state['subnet']).prefixlen}"
    if cidr not in _ipv4_addresses(bridge):
        _ip("addr", "add", cidr, "dev", bridge)
        out(f"  bridge {bridge}: address {cidr}")
    if "UP" not in link.get("flags", []):
        _ip("link", "set", bridge, "up")


def _ensure_netns(host: dict, alive: bool, out: Output) -> None:
    if host["netns"] in _netns_names():
        return
    if alive:
        # Someone deleted the name; the namespace lives on with the host.
        _ip("netns", "attach", host["netns"], str(host["pid"]))
    else:
        _ip("netns", "add", host["netns"])
    out(f"  {host['name']}: netns {host['netns']}")


def _ensure_veth(state: dict, host: dict, out: Output) -> None:
    veth, netns, bridge = host["veth"], host["netns"], state["bridge"]
    link = _link(veth)
    peer = _link("eth0", netns=netns)
    if link is not None and peer is None:
        _ip("link", "del", veth)  # stale: its peer went with an old namespace
        link = None
    if link is None:
        if peer is not None:
            _ip("link", "del", "eth0", netns=netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", "dev", veth, "alias", _alias(state["name"], host["name"]))
        out(f"  {host['name']}: veth {veth} <-> {netns}/eth0")
        link = _link(veth)
        peer = _link("eth0", netns=netns)
    if link.get("master") != bridge:
        _ip("link", "set", veth, "master", bridge)
        out(f"  {host['name']}: veth {veth} attached to {bridge}")
    if "UP" not in link.get("flags", []):
        _ip("link", "set", veth, "up")
    cidr = f"{host['address']}/{ipaddress.ip_network(state['subnet']).prefixlen}"
    if cidr not in _ipv4_addresses("eth0", netns=netns):
        _ip("addr", "add", cidr, "dev", "eth0", netns=netns)
    if "UP" not in peer.get("flags", []):
        _ip("link", "set", "eth0", "up", netns=netns)
    lo = _link("lo", netns=netns)
    if lo is not None and "UP" not in lo.get("flags", []):
        _ip("link", "set", "lo", "up", netns=netns)


# --------------------------------------------------------------------------
# Hosts


def _start_host(state: dict, host: dict) -> int:
    """Start a host's init, detached; returns its pid (as the machine sees it)."""
    root = Path(host["root"])
    for sub in ("upper", "work", "merged", *(folder for folder, _ in HOST_BINDS)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    _write_file(root / "boot.json", json.dumps(_boot_config(state, host), indent=2), 0o600)
    pid_file = root / "init.pid"
    pid_file.unlink(missing_ok=True)

    log_path = _log_path(state, host)
    log_path.parent.mkdir(exist_ok=True)
    argv = [
        # New session, forked off: the init outlives this command and is reaped
        # by the machine's init, not by whoever runs `up`.
        _need("setsid"), "--fork",
        _need("nsenter"), f"--net={NETNS_DIR / host['netns']}", "--",
        # unshare stays behind as the init's parent; if it is killed, the
        # kernel SIGKILLs the init and with it the whole host.
        _need("unshare"), "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child",
        "--propagation", "private",
        sys.executable, "-I", str(INIT_SCRIPT),
        "--lab-dir", state["lab_dir"], "--host", host["name"],
    ]
    with open(log_path, "ab") as log:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        log.write(f"=== {stamp} starting {host['name']}\n".encode())
        log.flush()
        launcher = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            launcher.wait(timeout=CMD_TIMEOUT)
        except subprocess.TimeoutExpired:
            launcher.kill()
            raise LabError(f"{host['name']}: launcher hung: {shlex.join(argv)}")
    if launcher.returncode != 0:
        raise LabError(f"{host['name']}: could not start (exit {launcher.returncode}):\n"
                       + _log_tail(state, host))

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            return int(pid_file.read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
    raise LabError(f"{host['name']}: init did not start within {START_TIMEOUT}s:\n"
                   + _log_tail(state, host))


def _wait_ssh(state: dict, hosts: list[dict], out: Output) -> None:
    pending = list(hosts)
    deadline = time.monotonic() + SSH_READY_TIMEOUT
    while pending:
        for host in list(pending):
            if _ssh_answers(host["address"], timeout=0.5):
                out(f"  {host['name']}: sshd is answering on {host['address']}:{SSH_PORT}")
                pending.remove(host)
            elif not _host_alive(state, host):
                raise LabError(f"{host['name']}: init exited while starting; its log:\n"
                               + _log_tail(state, host))
        if pending and time.monotonic() >= deadline:
            names = ", ".join(h["name"] for h in pending)
            raise LabError(f"sshd did not answer within {SSH_READY_TIMEOUT}s on: {names}\n"
                           + "\n".join(_log_tail(state, h) for h in pending))
        if pending:
            time.sleep(0.1)


# --------------------------------------------------------------------------
# Commands


def _resolve(name: str | None) -> tuple[str, Path, dict | None]:
    """Lab name, dir and state; the name defaults to the state's, else "lab"."""
    directory = lab_dir(name or DEFAULT_NAME)
    state = load_state(directory)
    if state is not None:
        if name and name != state["name"]:
            raise LabError(f"{directory} holds lab {state['name']!r}, not {name!r}")
        name = state["name"]
    name = name or DEFAULT_NAME
    _check_name(name)
    return name, directory, state


def up(*, name: str | None = None, masters: int | None = None, workers: int | None = None,
       etcd: int | None = None, subnet: str | None = None, out: Output = print) -> dict:
    """Create the lab, or bring an existing one back to fully running. Returns the state.

    Options left as None take the existing lab's values (or the defaults).
    """
    name, directory, state = _resolve(name)
    _preflight_machine()

    if state is not None:
        wanted = {"masters": masters, "workers": workers, "etcd": etcd, "subnet": subnet}
        clash = {k: v for k, v in wanted.items() if v is not None and v != state[k]}
        if clash:
            have = _describe_size(state["masters"], state["workers"], state["etcd"])
            asked = ", ".join(f"{k}={v}" for k, v in clash.items())
            raise LabError(f"lab {name!r} already exists with {have} on {state['subnet']}, "
                           f"but {asked} was requested; run `{PROG} down` first")
    else:
        masters = 1 if masters is None else masters
        workers = 2 if workers is None else workers
        etcd = default_etcd(masters) if etcd is None else etcd
        if masters < 1 or workers < 0:
            raise UsageError("a lab needs at least 1 master and no negative worker count")
        if not 1 <= etcd <= masters:
            raise UsageError(f"--etcd must be between 1 and the number of masters ({masters})")
        network = _parse_subnet(subnet or DEFAULT_SUBNET, masters + workers)
        _preflight_network(network, _bridge_name(name))

        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        (directory / MARKER_FILE).write_text(f"kubesmith lab {name}\n")
        state = {
            "version": STATE_VERSION,
            "name": name,
            "lab_dir": str(directory),
            "subnet": str(network),
            "bridge": _bridge_name(name),
            "bridge_address": str(network.network_address + 1),
            "masters": masters,
            "workers": workers,
            "etcd": etcd,
            "ssh_key": str(directory / "id_ed25519"),
            "known_hosts": str(directory / "known_hosts"),
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "hosts": _plan_hosts(name, directory, network, masters, workers, etcd),
        }
        # Saved before anything is created, so `down` can always clean up.
        _save_state(state)
        out(f"creating lab {name!r}: {_describe_size(masters, workers, etcd)} "
            f"on {network} in {directory}")
        _warn_bridge_netfilter(out)

    # Count what gets done, to tell a no-op apart from a repair.
    steps = []

    def step(line: str) -> None:
        steps.append(line)
        out(line)

    _ensure_keys(state)
    _ensure_bridge(state, step)
    started = []
    for host in state["hosts"]:
        alive = _host_alive(state, host)
        _ensure_netns(host, alive, step)
        _ensure_veth(state, host, step)
        if alive:
            continue
        if host.get("pid"):
            step(f"  {host['name']}: not running; restarting")
        host["pid"] = _start_host(state, host)
        _save_state(state)
        started.append(host)
        step(f"  {host['name']}: started {host['address']} "
             f"({','.join(host['groups'])}), init pid {host['pid']}")

    _wait_ssh(state, state["hosts"], out=out if started else (lambda _: None))
    if steps:
        out(f"lab {name!r} is ready ({len(state['hosts'])} hosts); "
            f"pyinfra inventory: inventories/lab.py")
    else:
        out(f"lab {name!r} is already up ({len(state['hosts'])} hosts alive); nothing to do")
    return state


def _mounts_under(directory: Path) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
        if point == str(directory) or point.startswith(str(directory) + "/"):
            found.append(point)
    return found


def _lab_cgroups(name: str, host_names: Iterable[str]) -> list[Path]:
    """The lab's cgroup folders in every hierarchy: the hosts' own, and any left by a
    host of this lab that the state no longer lists."""
    wanted = {cgroup_root(name, host).lstrip("/") for host in host_names}
    pattern = re.compile(rf"kubesmith-lab-{re.escape(name)}-(master|worker)-\d+")
    found = []
    try:
        hierarchies = sorted(p for p in CGROUP_MOUNT.iterdir() if p.is_dir())
    except OSError:
        return []
    for hierarchy in hierarchies:
        for entry in sorted(hierarchy.iterdir()) if hierarchy.is_dir() else []:
            if entry.is_dir() and (entry.name in wanted or pattern.fullmatch(entry.name)):
                found.append(entry)
    return found


def _remove_cgroup_tree(root: Path) -> None:
    """rmdir a cgroup folder and its children, deepest first (a cgroup folder goes with
    rmdir even though it lists control files)."""
    deadline = time.monotonic() + STOP_GRACE
    while True:
        busy = []
        for folder, _, _ in os.walk(root, topdown=False):
            try:
                os.rmdir(folder)
            except FileNotFoundError:
                pass
            except OSError as exc:
                busy.append(f"{folder} ({exc.strerror})")
        if not busy:
            return
        if time.monotonic() >= deadline:
            raise LabError("cannot remove cgroups: " + ", ".join(busy))
        time.sleep(0.1)


def down(*, name: str | None = None, out: Output = print) -> None:
    """Remove the lab completely. Safe to repeat, and after crashed or partial runs."""
    if os.geteuid() != 0:
        raise PreflightError("the lab must be run as root")
    try:
        name, directory, state = _resolve(name)
    except CorruptStateError:
        # Unreadable state: clean up by name (and lab dir) alone.
        name = name or DEFAULT_NAME
        directory, state = lab_dir(name), None
        out(f"  ignoring unreadable {directory / STATE_FILE}")
    did = False

    # 1. Processes: ask every host's init to stop its host, then force.
    inits = {h["pid"] for h in (state or {}).get("hosts", []) if _host_alive(state, h)}
    running = _lab_processes(directory)
    inits |= {pid for pid, argv in running.items() if not _is_wrapper(argv)}
    if inits or running:
        out(f"  stopping {len(inits)} host(s)")
        did = True
        _signal(inits, signal.SIGTERM)
        left = _wait_gone(directory, STOP_GRACE)
        if left:
            _signal(left, signal.SIGKILL)
            left = _wait_gone(directory, STOP_GRACE)
        if left:
            raise LabError(f"lab processes survived SIGKILL: {sorted(left)}")

    # 2. Links: the veths (deleting one end removes its peer in the host), then
    #    the bridge; found by state and by their ifalias tag.
    veths = {h["veth"] for h in (state or {}).get("hosts", [])}
    bridge = (state or {}).get("bridge", _bridge_name(name))
    ours = []
    for link in _links():
        ifname, tag = link["ifname"], link.get("ifalias", "")
        is_bridge = link.get("linkinfo", {}).get("info_kind") == "bridge"
        if (ifname in veths or (ifname == bridge and is_bridge)
                or tag == _alias(name) or tag.startswith(_alias(name) + ":")):
            ours.append((is_bridge, ifname))
    for _, ifname in sorted(ours):  # veths first
        _ip("link", "del", ifname, check=False)
        out(f"  removed link {ifname}")
        did = True

    # 3. Network namespaces, and anything still running inside them (processes
    #    someone started with `ip netns exec`).
    pattern = re.compile(rf"ks-{re.escape(name)}-(master|worker)-\d+")
    namespaces = {h["netns"] for h in (state or {}).get("hosts", [])}
    existing = _netns_names()
    for netns in sorted((namespaces | {n for n in existing if pattern.fullmatch(n)}) & existing):
        strays = [int(p) for p in _ip("netns", "pids", netns, check=False).stdout.split()]
        _signal(strays, signal.SIGKILL)
        _ip("netns", "del", netns)
        out(f"  removed netns {netns}")
        did = True
    # Namespaces are dismantled asynchronously; make sure no link outlives them.
    deadline = time.monotonic() + STOP_GRACE
    while True:
        left = [ifname for _, ifname in ours if _link(ifname) is not None]
        if not left:
            break
        if time.monotonic() >= deadline:
            raise LabError(f"could not delete links: {', '.join(left)}")
        for ifname in left:
            _ip("link", "del", ifname, check=False)
        time.sleep(0.1)

    # 4. cgroups the hosts' containers left in the machine's shared cgroup tree.
    #    Their processes died with the hosts' PID namespaces; the kernel may take a
    #    moment to empty the cgroups, so retry a busy one briefly.
    host_names = {h["name"] for h in (state or {}).get("hosts", [])}
    for path in _lab_cgroups(name, host_names):
        _remove_cgroup_tree(path)
        out(f"  removed cgroup {path}")
        did = True

    # 5. Mounts and files.
    for point in sorted(_mounts_under(directory), key=len, reverse=True):
        if _run([_need("umount"), point], check=False).returncode != 0:
            _run([_need("umount"), "--lazy", point])
        out(f"  unmounted {point}")
        did = True
    if _mounts_under(directory):
        raise LabError(f"mounts remain under {directory}; not removing it")
    if directory.exists():
        if not (directory / MARKER_FILE).exists() and any(directory.iterdir()):
            raise LabError(f"{directory} does not look like a lab dir (no {MARKER_FILE}); "
                           "not removing it")
        shutil.rmtree(directory)
        out(f"  removed {directory}")
        did = True
    if directory.parent == DEFAULT_BASE:
        try:
            DEFAULT_BASE.rmdir()  # only if no other lab is left
        except OSError:
            pass
    out(f"lab {name!r} is down" if did else f"lab {name!r} is not up; nothing to do")


def status(*, name: str | None = None, out: Output = print) -> bool:
    """Print a table of the lab's hosts; True when every host is alive and answers ssh."""
    name, directory, state = _resolve(name)
    if state is None:
        out(f"lab {name!r} is not up (no {directory / STATE_FILE})")
        return False
    out(f"lab {name!r}: {state['subnet']}, bridge {state['bridge']} "
        f"({state['bridge_address']}), dir {directory}")
    rows = [("HOST", "ADDRESS", "GROUPS", "INIT", "SSH")]
    healthy = True
    for host in state["hosts"]:
        alive = _host_alive(state, host)
        reachable = alive and _ssh_answers(host["address"])
        healthy &= reachable
        rows.append((host["name"], host["address"], ",".join(host["groups"]),
                     f"alive ({host['pid']})" if alive else "dead",
                     "reachable" if reachable else "unreachable"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return healthy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Throw-away kubesmith lab hosts on this machine, reachable by SSH.")
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="create the lab or restart its dead hosts")
    up_parser.add_argument("--masters", type=int, help="number of masters (default 1)")
    up_parser.add_argument("--workers", type=int, help="number of workers (default 2)")
    up_parser.add_argument("--etcd", type=int,
                           help="etcd members, the first masters (default: masters, made odd)")
    up_parser.add_argument("--subnet", help=f"IPv4 subnet of the lab (default {DEFAULT_SUBNET})")
    ssh_parser = commands.add_parser("ssh", help="ssh into a lab host as root")
    ssh_parser.add_argument("host", help="host name, e.g. master-1")
    ssh_parser.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run (default: a shell)")
    for command in (up_parser, commands.add_parser("down", help="remove the lab entirely"),
                    commands.add_parser("status", help="show the lab's hosts"), ssh_parser):
        command.add_argument("--name", help=f"lab name (default {DEFAULT_NAME!r})")
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            up(name=args.name, masters=args.masters, workers=args.workers, etcd=args.etcd,
               subnet=args.subnet)
        elif args.command == "down":
            down(name=args.name)
        elif args.command == "ssh":
            _, directory, _ = _resolve(args.name)
            ssh_argv = ssh_command(args.host, *args.cmd, lab_dir=directory)
            os.execvp(ssh_argv[0], ssh_argv)
        else:
            return 0 if status(name=args.name) else 1
    except LabError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run `{PROG} down` to clean up", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
