"""etcd members: Debian's etcd-server, client-cert auth on client and peer URLs."""
from __future__ import annotations

import os

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, server

from provision import cluster, components
from provision.components import ETCD_DATA_DIR, ETCD_PKI
from roles.services import run_component

# How long the deploy waits for every member to report healthy after a (re)start.
HEALTH_TIMEOUT_SECONDS = 90


@deploy("etcd user and packages")
def prepare_etcd() -> None:
    apt.packages(name="Install etcd (Debian)", packages=["etcd-server", "etcd-client"])
    server.group(name="etcd group", group="etcd", system=True)
    # Debian's package creates the user already; this covers hosts where it did not.
    server.user(name="etcd user", user="etcd", group="etcd", system=True, ensure_home=False)
    for path in (os.path.dirname(ETCD_DATA_DIR), ETCD_DATA_DIR):
        files.directory(name=path, path=path, user="etcd", group="etcd", mode="700")


@deploy("etcd member")
def etcd_member(plan: cluster.ClusterPlan, name: str, manager: str,
                uploads: dict[str, OperationMeta]) -> OperationMeta:
    component = components.etcd(plan.settings, plan.topology, plan.machine(name))
    triggers = [op for path, op in uploads.items() if path in component.files]
    return run_component(component, manager, triggers)


def health_command(endpoints: str) -> str:
    """A bounded wait until `etcdctl endpoint health` passes on every member over TLS."""
    return (
        f"for i in $(seq {HEALTH_TIMEOUT_SECONDS}); do "
        f"ETCDCTL_API=3 etcdctl --endpoints={endpoints} --cacert={ETCD_PKI}/ca.crt "
        f"--cert={ETCD_PKI}/healthcheck-client.crt --key={ETCD_PKI}/healthcheck-client.key "
        f"--command-timeout=3s endpoint health && exit 0; sleep 1; done; "
        f"echo 'etcd did not become healthy within {HEALTH_TIMEOUT_SECONDS}s' >&2; exit 1"
    )


@deploy("Wait for etcd health")
def wait_for_health(plan: cluster.ClusterPlan, started: OperationMeta) -> None:
    endpoints = ",".join(components.etcd_client_urls(plan.topology))
    server.shell(name="etcdctl endpoint health (TLS, every member)",
                 commands=[health_command(endpoints)], _if=started.did_change)
