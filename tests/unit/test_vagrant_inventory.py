"""The Vagrant inventory, from captured `vagrant ssh-config` output (no Vagrant needed)."""
from __future__ import annotations

import os
import runpy
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.api.command import StringCommand
from pyinfra.connectors.util import extract_control_arguments, make_unix_command_for_host

from provision import cluster, settings, vagrant
from provision.vagrant import SshEntry, VagrantInventoryError

REPO = Path(__file__).resolve().parents[2]

# `vagrant ssh-config` of a 2-master 1-worker lab on VirtualBox (Vagrant 2.3: NAT port
# forwards on 127.0.0.1, one generated key per VM, the blank lines its template leaves).
VIRTUALBOX_SSH_CONFIG = """\
Host master-1
  HostName 127.0.0.1
  User vagrant
  Port 2222
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no

  IdentityFile /home/ops/kubesmith/vagrant/.vagrant/machines/master-1/virtualbox/private_key
  IdentitiesOnly yes
  LogLevel FATAL

Host master-2
  HostName 127.0.0.1
  User vagrant
  Port 2200
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no

  IdentityFile /home/ops/kubesmith/vagrant/.vagrant/machines/master-2/virtualbox/private_key
  IdentitiesOnly yes
  LogLevel FATAL

Host worker-1
  HostName 127.0.0.1
  User vagrant
  Port 2201
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no

  IdentityFile /home/ops/kubesmith/vagrant/.vagrant/machines/worker-1/virtualbox/private_key
  IdentitiesOnly yes
  LogLevel FATAL

"""

# libvirt (Vagrant 2.4): the management network's address on port 22; before Vagrant has
# swapped in a generated key it lists the insecure keys, here under a path with a space.
LIBVIRT_SSH_CONFIG = """\
Host master-1
  HostName 192.168.121.57
  User vagrant
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/home/ops/vagrant home/insecure_private_keys/vagrant.key.ed25519"
  IdentityFile "/home/ops/vagrant home/insecure_private_keys/vagrant.key.rsa"
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

"""

# .vagrant/kubesmith-hosts.json as the Vagrantfile writes it for KUBESMITH_MASTERS=2
# KUBESMITH_WORKERS=1 (2 masters: etcd on the first only, to keep an odd count).
PLAN = """\
{
  "version": 1,
  "settings": {
    "masters": 2,
    "workers": 1,
    "network": "192.168.56.0/24",
    "memory": 1536,
    "cpus": 2
  },
  "hosts": [
    {"name": "master-1", "address": "192.168.56.11", "prefix": 24, "groups": ["masters", "etcd"]},
    {"name": "master-2", "address": "192.168.56.12", "prefix": 24, "groups": ["masters"]},
    {"name": "worker-1", "address": "192.168.56.13", "prefix": 24, "groups": ["workers"]}
  ]
}
"""


def every_key_exists(path: str) -> bool:
    return True


def test_parses_virtualbox_output():
    entries = vagrant.parse_ssh_config(VIRTUALBOX_SSH_CONFIG)
    assert list(entries) == ["master-1", "master-2", "worker-1"]
    assert entries["master-2"] == SshEntry(
        host="master-2", hostname="127.0.0.1", port=2200, user="vagrant",
        identity_files=(
            "/home/ops/kubesmith/vagrant/.vagrant/machines/master-2/virtualbox/private_key",),
        identities_only=True, strict_host_key_checking="no", known_hosts_file="/dev/null",
        proxy_command=None)


def test_parses_libvirt_output_with_quoted_keys():
    entry = vagrant.parse_ssh_config(LIBVIRT_SSH_CONFIG)["master-1"]
    assert (entry.hostname, entry.port) == ("192.168.121.57", 22)
    assert entry.identity_files == (
        "/home/ops/vagrant home/insecure_private_keys/vagrant.key.ed25519",
        "/home/ops/vagrant home/insecure_private_keys/vagrant.key.rsa",
    )


def test_tolerates_noise_equals_signs_and_letter_case():
    text = ("Vagrant printed a warning here\n"
            "# a comment\n"
            "Host master-1\n"
            "  hostname=10.0.0.5\n"
            "  USER root\n"
            "  Port = 2022\n"
            "  SomethingNew yes\n")
    entry = vagrant.parse_ssh_config(text)["master-1"]
    assert (entry.hostname, entry.user, entry.port) == ("10.0.0.5", "root", 2022)
    assert entry.identity_files == () and entry.strict_host_key_checking is None


@pytest.mark.parametrize("block, message", [
    ("Host a\n  HostName h\n  User u\n", "host a: no Port"),
    ("Host a\n  User u\n  Port 22\n", "host a: no HostName"),
    ("Host a\n  HostName h\n  User u\n  Port ssh\n", "port 'ssh' is not a number"),
    ("Host a\n  HostName h\n  User u\n  Port 70000\n", "port 70000 is out of range"),
])
def test_rejects_incomplete_hosts(block, message):
    with pytest.raises(ValueError, match=message):
        vagrant.parse_ssh_config(block)


