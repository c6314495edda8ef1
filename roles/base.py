"""What every host gets: kubesmith's folders, its PKI files, and the component wheel."""
from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, server

from provision import cluster
from provision.components import VENV
from provision.wheelhouse import Platform, Wheelhouse
from roles.facts import command_output

WHEELHOUSE = "/opt/kubesmith/wheelhouse"
INSTALLED_MARKER = f"{VENV}/kubesmith-wheelhouse.sha256"
PIP = f"{VENV}/bin/pip"


def host_platform() -> Platform:
    """The host's Python version and CPU architecture: which dependency wheels fit it."""
    python = command_output("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")
    machine = command_output("uname -m")
    return Platform(python=python, machine=machine)


@deploy("Host files")
def install_host_files(plan: cluster.ClusterPlan,
                       owners: dict[str, str] | None = None) -> dict[str, OperationMeta]:
    """Upload this host's certificates, keys and kubeconfigs; keys end up 0600.

    `owners` maps a remote folder to the user owning the files in it (etcd's files
    belong to the etcd user). Returns the upload operation per remote path so
    components can restart when one of their files changed.
    """
    owners = owners or {}
    files.directory(name="/etc/kubernetes", path="/etc/kubernetes", mode="755")
    files.directory(name="/etc/kubernetes/pki", path="/etc/kubernetes/pki", mode="755")
    uploads = {}
    for item in plan.host_files(host.name):
        uploads[item.remote] = files.put(
            name=f"{item.remote}",
            src=str(item.local),
            dest=item.remote,
            user=owners.get(str(Path(item.remote).parent), "root"),
            mode="600" if item.secret else "644",
        )
    return uploads


@deploy("Component wheel")
def install_wheel(wheels: Wheelhouse) -> OperationMeta:
    """Ship the wheelhouse and install it into the venv with `pip --no-index`.

    Returns the install operation: it changed only when the wheels changed.
    """
    apt.packages(name="Python venv support", packages=["python3", "python3-venv"])
    files.directory(name=WHEELHOUSE, path=WHEELHOUSE, mode="755")
    sync = files.sync(
        name="Upload wheelhouse",
        src=str(wheels.directory),
        dest=WHEELHOUSE,
        delete=True,
        exclude=[".source-sha256"],
        mode="644",
        dir_mode="755",
    )
    if not _venv_exists():
        server.shell(name=f"Create {VENV}", commands=[f"python3 -m venv {VENV}"])
    installed = command_output(f"cat {INSTALLED_MARKER} 2>/dev/null || true")
    if installed == wheels.digest:
        return sync  # nothing uploaded when nothing changed, so this reports no change
    component = f"{WHEELHOUSE}/{wheels.component_wheel}"
    return server.shell(
        name="Install kubesmith wheel (no index)",
        commands=[
            # Dependencies first, then the component wheel itself even if its version
            # string did not change (its contents did).
            f"{PIP} install --quiet --no-index --find-links {WHEELHOUSE} {component}",
            f"{PIP} install --quiet --no-index --no-deps --force-reinstall {component}",
            f"{VENV}/bin/python -m kubesmith",
            f"echo {wheels.digest} > {INSTALLED_MARKER}",
        ],
    )


def _venv_exists() -> bool:
    out = command_output(f"test -x {VENV}/bin/python && echo yes || echo no")
    return out == "yes"
