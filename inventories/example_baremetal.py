"""Example inventory for real machines: copy it, put in your hosts, deploy.

    cp inventories/example_baremetal.py inventories/mysite.py   # then edit mysite.py
    pyinfra --dry inventories/mysite.py deploy.py               # what would change
    pyinfra -y inventories/mysite.py deploy.py

What the deploy needs from an inventory:

- the groups `masters` (at least one host), `workers` (may be empty) and `etcd` (1, 3
  or 5 hosts, usually the masters; etcd needs an odd count to keep a quorum); every
  host is a Kubernetes node, so its name must be a lowercase DNS label;
- per host, `address`: the IP the cluster uses for the node (in certificates, etcd peer
  URLs, the API server's advertise address). It must not lie in `service_cidr` or
  `pod_cidr` (group_data/all.py). SSH may go to another address (`ssh_hostname`), for
  example over a management network;
- a login that can become root: either `ssh_user="root"`, or a user with passwordless
  sudo and `_sudo=True` (pyinfra then runs every operation and fact with sudo). With
  sudo, pyinfra uploads each file (private keys too) to the host's /tmp as the login
  user and then copies it into place as root; on hosts that other people can log in
  to, prefer root, or make sshd's SFTP create files private
  (`Subsystem sftp internal-sftp -u 077`);
- Debian 12 hosts with python3, and apt able to install `etcd-server`, `supervisor` and
  `python3-venv` (a local mirror on air-gapped sites). Everything else (certificates,
  kubeconfigs, the component wheel and its dependencies) is pushed from the operator's
  machine.

The addresses below are from 192.0.2.0/24, a range reserved for documentation: replace
them with your own. Cluster settings (service_cidr, dns_ip, ...) stay in
group_data/all.py; they must not be set per host.
"""

# How pyinfra logs in to every host. Names starting with "_" are not groups.
_LOGIN = {
    "ssh_user": "ops",                       # a user with passwordless sudo ...
    "_sudo": True,                           # ... which pyinfra uses for everything
    "ssh_key": "~/.ssh/kubesmith_ed25519",   # its private key on the operator's machine
    # Check host keys against a known_hosts file you keep for the site (collect the keys
    # with `ssh-keyscan` or from your provisioning system); "yes" refuses unknown hosts.
    "ssh_known_hosts_file": "~/.ssh/known_hosts",
    "ssh_strict_host_key_checking": "yes",
    # "ssh_port": 22,
}


def _host(name: str, address: str, ssh_hostname: str | None = None) -> tuple[str, dict]:
    """One machine: its node name, its cluster address, and where SSH reaches it."""
    return (name, {**_LOGIN, "ssh_hostname": ssh_hostname or address, "address": address})


masters = [
    _host("master-1", "192.0.2.11"),
    _host("master-2", "192.0.2.12"),
    _host("master-3", "192.0.2.13"),
]

workers = [
    _host("worker-1", "192.0.2.21"),
    _host("worker-2", "192.0.2.22"),
    # SSH over a management network, cluster traffic on 192.0.2.0/24:
    _host("worker-3", "192.0.2.23", ssh_hostname="198.51.100.23"),
]

# etcd on the three masters. With one master, or two: etcd = masters[:1].
etcd = list(masters)
