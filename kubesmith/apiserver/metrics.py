"""Prometheus metrics under upstream's names (a subset), served at /metrics."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_BUCKETS = (0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8,
            10, 15, 20, 30, 45, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("verb", "group", "version", "resource", "subresource", "scope", "code")
        self.requests = Counter("apiserver_request", "Requests by verb, resource and code.",
                                labels, registry=self.registry)
        self.latency = Histogram("apiserver_request_duration_seconds",
                                 "Response latency by verb and resource.", labels[:-1],
                                 buckets=_BUCKETS, registry=self.registry)
        self.inflight = Gauge("apiserver_current_inflight_requests",
                              "Requests being served, by kind (readOnly, mutating).",
                              ("request_kind",), registry=self.registry)
        self.rejected = Counter("apiserver_dropped_requests",
                                "Requests refused with 429 for lack of capacity.",
                                ("request_kind",), registry=self.registry)
        self.watchers = Gauge("apiserver_registered_watchers", "Open watches by resource.",
                              ("group", "version", "kind"), registry=self.registry)
        self.authorization = Counter("apiserver_authorization_decisions",
                                     "Authorization decisions.", ("decision",),
                                     registry=self.registry)
        self.storage_objects = Gauge("apiserver_storage_objects",
                                  "Objects held by the watch cache per resource.",
                                  ("resource",), registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
