"""pyinfra inventory for the local lab (see provision/lab.py).

    python -m provision.lab up
    pyinfra inventories/lab.py deploy.py

Reads the lab's state.json ($KUBESMITH_LAB_DIR, default
/var/lib/kubesmith-lab/lab) and defines the groups `masters`, `workers` and
`etcd`. Hosts connect as root with the lab's own key and known_hosts, with
strict host key checking.
"""
import sys as _sys
from pathlib import Path as _Path

from pyinfra.api.exceptions import InventoryError as _InventoryError

_REPO = str(_Path(__file__).resolve().parent.parent)
if _REPO not in _sys.path:
    _sys.path.insert(0, _REPO)

from provision import lab as _lab  # noqa: E402

_state = _lab.load_state()
if _state is None:
    raise _InventoryError(
        f"no lab is up (no state in {_lab.lab_dir()}); "
        "run `kubesmith-lab up` (python -m provision.lab up) first"
    )


def _host(host: dict) -> tuple:
    return (
        host["name"],
        {
            "ssh_hostname": host["address"],
            "ssh_user": "root",
            "ssh_key": _state["ssh_key"],
            "ssh_known_hosts_file": _state["known_hosts"],
            "ssh_strict_host_key_checking": "yes",
            # The address the node uses in the cluster.
            "address": host["address"],
            # The machine's side of the lab bridge: the only other address
            # hosts can reach (there is no default route).
            "lab_bridge_address": _state["bridge_address"],
            # Hosts share the machine's cgroup tree: each kubelet keeps its pods'
            # cgroups under a folder of its own, which `kubesmith-lab down` removes.
            "kubelet_cgroup_root": _lab.cgroup_root(_state["name"], host["name"]),
        },
    )


def _group(name: str) -> list:
    return [_host(host) for host in _state["hosts"] if name in host["groups"]]


masters = _group("masters")
workers = _group("workers")
etcd = _group("etcd")