def test_empty_output_has_no_hosts():
    assert vagrant.parse_ssh_config("") == {}


def test_groups_use_private_addresses_and_sudo():
    groups = vagrant.inventory_groups(vagrant.parse_plan(PLAN),
                                      vagrant.parse_ssh_config(VIRTUALBOX_SSH_CONFIG),
                                      key_exists=every_key_exists)
    assert [name for name, _ in groups["masters"]] == ["master-1", "master-2"]
    assert [name for name, _ in groups["workers"]] == ["worker-1"]
    assert [name for name, _ in groups["etcd"]] == ["master-1"]
    data = dict(groups["masters"] + groups["workers"])
    assert data["worker-1"] == {
        "ssh_hostname": "127.0.0.1",
        "ssh_port": 2201,
        "ssh_user": "vagrant",
        "ssh_key": "/home/ops/kubesmith/vagrant/.vagrant/machines/worker-1/virtualbox/private_key",
        "_sudo": True,
        "address": "192.168.56.13",  # the private network, not the NAT address
        "ssh_allow_agent": False,
        "ssh_look_for_keys": False,
        "ssh_strict_host_key_checking": "no",
        "ssh_known_hosts_file": "/dev/null",
    }
    assert {d["address"] for d in data.values()} == {"192.168.56.11", "192.168.56.12",
                                                     "192.168.56.13"}


def test_first_existing_key_wins():
    entries = vagrant.parse_ssh_config(LIBVIRT_SSH_CONFIG)
    rsa = "/home/ops/vagrant home/insecure_private_keys/vagrant.key.rsa"
    data = vagrant.host_data(entries["master-1"], "192.168.56.11", key_exists=lambda p: p == rsa)
    assert data["ssh_key"] == rsa
    data = vagrant.host_data(entries["master-1"], "192.168.56.11", key_exists=lambda p: False)
    assert data["ssh_key"].endswith("vagrant.key.ed25519")


def test_vm_missing_from_ssh_config_is_named():
    only_master_1 = VIRTUALBOX_SSH_CONFIG.split("Host master-2")[0]
    with pytest.raises(VagrantInventoryError, match="no entry for master-2, worker-1"):
        vagrant.inventory_groups(vagrant.parse_plan(PLAN),
                                 vagrant.parse_ssh_config(only_master_1))


def test_extra_vms_in_ssh_config_are_ignored():
    plan = vagrant.parse_plan(PLAN)[:1]
    groups = vagrant.inventory_groups(plan, vagrant.parse_ssh_config(VIRTUALBOX_SSH_CONFIG),
                                      key_exists=every_key_exists)
    assert [name for name, _ in groups["masters"]] == ["master-1"] and groups["workers"] == []


def test_proxy_command_is_refused():
    text = LIBVIRT_SSH_CONFIG + "  ProxyCommand ssh -W %h:%p kvm-host\n"
    with pytest.raises(VagrantInventoryError, match="ProxyCommand"):
        vagrant.inventory_groups(vagrant.parse_plan(PLAN)[:1], vagrant.parse_ssh_config(text))


@pytest.mark.parametrize("text, message", [
    ("{", "not JSON"),
    ('{"version": 2, "hosts": []}', "not a version 1"),
    ('{"version": 1, "hosts": []}', "no hosts"),
    ('{"version": 1, "hosts": [{"name": "m"}]}', "bad host entry"),
])
def test_bad_plans(text, message):
    with pytest.raises(ValueError, match=message):
        vagrant.parse_plan(text)


def test_pyinfra_runs_everything_with_sudo():
    """`_sudo` in host data is the default of pyinfra's global `_sudo` argument, for
    operations and facts alike; commands then go through `sudo -H -n`."""
    groups = vagrant.inventory_groups(vagrant.parse_plan(PLAN),
                                      vagrant.parse_ssh_config(VIRTUALBOX_SSH_CONFIG),
                                      key_exists=every_key_exists)
    names = [name for name, _ in groups["masters"] + groups["workers"]]
    inventory = Inventory((names, {}), **{k: (v, {}) for k, v in groups.items()})
    state = State(inventory, Config())
    host = inventory.get_host("worker-1")
    assert host.data.address == "192.168.56.13"
    arguments, _ = pop_global_arguments(state, host, {})
    assert arguments["_sudo"] is True
    # What the SSH connector does with an operation's or a fact's arguments.
    connector_args = {k: v for k, v in arguments.items() if k in CONNECTOR_ARGUMENT_KEYS}
    extract_control_arguments(connector_args)
    command = make_unix_command_for_host(state, host, StringCommand("cat", "/etc/kubernetes/x"),
                                         **connector_args)
    assert command.get_raw_value().startswith("sudo -H -n sh -c ")
    # An operation may still opt out explicitly.
    arguments, _ = pop_global_arguments(state, host, {"_sudo": False})
    assert arguments["_sudo"] is False


