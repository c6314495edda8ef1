"""Masters: kubesmith's control-plane components, run from the component wheel.

kube-apiserver first (the deploy waits for its /readyz after a (re)start), then
kube-controller-manager and kube-scheduler on every master: they reach the master's own
API server through 127.0.0.1 (controller-manager.conf, scheduler.conf) and elect one
active instance each through a Lease in kube-system. After a (re)start the deploy waits
for their /healthz on 127.0.0.1 (:10257, :10259).
"""
from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import server

from provision import cluster, components
from provision.components import Component
from roles.services import run_component

# How long the deploy waits for the API server's /readyz after a (re)start.
READY_TIMEOUT_SECONDS = 60
# ... and for a controller-manager's or scheduler's /healthz.
HEALTHY_TIMEOUT_SECONDS = 60


def _triggers(component: Component, uploads: dict[str, OperationMeta],
              wheel: OperationMeta | None) -> list[OperationMeta]:
    triggers = [op for path, op in uploads.items() if path in component.files]
    if wheel is not None:
        triggers.append(wheel)
    return triggers


@deploy("kube-apiserver")
def kube_apiserver(plan: cluster.ClusterPlan, name: str, manager: str,
                   uploads: dict[str, OperationMeta],
                   wheel: OperationMeta | None) -> None:
    component = components.kube_apiserver(plan.settings, plan.topology, plan.machine(name))
    started = run_component(component, manager, _triggers(component, uploads, wheel))
    # /readyz needs a client certificate like every other path; the admin kubeconfig's
    # is on every master.
    server.shell(
        name="Wait for kube-apiserver /readyz",
        commands=[ready_command(plan.settings.api_port)],
        _if=started.did_change,
    )


@deploy("kube-controller-manager")
def kube_controller_manager(plan: cluster.ClusterPlan, name: str, manager: str,
                            uploads: dict[str, OperationMeta],
                            wheel: OperationMeta | None) -> None:
    component = components.kube_controller_manager(plan.settings, plan.machine(name))
    _run_and_wait_healthy(component, manager, _triggers(component, uploads, wheel),
                          components.CONTROLLER_MANAGER_PORT)


@deploy("kube-scheduler")
def kube_scheduler(plan: cluster.ClusterPlan, name: str, manager: str,
                   uploads: dict[str, OperationMeta],
                   wheel: OperationMeta | None) -> None:
    component = components.kube_scheduler(plan.settings, plan.machine(name))
    _run_and_wait_healthy(component, manager, _triggers(component, uploads, wheel),
                          components.SCHEDULER_PORT)


def _run_and_wait_healthy(component: Component, manager: str,
                          triggers: list[OperationMeta], port: int) -> None:
    started = run_component(component, manager, triggers)
    server.shell(
        name=f"Wait for {component.name} /healthz",
        commands=[healthy_command(component.name, port)],
        _if=started.did_change,
    )


def ready_command(port: int) -> str:
    check = (f"{components.VENV}/bin/python -m kubesmith.client.probe "
             f"--kubeconfig /etc/kubernetes/admin.conf --server https://127.0.0.1:{port} "
             "/readyz >/dev/null")
    return (f"for i in $(seq {READY_TIMEOUT_SECONDS}); do {check} && exit 0; sleep 1; done; "
            f"echo 'kube-apiserver not ready within {READY_TIMEOUT_SECONDS}s' >&2; exit 1")


def healthy_command(name: str, port: int) -> str:
    """Poll https://127.0.0.1:<port>/healthz (self-signed serving certificate, and
    /healthz needs no credentials, as upstream's)."""
    fetch = (f"{components.VENV}/bin/python -c \"import ssl, sys, urllib.request; "
             "c = ssl.create_default_context(); c.check_hostname = False; "
             "c.verify_mode = ssl.CERT_NONE; "
             f"sys.exit(urllib.request.urlopen('https://127.0.0.1:{port}/healthz', "
             "timeout=2, context=c).status != 200)\" >/dev/null 2>&1")
    return (f"for i in $(seq {HEALTHY_TIMEOUT_SECONDS}); do {fetch} && exit 0; sleep 1; "
            f"done; echo '{name} not healthy within {HEALTHY_TIMEOUT_SECONDS}s' >&2; exit 1")
