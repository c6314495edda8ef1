"""Masters: kubesmith's control-plane components, run from the component wheel."""
from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import server

from provision import cluster, components
from roles.services import run_component

# How long the deploy waits for the API server's /readyz after a (re)start.
READY_TIMEOUT_SECONDS = 60


@deploy("kube-apiserver")
def kube_apiserver(plan: cluster.ClusterPlan, name: str, manager: str,
                   uploads: dict[str, OperationMeta],
                   wheel: OperationMeta | None) -> None:
    component = components.kube_apiserver(plan.settings, plan.topology, plan.machine(name))
    triggers = [op for path, op in uploads.items() if path in component.files]
    if wheel is not None:
        triggers.append(wheel)
    started = run_component(component, manager, triggers)
    # /readyz needs a client certificate like every other path; the admin kubeconfig's
    # is on every master.
    server.shell(
        name="Wait for kube-apiserver /readyz",
        commands=[ready_command(plan.settings.api_port)],
        _if=started.did_change,
    )


def ready_command(port: int) -> str:
    check = (f"{components.VENV}/bin/python -m kubesmith.client.probe "
             f"--kubeconfig /etc/kubernetes/admin.conf --server https://127.0.0.1:{port} "
             "/readyz >/dev/null")
    return (f"for i in $(seq {READY_TIMEOUT_SECONDS}); do {check} && exit 0; sleep 1; done; "
            f"echo 'kube-apiserver not ready within {READY_TIMEOUT_SECONDS}s' >&2; exit 1")