def test_inventory_file_with_a_stand_in_vagrant(tmp_path, monkeypatch):
    """inventories/vagrant.py end to end: a `vagrant` on PATH that prints captured output."""
    lab = tmp_path / "lab"
    (lab / ".vagrant").mkdir(parents=True)
    (lab / ".vagrant" / "kubesmith-hosts.json").write_text(PLAN)
    (tmp_path / "ssh-config").write_text(VIRTUALBOX_SSH_CONFIG)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vagrant"
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = ssh-config ] || exit 3\n"
                    f"[ \"$(pwd)\" = '{lab}' ] || exit 4\ncat '{tmp_path / 'ssh-config'}'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(vagrant.VAGRANT_DIR_ENV, str(lab))

    namespace = runpy.run_path(str(REPO / "inventories" / "vagrant.py"))
    assert [name for name, _ in namespace["etcd"]] == ["master-1"]
    assert dict(namespace["workers"])["worker-1"]["address"] == "192.168.56.13"
    assert dict(namespace["masters"])["master-2"]["ssh_port"] == 2200


def test_inventory_file_reports_vagrant_failures(tmp_path, monkeypatch):
    from pyinfra.api.exceptions import InventoryError

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vagrant"
    fake.write_text("#!/bin/sh\necho 'The provider for this Vagrant-managed machine is "
                    "reporting that it is not yet ready for SSH.' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(vagrant.VAGRANT_DIR_ENV, str(tmp_path))
    with pytest.raises(InventoryError, match="not yet ready for SSH"):
        runpy.run_path(str(REPO / "inventories" / "vagrant.py"))


def test_groups_pass_the_deploys_inventory_checks():
    groups = vagrant.inventory_groups(vagrant.parse_plan(PLAN),
                                      vagrant.parse_ssh_config(VIRTUALBOX_SSH_CONFIG),
                                      key_exists=every_key_exists)
    hosts = [cluster.InventoryHost(name=name, data=data,
                                   groups=frozenset(g for g, members in groups.items()
                                                    if name in dict(members)))
             for name, data in groups["masters"] + groups["workers"]]
    topology = cluster.topology_from(hosts)
    settings.validate_topology(cluster.settings_from(hosts), topology)
    assert topology.get("master-1").address == "192.168.56.11"
    assert [m.name for m in topology.etcd_members] == ["master-1"]


def test_vagrantfile_and_inventory_agree_on_names():
    """The Vagrantfile writes the plan file and the groups this module reads."""
    text = (REPO / "vagrant" / "Vagrantfile").read_text()
    assert f'"{vagrant.PLAN_FILE.name}"' in text
    assert 'BOX = "debian/bookworm64"' in text
    for group in vagrant.GROUPS:
        assert f'"{group}"' in text


# Loads the Vagrantfile with a stand-in for Vagrant's configure block: its host plan and
# its checks run, no VM is defined.
_STUB_VAGRANT = 'module Vagrant; def self.configure(_version); end; end; load "Vagrantfile"'


def _run_vagrantfile(tmp_path, **env):
    shutil.copy(REPO / "vagrant" / "Vagrantfile", tmp_path / "Vagrantfile")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KUBESMITH_")}
    return subprocess.run(["ruby", "-e", _STUB_VAGRANT], cwd=tmp_path, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
@pytest.mark.parametrize("masters, workers, etcd", [(1, 2, 1), (2, 1, 1), (3, 0, 3), (4, 1, 3)])
def test_vagrantfile_plan(tmp_path, masters, workers, etcd):
    result = _run_vagrantfile(tmp_path, KUBESMITH_MASTERS=str(masters),
                              KUBESMITH_WORKERS=str(workers), KUBESMITH_NETWORK="10.99.0.0/24")
    assert result.returncode == 0, result.stderr
    plan = vagrant.parse_plan((tmp_path / vagrant.PLAN_FILE).read_text())
    assert [h.name for h in plan] == ([f"master-{i}" for i in range(1, masters + 1)]
                                      + [f"worker-{i}" for i in range(1, workers + 1)])
    assert [h.address for h in plan] == [f"10.99.0.{11 + i}" for i in range(masters + workers)]
    assert [h.name for h in plan if "etcd" in h.groups] == [f"master-{i}"
                                                           for i in range(1, etcd + 1)]
    # Remembered: a later run without the variables plans the same lab.
    again = _run_vagrantfile(tmp_path)
    assert again.returncode == 0, again.stderr
    assert vagrant.parse_plan((tmp_path / vagrant.PLAN_FILE).read_text()) == plan


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
@pytest.mark.parametrize("env, message", [
    ({"KUBESMITH_MASTERS": "0"}, "KUBESMITH_MASTERS must be at least 1"),
    ({"KUBESMITH_WORKERS": "two"}, "is not a whole number"),
    ({"KUBESMITH_NETWORK": "10.99.0.0/29"}, "has no room for 3 hosts"),
    ({"KUBESMITH_NETWORK": "fd00::/64"}, "must be IPv4"),
])
def test_vagrantfile_rejects_bad_settings(tmp_path, env, message):
    result = _run_vagrantfile(tmp_path, **env)
    assert result.returncode != 0
    assert message in result.stderr
