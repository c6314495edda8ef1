"""The default plugins' filters and scores, on precomputed PodInfo/NodeInfo.

A filter answers None when the node fits, or the reasons it does not, in upstream's
words (they make the FailedScheduling message). A score gives a raw number per node;
its normalisation brings the numbers to 0..100 (MAX_SCORE) before the plugin's weight.
Per-pod work that is the same for every node (upstream's PreFilter/PreScore) is done
once, in CycleState.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Sequence

from kubesmith.api.validation import selector_matches
from kubesmith.scheduler.cache import (
    HOSTNAME_LABEL,
    ZONE_LABEL,
    NamespaceLabels,
    NodeInfo,
    PodInfo,
)

Obj = dict[str, Any]
MAX_SCORE = 100
HARD_POD_AFFINITY_WEIGHT = 1    # upstream's hardPodAffinityWeight default

# Upstream's reason texts.
ERR_UNSCHEDULABLE = "node(s) were unschedulable"
ERR_NODE_NAME = "node(s) didn't match the requested node name"
ERR_NODE_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
ERR_NODE_PORTS = "node(s) didn't have free ports for the requested pod ports"
ERR_TOO_MANY_PODS = "Too many pods"
ERR_AFFINITY = "node(s) didn't match pod affinity rules"
ERR_ANTI_AFFINITY = "node(s) didn't match pod anti-affinity rules"
ERR_EXISTING_ANTI_AFFINITY = "node(s) didn't satisfy existing pods anti-affinity rules"
ERR_SPREAD = "node(s) didn't match pod topology spread constraints"
ERR_SPREAD_LABEL = ERR_SPREAD + " (missing required label)"

UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"


# --- matching helpers -----------------------------------------------------------------

def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """core/v1 Toleration.ToleratesTaint."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    if operator == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return False


def untolerated_taint(taints: Iterable[Mapping[str, Any]], tolerations: Sequence[Obj],
                      effects: tuple[str, ...]) -> Mapping[str, Any] | None:
    for taint in taints:
        if taint.get("effect") in effects and not any(tolerates(t, taint)
                                                       for t in tolerations):
            return taint
    return None


def _requirement_matches(expr: Mapping[str, Any],
                         value_of: Callable[[str], str | None]) -> bool:
    key, operator = expr.get("key", ""), expr.get("operator")
    values = expr.get("values") or ()
    value = value_of(key)
    if operator == "In":
        return value is not None and value in values
    if operator == "NotIn":
        return value is None or value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt"):
        try:
            have, want = int(value), int(values[0])     # type: ignore[arg-type]
        except (TypeError, ValueError, IndexError):
            return False
        return have > want if operator == "Gt" else have < want
    return False


def node_selector_term_matches(term: Mapping[str, Any], node: NodeInfo) -> bool:
    """A NodeSelectorTerm: all its label expressions and field expressions (only
    metadata.name exists); a term with neither matches no node."""
    expressions = term.get("matchExpressions") or ()
    fields = term.get("matchFields") or ()
    if not expressions and not fields:
        return False
    labels = node.labels
    if not all(_requirement_matches(e, labels.get) for e in expressions):
        return False
    name_of = {"metadata.name": node.name}.get
    return all(_requirement_matches(f, name_of) for f in fields)


def matches_node_affinity(pod: PodInfo, node: NodeInfo) -> bool:
    """nodeSelector and requiredDuringSchedulingIgnoredDuringExecution."""
    labels = node.labels
    for key, value in pod.node_selector.items():
        if labels.get(key) != value:
            return False
    terms = pod.required_node_terms
    if terms is not None:
        return any(node_selector_term_matches(term, node) for term in terms)
    return True


# --- per-pod state --------------------------------------------------------------------

