"""kube-proxy's /metrics under upstream's names (pkg/proxy/metrics), and the health state
behind /healthz and /livez (upstream's ProxyHealthServer)."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Upstream: exponential buckets from 1 ms, factor 2, 15 buckets.
SYNC_BUCKETS = tuple(0.001 * 2 ** i for i in range(15))


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.content_type = CONTENT_TYPE_LATEST
        self.sync_duration = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds", buckets=SYNC_BUCKETS, registry=registry)
        self.sync_full_duration = Histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs", buckets=SYNC_BUCKETS,
            registry=registry)
        self.sync_partial_duration = Histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs", buckets=SYNC_BUCKETS,
            registry=registry)
        self.last_sync = Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced", registry=registry)
        self.last_queued = Gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued", registry=registry)
        self.restore_failures = Counter(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures", registry=registry)
        self.rules_total = Gauge(
            "kubeproxy_sync_proxy_rules_iptables_total",
            "Total number of iptables rules owned by kube-proxy", ["table"],
            registry=registry)
        self.rules_last = Gauge(
            "kubeproxy_sync_proxy_rules_iptables_last",
            "Number of iptables rules written by kube-proxy in last sync", ["table"],
            registry=registry)
        self.service_changes = Counter(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes", registry=registry)
        self.endpoint_changes = Counter(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes", registry=registry)
        # Upstream's buckets: 0.25 s to 5 s by 0.25 s, 6 s to 60 s by 1 s, then coarser.
        self.network_programming = Histogram(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            buckets=(*(0.25 * i for i in range(1, 21)), *range(6, 61),
                     *range(75, 301, 15), *range(360, 1201, 60)), registry=registry)
        self.no_local_endpoints = Gauge(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            ["traffic_policy"], registry=registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ProxyHealth:
    """Healthy unless a sync was queued and has not happened within `timeout`
    (upstream: twice the sync period). /healthz also fails while the node is being
    deleted, so load balancers stop sending traffic to it."""

    def __init__(self, timeout: float, clock=time.time):
        self.timeout = timeout
        self.clock = clock
        self.last_updated = 0.0
        self.oldest_pending: float | None = None
        self.node_eligible = True

    def queued(self) -> None:
        if self.oldest_pending is None:
            self.oldest_pending = self.clock()

    def updated(self) -> None:
        self.last_updated = self.clock()
        self.oldest_pending = None

    def is_healthy(self) -> bool:
        return (self.oldest_pending is None
                or self.clock() - self.oldest_pending <= self.timeout)
