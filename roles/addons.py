"""Cluster add-ons: the manifest applied once per cluster (first master), and the DNS
server on every master.

The manifest (templates/addons/kube-dns.yaml.j2: the DNS add-on's RBAC for user
system:kube-dns and the kube-system/kube-dns Service with clusterIP = dns_ip) is
server-side applied through the admin kubeconfig with `python -m
kubesmith.client.apply`. A digest of what was last applied is kept beside the manifest
on the host, so the apply runs again only when the manifest changed (or the last apply
did not finish). kubesmith-dns then runs on every master as a component.
"""
from __future__ import annotations

import hashlib
from io import StringIO

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, server

from provision import cluster, components, render
from provision.settings import ClusterSettings
from roles.facts import command_output
from roles.node import ADMIN_KUBECONFIG, wait_running
from roles.services import run_component

ADDONS_DIR = "/etc/kubernetes/addons"
MANIFEST = f"{ADDONS_DIR}/kube-dns.yaml"
APPLIED_MARKER = f"{MANIFEST}.applied"   # sha256 of the manifest last applied in full
APPLY_TIMEOUT_SECONDS = 60


def manifest(settings: ClusterSettings) -> str:
    return render.render("addons/kube-dns.yaml.j2", settings=settings)


def apply_command(port: int, digest: str) -> str:
    return (f"{components.VENV}/bin/python -m kubesmith.client.apply "
            f"--kubeconfig {ADMIN_KUBECONFIG} --server https://127.0.0.1:{port} "
            f"--timeout {APPLY_TIMEOUT_SECONDS} -f {MANIFEST} "
            f"&& echo {digest} > {APPLIED_MARKER}")


@deploy("Add-ons manifest")
def apply_addons(plan: cluster.ClusterPlan) -> None:
    text = manifest(plan.settings)
    digest = hashlib.sha256(text.encode()).hexdigest()
    files.directory(name=ADDONS_DIR, path=ADDONS_DIR, mode="755")
    files.put(name=MANIFEST, src=StringIO(text), dest=MANIFEST, mode="644")
    applied = command_output(f"cat {APPLIED_MARKER} 2>/dev/null || true")
    if applied != digest:
        server.shell(name="Apply the add-ons manifest (server-side)",
                     commands=[apply_command(plan.settings.api_port, digest)])


@deploy("Cluster DNS")
def kube_dns(plan: cluster.ClusterPlan, name: str, manager: str,
             uploads: dict[str, OperationMeta], wheel: OperationMeta | None) -> None:
    component = components.kube_dns(plan.settings, plan.machine(name))
    triggers = [op for path, op in uploads.items() if path in component.files]
    if wheel is not None:
        triggers.append(wheel)
    started = run_component(component, manager, triggers)
    wait_running(component, manager, started)
