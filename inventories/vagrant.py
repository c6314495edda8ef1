"""pyinfra inventory for the Vagrant lab (vagrant/Vagrantfile).

    cd vagrant && vagrant up && cd ..
    pyinfra -y inventories/vagrant.py deploy.py

Runs `vagrant ssh-config` in vagrant/ (or $KUBESMITH_VAGRANT_DIR) to learn how to
reach each VM, and reads the VMs' private-network addresses and groups from
.vagrant/kubesmith-hosts.json, which the Vagrantfile writes. Defines the groups
`masters`, `workers` and `etcd`. Hosts are reached as Vagrant's user and every
operation runs with sudo; each host's `address` (what the cluster uses) is its
private-network address.
"""
import sys as _sys
from pathlib import Path as _Path

from pyinfra.api.exceptions import InventoryError as _InventoryError

_REPO = str(_Path(__file__).resolve().parent.parent)
if _REPO not in _sys.path:
    _sys.path.insert(0, _REPO)

from provision import vagrant as _vagrant  # noqa: E402

try:
    _groups = _vagrant.load_groups()
except _vagrant.VagrantInventoryError as _exc:
    raise _InventoryError(f"Vagrant lab: {_exc}") from None

masters = _groups["masters"]
workers = _groups["workers"]
etcd = _groups["etcd"]
