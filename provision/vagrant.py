"""The Vagrant lab (vagrant/Vagrantfile) as a pyinfra inventory: see inventories/vagrant.py.

Two sources, both produced by the Vagrantfile:

* `vagrant ssh-config`: how to reach each VM over SSH (the provider's NAT or management
  address and port, the user, the private key);
* `.vagrant/kubesmith-hosts.json`, written whenever the Vagrantfile is read: each VM's
  address on the private network (the one the cluster uses) and its groups.

Parsing and joining them are pure functions (`parse_ssh_config`, `parse_plan`,
`inventory_groups`); only `ssh_config_text` and `read_plan` touch the outside world.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

VAGRANT_DIR = Path(__file__).resolve().parent.parent / "vagrant"
VAGRANT_DIR_ENV = "KUBESMITH_VAGRANT_DIR"  # another folder holding a kubesmith Vagrantfile
PLAN_FILE = Path(".vagrant") / "kubesmith-hosts.json"
PLAN_VERSION = 1
SSH_CONFIG_TIMEOUT = 120  # seconds for `vagrant ssh-config` (it asks the provider per VM)
GROUPS = ("masters", "workers", "etcd")


class VagrantInventoryError(Exception):
    """The Vagrant lab cannot be turned into an inventory; the message says why."""


@dataclass(frozen=True)
class SshEntry:
    """One `Host` block of `vagrant ssh-config` output."""
    host: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    strict_host_key_checking: str | None = None
    known_hosts_file: str | None = None
    proxy_command: str | None = None


@dataclass(frozen=True)
class PlanHost:
    """A VM as the Vagrantfile planned it."""
    name: str
    address: str
    groups: tuple[str, ...]


# --------------------------------------------------------------------------
# Pure functions

# "Keyword value", "Keyword=value" or "Keyword = value", as OpenSSH reads them.
_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+)(.*?)\s*$")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_ssh_config(text: str) -> dict[str, SshEntry]:
    """The hosts in `vagrant ssh-config` output, by name.

    Understands what Vagrant writes (HostName, User, Port, IdentityFile, possibly several
    and possibly double-quoted, IdentitiesOnly, StrictHostKeyChecking,
    UserKnownHostsFile, ProxyCommand) in any letter case; other keywords, comments,
    blank lines and anything before the first `Host` line are ignored. Raises ValueError
    when a host lacks HostName, User or Port, or has a bad port.
    """
    blocks: list[tuple[str, dict[str, list[str]]]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue
        keyword, value = match.group(1).lower(), match.group(2)
        if keyword == "host":
            blocks.append((value, {}))
        elif blocks:
            blocks[-1][1].setdefault(keyword, []).append(_unquote(value))

    entries: dict[str, SshEntry] = {}
    problems: list[str] = []
    for host, options in blocks:
        missing = [k for k, key in (("HostName", "hostname"), ("User", "user"), ("Port", "port"))
                   if key not in options]
        if missing:
            problems.append(f"host {host}: no {', '.join(missing)}")
            continue
        try:
            port = int(options["port"][0])
        except ValueError:
            problems.append(f"host {host}: port {options['port'][0]!r} is not a number")
            continue
        if not 0 < port < 65536:
            problems.append(f"host {host}: port {port} is out of range")
            continue

        def first(key: str) -> str | None:
            return options[key][0] if key in options else None

        entries[host] = SshEntry(
            host=host,
            hostname=options["hostname"][0],
            port=port,
            user=options["user"][0],
            identity_files=tuple(options.get("identityfile", ())),
            identities_only=(first("identitiesonly") or "").lower() == "yes",
            strict_host_key_checking=(first("stricthostkeychecking") or "").lower() or None,
            known_hosts_file=first("userknownhostsfile"),
            proxy_command=first("proxycommand"),
        )
    if problems:
        raise ValueError("unreadable `vagrant ssh-config` output: " + "; ".join(problems))
    return entries


def parse_plan(text: str) -> list[PlanHost]:
    """The hosts in .vagrant/kubesmith-hosts.json, in order. Raises ValueError."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
        raise ValueError(f"not a version {PLAN_VERSION} host plan")
    hosts = []
    for item in data.get("hosts", []):
        try:
            hosts.append(PlanHost(name=str(item["name"]), address=str(item["address"]),
                                  groups=tuple(str(g) for g in item["groups"])))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad host entry {item!r}") from exc
    if not hosts:
        raise ValueError("no hosts")
    return hosts


def _ssh_key(entry: SshEntry, key_exists: Callable[[str], bool]) -> str | None:
    """The private key to log in with: the first listed that exists (Vagrant may list its
    generated key and the insecure one), else the first listed."""
    for path in entry.identity_files:
        if key_exists(path):
            return path
    return entry.identity_files[0] if entry.identity_files else None


