"""kubesmith's deploy: `pyinfra -y inventories/lab.py deploy.py`.

Run from the checkout's root. Before any host is touched, the settings (group_data/all.py)
and the inventory are validated and the operator-side state is prepared once: the PKI,
the kubeconfigs, the node images and the component wheelhouse, in the cluster state
folder. Then each host gets, by role:

- every host: kubesmith's folders, its certificates and kubeconfigs, the component wheel
  in /opt/kubesmith/venv, and a service manager (systemd, or supervisor where systemd is
  not running);
- `etcd` hosts: an etcd member with client-cert auth; the deploy waits until every
  member reports healthy over TLS;
- `masters`: kube-apiserver on that etcd; the deploy waits for its /readyz. Then
  kube-controller-manager and kube-scheduler (each elects one leader among the masters);
  the deploy waits for their /healthz;
- the first master: the add-ons manifest (the DNS add-on's RBAC and the kube-dns
  Service), server-side applied when it changed;
- every host (masters included): containerd with the node images imported, kube-proxy,
  the pod-network agent and the kubelet; masters register tainted and get the
  control-plane label;
- `masters`: the cluster DNS server (kubesmith-dns).
"""
from pathlib import Path

from pyinfra import host, inventory

from provision import cluster
from provision.components import ETCD_PKI
from roles import addons, base, control_plane, etcd, node, services

plan = cluster.prepare(
    [cluster.InventoryHost(name=h.name, groups=frozenset(h.groups), data=h.data.dict())
     for h in inventory],
    group_data_file=Path("group_data/all.py"),
)
machine = plan.machine(host.name)
manager = services.service_manager(plan.settings.service_manager)

services.prepare_service_manager(manager)
if machine.is_etcd:
    etcd.prepare_etcd()
uploads = base.install_host_files(plan, owners={ETCD_PKI: "etcd"} if machine.is_etcd else {})
wheel = base.install_wheel(cluster.wheelhouse_for(plan, base.host_platform()))
node.prepare_node()

if machine.is_etcd:
    started = etcd.etcd_member(plan, host.name, manager, uploads)
    etcd.wait_for_health(plan, started)

if machine.is_master:
    control_plane.kube_apiserver(plan, host.name, manager, uploads, wheel)
    control_plane.kube_controller_manager(plan, host.name, manager, uploads, wheel)
    control_plane.kube_scheduler(plan, host.name, manager, uploads, wheel)
    if host.name == plan.topology.masters[0].name:
        addons.apply_addons(plan)

node.run_containerd(plan, host.name, manager)
node.import_images(plan)
node.service_route(plan, host.name)
node.node_components(plan, host.name, manager, uploads, wheel)

if machine.is_master:
    node.label_control_plane(plan, host.name)
    addons.kube_dns(plan, host.name, manager, uploads, wheel)
