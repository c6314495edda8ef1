"""One scheduling cycle: filter nodes, score the feasible ones, pick the best.

As upstream, not every node is examined in a large cluster: the search starts where the
previous one stopped and ends once enough feasible nodes are found
(percentageOfNodesToScore, adaptive by default). A pod that fits nowhere raises
FitError, whose text is upstream's FailedScheduling message.
"""
from __future__ import annotations

import random
from collections import Counter

from kubesmith.scheduler.cache import NamespaceLabels, NodeInfo, PodInfo, SchedulerCache
from kubesmith.scheduler.plugins import SCORES, CycleState, run_filters

MIN_FEASIBLE_NODES = 100            # upstream's minFeasibleNodesToFind
MIN_FEASIBLE_PERCENTAGE = 5         # upstream's minFeasibleNodesPercentageToFind
DEFAULT_PERCENTAGE = 50             # upstream's DefaultPercentageOfNodesToScore base
NO_NODES_MESSAGE = "no nodes available to schedule pods"
PREEMPTION_NOT_HELPFUL = "Preemption is not helpful for scheduling"


class FitError(Exception):
    """No node fits: `reasons` maps each examined node to why not."""

    def __init__(self, pod: PodInfo, num_nodes: int, reasons: dict[str, tuple[str, ...]]):
        self.pod = pod
        self.num_nodes = num_nodes
        self.reasons = reasons
        super().__init__(fit_error_message(num_nodes, reasons))


class NoNodesAvailable(Exception):
    def __init__(self) -> None:
        super().__init__(NO_NODES_MESSAGE)


def fit_error_message(num_nodes: int, reasons: dict[str, tuple[str, ...]]) -> str:
    """"0/N nodes are available: <count> <reason>, .... preemption: 0/N nodes are
    available: N Preemption is not helpful for scheduling." (reasons counted over nodes,
    sorted by their text as upstream's FitError.Error sorts them). No preemption is
    implemented, so its part always says it could not help."""
    histogram: Counter = Counter()
    for node_reasons in reasons.values():
        for reason in node_reasons:
            histogram[reason] += 1
    message = f"0/{num_nodes} nodes are available:"
    parts = sorted(f"{count} {reason}" for reason, count in histogram.items())
    if parts:
        message += f" {', '.join(parts)}."
    message += (f" preemption: 0/{num_nodes} nodes are available: {num_nodes} "
                f"{PREEMPTION_NOT_HELPFUL}.")
    return message


def num_feasible_nodes_to_find(num_nodes: int, percentage: int = 0) -> int:
    """Upstream's numFeasibleNodesToFind with percentageOfNodesToScore (0: adaptive)."""
    if num_nodes < MIN_FEASIBLE_NODES or percentage >= 100:
        return num_nodes
    if percentage <= 0:
        percentage = max(DEFAULT_PERCENTAGE - num_nodes // 125, MIN_FEASIBLE_PERCENTAGE)
    count = num_nodes * percentage // 100
    return max(count, MIN_FEASIBLE_NODES)


class Framework:
    """Schedules one pod at a time against a SchedulerCache."""

    def __init__(self, cache: SchedulerCache, percentage_of_nodes_to_score: int = 0,
                 rng: random.Random | None = None,
                 namespace_labels: NamespaceLabels | None = None):
        self.cache = cache
        self.namespace_labels = namespace_labels
        self.percentage = percentage_of_nodes_to_score
        self.rng = rng or random.Random()
        self._next_start = 0

    def schedule(self, pod: PodInfo) -> str:
        """The chosen node's name; raises FitError or NoNodesAvailable."""
        nodes = self.cache.node_infos()
        if not nodes:
            raise NoNodesAvailable()
        state = CycleState(pod, nodes, self.namespace_labels)
        feasible = self._find_feasible(state, nodes)
        if isinstance(feasible, dict):
            raise FitError(pod, len(nodes), feasible)
        if len(feasible) == 1:
            return feasible[0].name
        return self._select(self._score(state, feasible), feasible)

    def _find_feasible(self, state: CycleState, nodes: list[NodeInfo]
                       ) -> list[NodeInfo] | dict[str, tuple[str, ...]]:
        """Feasible nodes, or, when there is none, every node's reasons."""
        total = len(nodes)
        wanted = num_feasible_nodes_to_find(total, self.percentage)
        start = self._next_start % total
        feasible: list[NodeInfo] = []
        reasons: dict[str, tuple[str, ...]] = {}
        examined = 0
        for offset in range(total):
            node = nodes[(start + offset) % total]
            examined += 1
            failed = run_filters(state, node)
            if failed:
                reasons[node.name] = failed
            else:
                feasible.append(node)
                if len(feasible) >= wanted:
                    break
        self._next_start = (start + examined) % total
        return feasible if feasible else reasons

    @staticmethod
    def _score(state: CycleState, nodes: list[NodeInfo]) -> list[int]:
        totals = [0] * len(nodes)
        for score, weight in SCORES:
            values = score(state, nodes)
            if values is None:
                continue
            for index, value in enumerate(values):
                totals[index] += value * weight
        return totals

    def _select(self, totals: list[int], nodes: list[NodeInfo]) -> str:
        """The highest total; ties broken at random, each tied node equally likely (as
        upstream's reservoir sampling)."""
        best = max(totals)
        tied = [index for index, total in enumerate(totals) if total == best]
        return nodes[tied[0] if len(tied) == 1 else self.rng.choice(tied)].name
