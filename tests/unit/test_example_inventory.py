"""inventories/example_baremetal.py is a valid kubesmith inventory as shipped."""
from __future__ import annotations

import runpy
from pathlib import Path

from provision import cluster, settings

REPO = Path(__file__).resolve().parents[2]


def test_example_baremetal_inventory_passes_the_deploys_checks():
    namespace = runpy.run_path(str(REPO / "inventories" / "example_baremetal.py"))
    groups = {name: namespace[name] for name in ("masters", "workers", "etcd")}
    names = dict(groups["masters"] + groups["workers"])
    hosts = [cluster.InventoryHost(name=name, data=data,
                                   groups=frozenset(g for g, members in groups.items()
                                                    if name in dict(members)))
             for name, data in names.items()]
    topology = cluster.topology_from(hosts)
    settings.validate_topology(cluster.settings_from(hosts), topology)
    assert len(topology.etcd_members) == 3
    worker = topology.get("worker-3")
    assert worker.address == "192.0.2.23"
    assert names["worker-3"]["ssh_hostname"] == "198.51.100.23"
    assert all(data["_sudo"] is True for data in names.values())
