"""Run a `Component` under the host's service manager: systemd where it is PID 1, else supervisor.

A component is (re)started only when its rendered unit/program, one of its files
(certs, configs) or the installed wheel changed, so a deploy with no changes restarts
nothing.
"""
from __future__ import annotations

from io import StringIO
from typing import Iterable

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import Directory
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from provision import render
from provision.components import LOG_DIR, Component
from roles.facts import command_output

SUPERVISOR_CONF_DIR = "/etc/supervisor/conf.d"
SUPERVISORD = "supervisord -c /etc/supervisor/supervisord.conf"


def service_manager(setting: str) -> str:
    """Resolve `auto` for the current host: systemd only where systemd is running."""
    if setting != "auto":
        return setting
    return "systemd" if host.get_fact(Directory, "/run/systemd/system") else "supervisor"


@deploy("Service manager")
def prepare_service_manager(manager: str) -> None:
    files.directory(name=f"Log folder {LOG_DIR}", path=LOG_DIR, mode="755")
    if manager != "supervisor":
        return
    apt.packages(name="Install supervisor", packages=["supervisor"])
    files.directory(name="supervisor program folder", path=SUPERVISOR_CONF_DIR, mode="755")
    # Where systemd is absent nothing else keeps supervisord up; start it if it is not
    # answering on its socket (the state is read before the run changes anything).
    running = command_output("supervisorctl pid >/dev/null 2>&1 && echo yes || echo no")
    if running != "yes":
        server.shell(name="Start supervisord", commands=[SUPERVISORD])


def _changed(ops: Iterable[OperationMeta]):
    ops = list(ops)
    return any_changed(*ops) if ops else (lambda: False)


@deploy("Run component")
def run_component(component: Component, manager: str,
                  triggers: Iterable[OperationMeta] = ()) -> OperationMeta:
    """Install the component's unit/program and keep it running.

    `triggers` are the operations that wrote the component's files or its code: when any
    of them changed something, the component restarts. Returns the operation that
    (re)starts it, so callers can wait for readiness only after an actual start.
    """
    triggers = list(triggers)
    if manager == "systemd":
        unit = files.put(
            name=f"systemd unit {component.name}",
            src=StringIO(render.systemd_unit(component)),
            dest=f"/etc/systemd/system/{component.name}.service",
            mode="644",
        )
        systemd.daemon_reload(name="systemd daemon-reload", _if=unit.did_change)
        restart = server.shell(
            name=f"Restart {component.name}",
            commands=[f"systemctl restart {component.name}"],
            _if=_changed([unit, *triggers]),
        )
        systemd.service(name=f"{component.name} enabled and running",
                        service=component.name, running=True, enabled=True)
        return restart

    program = files.put(
        name=f"supervisor program {component.name}",
        src=StringIO(render.supervisor_program(component)),
        dest=f"{SUPERVISOR_CONF_DIR}/{component.name}.conf",
        mode="644",
    )
    status = command_output(f"supervisorctl status {component.name} 2>/dev/null || true")
    # `update` adds a new program or applies a changed one (restarting it); a restart is
    # only needed when just its files or the code changed.
    start = server.shell(
        name=f"Apply supervisor program {component.name}",
        commands=[f"supervisorctl update {component.name}",
                  f"supervisorctl start {component.name}"],
        _if=program.did_change,
    )
    restart_needed = _changed(triggers)
    restart = server.shell(
        name=f"Restart {component.name}",
        commands=[f"supervisorctl restart {component.name}"],
        _if=lambda: restart_needed() and not program.did_change(),
    )
    if status and "RUNNING" not in status:
        # Stopped or crashed by hand between runs: bring it back.
        server.shell(
            name=f"Start {component.name}",
            commands=[f"supervisorctl start {component.name}"],
            _if=lambda: not program.did_change() and not restart_needed(),
        )
    return _EitherOp(start, restart)


class _EitherOp:
    """Looks like an operation result that changed when either of two did."""

    def __init__(self, *ops: OperationMeta):
        self._ops = ops

    def did_change(self) -> bool:
        return any(op.did_change() for op in self._ops)