class SpreadConstraint:
    __slots__ = ("max_skew", "topology_key", "selector", "min_domains", "self_match")

    def __init__(self, raw: Mapping[str, Any], pod: PodInfo):
        self.max_skew = int(raw.get("maxSkew") or 1)
        self.topology_key = raw.get("topologyKey") or ""
        selector = raw.get("labelSelector")
        keys = raw.get("matchLabelKeys") or ()
        if keys and isinstance(selector, dict):
            # matchLabelKeys: the pod's own values for these keys join the selector.
            extra = [{"key": k, "operator": "In", "values": [pod.labels[k]]}
                     for k in keys if k in pod.labels]
            selector = dict(selector, matchExpressions=list(
                selector.get("matchExpressions") or ()) + extra)
        self.selector = selector
        self.min_domains = int(raw.get("minDomains") or 1)
        self.self_match = 1 if selector_matches(selector, pod.labels) else 0

    def count_on(self, node: NodeInfo, namespace: str) -> int:
        return sum(1 for p in node.pods.values()
                   if p.namespace == namespace and not p.terminating
                   and selector_matches(self.selector, p.labels))


class CycleState:
    """What one pod's scheduling cycle computes once for all nodes."""

    def __init__(self, pod: PodInfo, nodes: list[NodeInfo],
                 namespace_labels: NamespaceLabels | None = None):
        self.pod = pod
        self.nodes = nodes
        self.namespace_labels = namespace_labels
        # InterPodAffinity filter
        self.existing_anti: Counter = Counter()
        self.affinity_counts: Counter = Counter()
        self.anti_counts: Counter = Counter()
        self.check_affinity = False
        self.affinity_pods_exist = False    # any pod with (anti-)affinity on any node
        # PodTopologySpread filter
        self.hard_spread: list[tuple[SpreadConstraint, Counter, int]] = []
        self._prefilter()
        self.filters = filters_for(self)

    def _prefilter(self) -> None:
        pod, labels_of = self.pod, self.namespace_labels
        for node in self.nodes:
            if node.with_affinity:
                self.affinity_pods_exist = True
            if node.with_required_anti_affinity:
                labels = node.labels
                for existing in node.with_required_anti_affinity.values():
                    for term in existing.anti_affinity:
                        if term.topology_key in labels and term.matches(pod, labels_of):
                            self.existing_anti[(term.topology_key,
                                                labels[term.topology_key])] += 1
        if pod.affinity or pod.anti_affinity:
            for node in self.nodes:
                labels = node.labels
                for existing in node.pods.values():
                    if pod.affinity and all(t.matches(existing, labels_of) for t in pod.affinity):
                        for term in pod.affinity:
                            if term.topology_key in labels:
                                self.affinity_counts[(term.topology_key,
                                                      labels[term.topology_key])] += 1
                    for term in pod.anti_affinity:
                        if term.topology_key in labels and term.matches(existing, labels_of):
                            self.anti_counts[(term.topology_key,
                                              labels[term.topology_key])] += 1
        self.check_affinity = bool(self.existing_anti or pod.affinity or pod.anti_affinity)
        self.affinity_self_match = bool(pod.affinity) and all(
            t.matches(pod, labels_of) for t in pod.affinity)
        hard = [SpreadConstraint(c, pod) for c in pod.spread_constraints
                if (c.get("whenUnsatisfiable") or "DoNotSchedule") == "DoNotSchedule"]
        if hard:
            keys = [c.topology_key for c in hard]
            counts = [Counter() for _ in hard]
            for node in self.nodes:
                if not all(k in node.labels for k in keys) \
                        or not matches_node_affinity(pod, node):
                    continue
                for constraint, counter in zip(hard, counts):
                    counter[node.labels[constraint.topology_key]] += constraint.count_on(
                        node, pod.namespace)
            for constraint, counter in zip(hard, counts):
                minimum = min(counter.values()) if counter else 0
                if len(counter) < constraint.min_domains:
                    minimum = 0
                self.hard_spread.append((constraint, counter, minimum))


# --- filters --------------------------------------------------------------------------

Reasons = tuple[str, ...] | None


def filter_node_unschedulable(state: CycleState, node: NodeInfo) -> Reasons:
    if node.unschedulable and not any(
            tolerates(t, {"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"})
            for t in state.pod.tolerations):
        return (ERR_UNSCHEDULABLE,)
    return None


def filter_node_name(state: CycleState, node: NodeInfo) -> Reasons:
    wanted = state.pod.pod.get("spec", {}).get("nodeName")
    if wanted and wanted != node.name:
        return (ERR_NODE_NAME,)
    return None


def filter_taint_toleration(state: CycleState, node: NodeInfo) -> Reasons:
    if not node.taints:
        return None
    taint = untolerated_taint(node.taints, state.pod.tolerations, ("NoSchedule", "NoExecute"))
    if taint is not None:
        return (f"node(s) had untolerated taint {{{taint.get('key', '')}: "
                f"{taint.get('value') or ''}}}",)
    return None


