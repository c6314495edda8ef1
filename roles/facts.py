"""Read-only facts about the current host, gathered before the run changes anything."""
from __future__ import annotations

from pyinfra import host
from pyinfra.facts.server import Command


def command_output(command: str) -> str:
    """The stripped output of a read-only command ('' when it prints nothing).

    The command must succeed, so callers end fallible ones with `|| true`.
    """
    return (host.get_fact(Command, command) or "").strip()
