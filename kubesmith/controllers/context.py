"""What every controller is built from, and the shape of a controller.

    @register("replicaset")
    class ReplicaSetController:
        def __init__(self, ctx: ControllerContext): ...   # get informers, set handlers
        async def run(self, workers: int) -> None: ...    # until cancelled

Informers must be requested in __init__ so the manager can start them all and wait for
their first sync before any controller's run() begins.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from kubesmith.client.events import EventRecorder
from kubesmith.client.informers import InformerFactory
from kubesmith.client.rest import ApiClient


@dataclass
class ControllerContext:
    client: ApiClient
    informers: InformerFactory
    # Parsed command line (upstream flag names with dashes as underscores), e.g.
    # options.cluster_cidr, options.node_monitor_grace_period, options.root_ca_file.
    options: Any
    host: str = ""
    _recorders: dict[str, EventRecorder] = field(default_factory=dict)

    def recorder(self, component: str) -> EventRecorder:
        """Events with upstream's source component, e.g. "replicaset-controller"."""
        if component not in self._recorders:
            self._recorders[component] = EventRecorder(self.client, component, self.host)
        return self._recorders[component]


class Controller(Protocol):
    name: str

    def __init__(self, ctx: ControllerContext) -> None: ...

    async def run(self, workers: int) -> None: ...