def filter_node_affinity(state: CycleState, node: NodeInfo) -> Reasons:
    return None if matches_node_affinity(state.pod, node) else (ERR_NODE_AFFINITY,)


def filter_node_ports(state: CycleState, node: NodeInfo) -> Reasons:
    if state.pod.host_ports and node.port_conflict(state.pod.host_ports):
        return (ERR_NODE_PORTS,)
    return None


def filter_resources_fit(state: CycleState, node: NodeInfo) -> Reasons:
    """Every insufficient resource is a reason of its own, as upstream reports them."""
    want = state.pod.requests
    have, used = node.allocatable, node.requested
    if (len(node.pods) < node.allowed_pods and not want.scalars
            and want.milli_cpu <= have.milli_cpu - used.milli_cpu
            and want.memory <= have.memory - used.memory
            and want.ephemeral <= have.ephemeral - used.ephemeral):
        return None     # the common case, decided without building a list
    reasons = []
    if len(node.pods) + 1 > node.allowed_pods:
        reasons.append(ERR_TOO_MANY_PODS)
    if want.milli_cpu and want.milli_cpu > have.milli_cpu - used.milli_cpu:
        reasons.append("Insufficient cpu")
    if want.memory and want.memory > have.memory - used.memory:
        reasons.append("Insufficient memory")
    if want.ephemeral and want.ephemeral > have.ephemeral - used.ephemeral:
        reasons.append("Insufficient ephemeral-storage")
    for name, amount in want.scalars.items():
        if amount and amount > have.scalars.get(name, 0) - used.scalars.get(name, 0):
            reasons.append(f"Insufficient {name}")
    return tuple(reasons) if reasons else None


def filter_topology_spread(state: CycleState, node: NodeInfo) -> Reasons:
    if not state.hard_spread:
        return None
    labels = node.labels
    for constraint, counts, minimum in state.hard_spread:
        value = labels.get(constraint.topology_key)
        if value is None:
            return (ERR_SPREAD_LABEL,)
        skew = counts.get(value, 0) + constraint.self_match - minimum
        if skew > constraint.max_skew:
            return (ERR_SPREAD,)
    return None


def filter_inter_pod_affinity(state: CycleState, node: NodeInfo) -> Reasons:
    if not state.check_affinity:
        return None
    pod, labels = state.pod, node.labels
    if pod.affinity:
        satisfied = all(t.topology_key in labels
                        and state.affinity_counts[(t.topology_key, labels[t.topology_key])] > 0
                        for t in pod.affinity)
        # The first pod of a group that selects itself may go anywhere its keys exist.
        if not satisfied and not (not state.affinity_counts and state.affinity_self_match
                                  and all(t.topology_key in labels for t in pod.affinity)):
            return (ERR_AFFINITY,)
    for term in pod.anti_affinity:
        value = labels.get(term.topology_key)
        if value is not None and state.anti_counts[(term.topology_key, value)] > 0:
            return (ERR_ANTI_AFFINITY,)
    if state.existing_anti:
        for pair in labels.items():
            if state.existing_anti.get(pair, 0) > 0:
                return (ERR_EXISTING_ANTI_AFFINITY,)
    return None


# Upstream's order of the default filter plugins.
FILTERS: tuple[Callable[[CycleState, NodeInfo], Reasons], ...] = (
    filter_node_unschedulable,
    filter_node_name,
    filter_taint_toleration,
    filter_node_affinity,
    filter_node_ports,
    filter_resources_fit,
    filter_topology_spread,
    filter_inter_pod_affinity,
)


def filters_for(state: CycleState) -> list[Callable[[CycleState, NodeInfo], Reasons]]:
    """The filters that can fail for this pod, in FILTERS' order (the others would
    pass every node; skipping them is most of a cycle's cost on large clusters)."""
    pod = state.pod
    skip = set()
    if not pod.pod.get("spec", {}).get("nodeName"):
        skip.add(filter_node_name)
    if not pod.node_selector and pod.required_node_terms is None:
        skip.add(filter_node_affinity)
    if not pod.host_ports:
        skip.add(filter_node_ports)
    if not state.hard_spread:
        skip.add(filter_topology_spread)
    if not state.check_affinity:
        skip.add(filter_inter_pod_affinity)
    return [check for check in FILTERS if check not in skip]


