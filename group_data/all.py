"""Cluster settings: every host gets these. Change a value here, then re-run the deploy.

Each value shown is the default. The deploy validates all of them (and the inventory)
before it touches any host; a wrong value stops it with a message naming the setting.
A name that is not listed here is rejected, so a typo cannot fall back to a default.
"""

# Name of the cluster: used in kubeconfig cluster/context names, the etcd cluster
# token and the cluster state folder. A lowercase DNS label.
cluster_name = "kubesmith"

# Virtual IP range for Services (ClusterIPs). Its first address is the `kubernetes`
# Service's IP and is put in the API server's certificate.
service_cidr = "10.96.0.0/12"

# Range pod IPs come from; each node gets a /node_cidr_mask_size slice of it.
# Must not overlap service_cidr or the hosts' own addresses.
pod_cidr = "10.244.0.0/16"

# Prefix length of each node's podCIDR slice of pod_cidr.
node_cidr_mask_size = 24

# Ports NodePort Services are allocated from (inclusive range).
node_port_range = "30000-32767"

# DNS domain of the cluster: Services resolve as <svc>.<namespace>.svc.<dns_domain>.
dns_domain = "cluster.local"

# ClusterIP of the cluster DNS Service (kube-system/kube-dns); must lie in service_cidr.
dns_ip = "10.96.0.10"

# HTTPS port of kube-apiserver on every master.
api_port = 6443

# How components are run on hosts: "systemd", "supervisor", or "auto" (systemd where
# systemd is PID 1, else supervisor, which the deploy installs and starts itself).
service_manager = "auto"

# Where etcd comes from. "debian": the etcd-server package from the host's Debian
# archive (a local mirror on air-gapped sites).
etcd_source = "debian"

# Optional name and/or IP of a load balancer in front of the masters. When set it is
# added to the API server's certificate and used as the server in kubeconfigs.
load_balancer_name = None
load_balancer_ip = None

# Key type for every key the cluster PKI makes: "ecdsa-p256" or "rsa-2048".
key_algorithm = "ecdsa-p256"

# Validity of the certificate authorities and of the certificates they sign, in days.
# The deploy re-issues a certificate that has expired or expires within 30 days.
ca_validity_days = 3650
cert_validity_days = 365

# Cluster state folder on the operator's machine (PKI, kubeconfigs, wheelhouse).
# None means $KUBESMITH_STATE_DIR/<cluster_name> if that variable is set, else
# ~/.kubesmith/clusters/<cluster_name>.
state_dir = None
