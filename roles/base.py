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
from roles.files import FileSpec, put_files, remove_files

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
    belong to the etcd user). Returns the upload operation per remote path that
    changed, so components restart only when one of their files did.
    """
    owners = owners or {}
    files.directory(name="/etc/kubernetes", path="/etc/kubernetes", mode="755")
    files.directory(name="/etc/kubernetes/pki", path="/etc/kubernetes/pki", mode="755")
    specs = []
    for item in plan.host_files(host.name):
        owner = owners.get(str(Path(item.remote).parent), "root")
        specs.append(FileSpec(local=item.local, remote=item.remote,
                              mode="600" if item.secret else "644", user=owner, group=owner))
    return put_files(specs)


@deploy("Component wheel")
def install_wheel(wheels: Wheelhouse) -> OperationMeta | None:
    """Ship the wheelhouse and install it into the venv with `pip --no-index`.

    Returns the install operation, or None when the venv already has these wheels.
    """
    apt.packages(name="Python venv support", packages=["python3", "python3-venv"])
    files.directory(name=WHEELHOUSE, path=WHEELHOUSE, mode="755")
    uploads = put_files([FileSpec(local=wheels.directory / name, remote=f"{WHEELHOUSE}/{name}")
                         for name in wheels.wheels])
    remove_files(WHEELHOUSE, keep=set(wheels.wheels))
    if not _venv_exists():
        server.shell(name=f"Create {VENV}", commands=[f"python3 -m venv {VENV}"])
    installed = command_output(f"cat {INSTALLED_MARKER} 2>/dev/null || true")
    if installed == wheels.digest:
        return None  # the installed wheels are these very wheels: nothing to do
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