def run_filters(state: CycleState, node: NodeInfo) -> Reasons:
    for check in state.filters:
        reasons = check(state, node)
        if reasons:
            return reasons
    return None


# --- scores ---------------------------------------------------------------------------

def default_normalize(scores: list[int], reverse: bool = False) -> list[int]:
    """Upstream's DefaultNormalizeScore."""
    highest = max(scores, default=0)
    if highest == 0:
        return [MAX_SCORE if reverse else 0 for _ in scores]
    normal = [MAX_SCORE * s // highest for s in scores]
    return [MAX_SCORE - s for s in normal] if reverse else normal


def score_least_allocated(state: CycleState, nodes: list[NodeInfo]) -> list[int]:
    """NodeResourcesFit (LeastAllocated, cpu and memory weighted equally), on requests
    with upstream's defaults for containers that give none."""
    pod_cpu, pod_memory = state.pod.non_zero_cpu, state.pod.non_zero_memory
    out = []
    append = out.append
    for node in nodes:
        total = 0
        capacity = node.allocatable.milli_cpu
        requested = node.non_zero_cpu + pod_cpu
        if capacity > 0 and requested <= capacity:
            total += (capacity - requested) * MAX_SCORE // capacity
        capacity = node.allocatable.memory
        requested = node.non_zero_memory + pod_memory
        if capacity > 0 and requested <= capacity:
            total += (capacity - requested) * MAX_SCORE // capacity
        append(total // 2)
    return out


def score_balanced_allocation(state: CycleState, nodes: list[NodeInfo]) -> list[int]:
    """NodeResourcesBalancedAllocation: 100 when cpu and memory are used in the same
    proportion, less as they drift apart (the standard deviation of the two)."""
    want = state.pod.requests
    pod_cpu, pod_memory = want.milli_cpu, want.memory
    out = []
    append = out.append
    for node in nodes:
        allocatable, requested = node.allocatable, node.requested
        cpu_capacity, memory_capacity = allocatable.milli_cpu, allocatable.memory
        if cpu_capacity > 0 and memory_capacity > 0:
            cpu = min((requested.milli_cpu + pod_cpu) / cpu_capacity, 1.0)
            memory = min((requested.memory + pod_memory) / memory_capacity, 1.0)
            append(int((1 - abs(cpu - memory) / 2) * MAX_SCORE))
        else:
            append(MAX_SCORE)
    return out


def score_node_affinity(state: CycleState, nodes: list[NodeInfo]) -> list[int] | None:
    terms = state.pod.preferred_node_terms
    if not terms:
        return None
    raw = [sum(int(t.get("weight") or 0) for t in terms
               if node_selector_term_matches(t.get("preference") or {}, node))
           for node in nodes]
    return default_normalize(raw)


def score_taint_toleration(state: CycleState, nodes: list[NodeInfo]) -> list[int] | None:
    tolerations = [t for t in state.pod.tolerations
                   if (t.get("effect") or "PreferNoSchedule") == "PreferNoSchedule"]
    raw = [sum(1 for taint in node.taints if taint.get("effect") == "PreferNoSchedule"
               and not any(tolerates(t, taint) for t in tolerations))
           if node.taints else 0 for node in nodes]
    if not any(raw):
        return None     # all 100: no difference between nodes
    return default_normalize(raw, reverse=True)


def score_inter_pod_affinity(state: CycleState, nodes: list[NodeInfo]) -> list[int] | None:
    """Preferred pod (anti-)affinity of the pod towards existing pods, and of existing
    pods (their required affinity counting HARD_POD_AFFINITY_WEIGHT) towards it."""
    pod, labels_of = state.pod, state.namespace_labels
    preferred = pod.preferred_affinity or pod.preferred_anti_affinity
    if not preferred and not state.affinity_pods_exist:
        return None
    topology: Counter = Counter()
    for node in state.nodes:
        labels = node.labels
        if not labels:
            continue
        existing_pods = node.pods.values() if preferred else node.with_affinity.values()
        for existing in existing_pods:
            for term in pod.preferred_affinity:
                if term.topology_key in labels and term.matches(existing, labels_of):
                    topology[(term.topology_key, labels[term.topology_key])] += term.weight
            for term in pod.preferred_anti_affinity:
                if term.topology_key in labels and term.matches(existing, labels_of):
                    topology[(term.topology_key, labels[term.topology_key])] -= term.weight
            if not existing.has_affinity:
                continue
            for term in existing.affinity:
                if term.topology_key in labels and term.matches(pod, labels_of):
                    topology[(term.topology_key, labels[term.topology_key])] += \
                        HARD_POD_AFFINITY_WEIGHT
            for term in existing.preferred_affinity:
                if term.topology_key in labels and term.matches(pod, labels_of):
                    topology[(term.topology_key, labels[term.topology_key])] += term.weight
            for term in existing.preferred_anti_affinity:
                if term.topology_key in labels and term.matches(pod, labels_of):
                    topology[(term.topology_key, labels[term.topology_key])] -= term.weight
    if not any(topology.values()):
        return None
    raw = [sum(topology.get(pair, 0) for pair in node.labels.items()) for node in nodes]
    low, high = min(raw), max(raw)
    if high == low:
        return [0] * len(raw)
    return [int(MAX_SCORE * (s - low) / (high - low)) for s in raw]


# System default spreading (upstream's defaultConstraints: hostname maxSkew 3, zone
# maxSkew 5, ScheduleAnyway), here over the pods of the same controlling owner.
DEFAULT_SPREAD = ((HOSTNAME_LABEL, 3), (ZONE_LABEL, 5))


def score_topology_spread(state: CycleState, nodes: list[NodeInfo]) -> list[int] | None:
    pod = state.pod
    soft = [SpreadConstraint(c, pod) for c in pod.spread_constraints
            if c.get("whenUnsatisfiable") == "ScheduleAnyway"]
    if pod.spread_constraints and not soft:
        return None
    if soft:
        constraints = [(c.topology_key, c.max_skew) for c in soft]
        required = [key for key, _ in constraints]    # explicit keys must be on the node

        def count_on(index: int, node: NodeInfo) -> int:
            return soft[index].count_on(node, pod.namespace)
    elif pod.owner_uid:
        # The defaults skip a key no node has (a cluster without zones) and take each
        # node as its own hostname domain.
        constraints = [(key, skew) for key, skew in DEFAULT_SPREAD if key == HOSTNAME_LABEL
                       or any(key in node.labels for node in state.nodes)]
        required = [key for key, _ in constraints if key != HOSTNAME_LABEL]

        def count_on(index: int, node: NodeInfo) -> int:
            return node.owner_counts.get(pod.owner_uid, 0)
    else:
        return None
    counts: list[Counter] = [Counter() for _ in constraints]
    domains: list[set] = [set() for _ in constraints]
    for node in state.nodes:
        if not all(k in node.labels for k in required):
            continue
        for index, (key, _) in enumerate(constraints):
            if key == HOSTNAME_LABEL:
                domains[index].add(node.name)
                continue
            value = node.labels[key]
            domains[index].add(value)
            counts[index][value] += count_on(index, node)
    weights = [math.log(len(d) + 2) for d in domains]
    raw: list[int | None] = []
    for node in nodes:
        if not all(k in node.labels for k in required):
            raw.append(None)
            continue
        score = 0.0
        for index, (key, skew) in enumerate(constraints):
            if key == HOSTNAME_LABEL:
                count = count_on(index, node)
            else:
                count = counts[index][node.labels[key]]
            score += (count + skew - 1) * weights[index]
        raw.append(round(score))
    present = [s for s in raw if s is not None]
    if not present:
        return [0] * len(raw)
    low, high = min(present), max(present)
    if high == 0:
        return [0 if s is None else MAX_SCORE for s in raw]
    return [0 if s is None else MAX_SCORE * (high + low - s) // high for s in raw]


# (score, weight) as upstream's default profile weighs them.
SCORES: tuple[tuple[Callable[[CycleState, list[NodeInfo]], list[int] | None], int], ...] = (
    (score_taint_toleration, 3),
    (score_node_affinity, 2),
    (score_least_allocated, 1),
    (score_topology_spread, 2),
    (score_inter_pod_affinity, 2),
    (score_balanced_allocation, 1),
)