def host_data(entry: SshEntry, address: str,
              key_exists: Callable[[str], bool] = os.path.isfile) -> dict:
    """pyinfra host data for one VM: reached as ssh-config says, known by `address`."""
    if entry.proxy_command:
        raise VagrantInventoryError(
            f"{entry.host}: `vagrant ssh-config` gives a ProxyCommand ({entry.proxy_command}), "
            "which this inventory does not support; run Vagrant on a machine that reaches the "
            "VMs directly")
    data: dict = {
        "ssh_hostname": entry.hostname,
        "ssh_port": entry.port,
        "ssh_user": entry.user,
        # Vagrant's user is not root: every operation and fact runs under sudo
        # (Vagrant boxes allow it without a password).
        "_sudo": True,
        # The address the node uses in the cluster: the private network's, not the
        # NAT/management address SSH goes through.
        "address": address,
    }
    key = _ssh_key(entry, key_exists)
    if key:
        data["ssh_key"] = key
    if entry.identities_only:
        data["ssh_allow_agent"] = False
        data["ssh_look_for_keys"] = False
    # Vagrant VMs are re-created with new host keys under the same address and port, so
    # Vagrant turns host key checking off; follow what it says.
    if entry.strict_host_key_checking:
        data["ssh_strict_host_key_checking"] = entry.strict_host_key_checking
    if entry.known_hosts_file:
        data["ssh_known_hosts_file"] = entry.known_hosts_file
    return data


def inventory_groups(plan: list[PlanHost], entries: dict[str, SshEntry],
                     key_exists: Callable[[str], bool] = os.path.isfile,
                     ) -> dict[str, list[tuple[str, dict]]]:
    """The pyinfra groups `masters`, `workers` and `etcd`: (name, host data) pairs.

    Every planned VM needs an ssh-config entry; entries for VMs outside the plan are
    ignored. Raises VagrantInventoryError naming the VMs that cannot be reached.
    """
    missing = [host.name for host in plan if host.name not in entries]
    if missing:
        raise VagrantInventoryError(
            f"`vagrant ssh-config` has no entry for {', '.join(missing)}; "
            "are they up? (`vagrant up` in the Vagrant folder)")
    hosts = {host.name: (host.name, host_data(entries[host.name], host.address, key_exists))
             for host in plan}
    return {group: [hosts[h.name] for h in plan if group in h.groups] for group in GROUPS}


# --------------------------------------------------------------------------
# The outside world


def vagrant_dir() -> Path:
    override = os.environ.get(VAGRANT_DIR_ENV)
    return Path(override).absolute() if override else VAGRANT_DIR


def ssh_config_text(directory: Path, timeout: float = SSH_CONFIG_TIMEOUT) -> str:
    """`vagrant ssh-config` for every VM of the Vagrantfile in `directory`."""
    argv = ["vagrant", "ssh-config"]
    env = dict(os.environ, VAGRANT_NO_COLOR="1", VAGRANT_CHECKPOINT_DISABLE="1")
    try:
        result = subprocess.run(argv, cwd=directory, env=env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise VagrantInventoryError("`vagrant` is not installed (or not on PATH)") from exc
    except subprocess.TimeoutExpired as exc:
        raise VagrantInventoryError(
            f"`vagrant ssh-config` in {directory} took longer than {timeout}s") from exc
    if result.returncode != 0:
        detail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-12:])
        raise VagrantInventoryError(
            f"`{shlex.join(argv)}` failed in {directory} (exit {result.returncode}); "
            f"are all VMs up (`vagrant up`)?\n{detail}")
    return result.stdout


def read_plan(directory: Path) -> list[PlanHost]:
    path = directory / PLAN_FILE
    try:
        return parse_plan(path.read_text())
    except FileNotFoundError as exc:
        raise VagrantInventoryError(f"no {path}: run `vagrant up` in {directory} first") from exc
    except ValueError as exc:
        raise VagrantInventoryError(f"{path}: {exc}") from exc


def load_groups(directory: Path | None = None) -> dict[str, list[tuple[str, dict]]]:
    """The inventory groups of the Vagrant lab in `directory` (default: vagrant/)."""
    directory = directory or vagrant_dir()
    # ssh-config first: reading the Vagrantfile refreshes the host plan.
    text = ssh_config_text(directory)
    try:
        entries = parse_ssh_config(text)
    except ValueError as exc:
        raise VagrantInventoryError(str(exc)) from exc
    return inventory_groups(read_plan(directory), entries)
