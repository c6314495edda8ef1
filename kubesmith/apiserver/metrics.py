"""Prometheus metrics under upstream's names (a subset), served at /metrics."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_BUCKETS = (0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8,
            10, 15, 20, 30, 45, 60)


class _Labelled:
    """A metric whose labelled children are looked up once: prometheus_client's labels()
    validates and locks on every call, and most requests touch several metrics."""

    def __init__(self, metric):
        self.metric = metric
        self._children: dict[tuple, object] = {}

    def labels(self, *values: str):
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        labels = ("verb", "group", "version", "resource", "subresource", "scope", "code")
        self.requests = _Labelled(Counter(
            "apiserver_request", "Requests by verb, resource and code.", labels,
            registry=registry))
        self.latency = _Labelled(Histogram(
            "apiserver_request_duration_seconds", "Response latency by verb and resource.",
            labels[:-1], buckets=_BUCKETS, registry=registry))
        self.inflight = _Labelled(Gauge(
            "apiserver_current_inflight_requests",
            "Requests being served, by kind (readOnly, mutating).", ("request_kind",),
            registry=registry))
        self.rejected = _Labelled(Counter(
            "apiserver_dropped_requests", "Requests refused with 429 for lack of capacity.",
            ("request_kind",), registry=registry))
        self.watchers = _Labelled(Gauge(
            "apiserver_registered_watchers", "Open watches by resource.",
            ("group", "version", "kind"), registry=registry))
        self.authorization = _Labelled(Counter(
            "apiserver_authorization_decisions", "Authorization decisions.", ("decision",),
            registry=registry))
        self.storage_objects = _Labelled(Gauge(
            "apiserver_storage_objects", "Objects held by the watch cache per resource.",
            ("resource",), registry=registry))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
