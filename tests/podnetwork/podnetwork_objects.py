"""Node dicts for the pod-network agent's tests."""
from __future__ import annotations


def node(name, pod_cidr=None, internal_ip=None, *, external_ip=None):
    addresses = []
    if internal_ip:
        addresses.append({"type": "InternalIP", "address": internal_ip})
    if external_ip:
        addresses.append({"type": "ExternalIP", "address": external_ip})
    addresses.append({"type": "Hostname", "address": name})
    spec = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]} if pod_cidr else {}
    return {"metadata": {"name": name}, "spec": spec, "status": {"addresses": addresses}}
