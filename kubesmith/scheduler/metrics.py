"""The scheduler's /metrics under upstream's names (a subset), read from the scheduler's
own counters when scraped, so scheduling itself pays nothing for them."""
from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kubesmith.scheduler.scheduler import Scheduler

PROFILE = "default-scheduler"


class SchedulerCollector:
    def __init__(self, scheduler: Scheduler, is_leader: Callable[[], bool]):
        self.scheduler = scheduler
        self.is_leader = is_leader

    def collect(self) -> Iterator[Metric]:
        scheduler = self.scheduler
        attempts = CounterMetricFamily(
            "scheduler_schedule_attempts", "Attempts to schedule pods, by the result.",
            labels=("result", "profile"))
        for result, count in (("scheduled", scheduler.scheduled),
                              ("unschedulable", scheduler.unschedulable),
                              ("error", scheduler.bind_errors)):
            attempts.add_metric((result, PROFILE), count)
        yield attempts
        pending = GaugeMetricFamily("scheduler_pending_pods",
                                    "Pending pods, by the queue they are in.",
                                    labels=("queue",))
        for queue, count in scheduler.queue.counts().items():
            pending.add_metric((queue,), count)
        yield pending
        yield GaugeMetricFamily("scheduler_cache_size_nodes", "Nodes in the scheduler cache.",
                                value=len(scheduler.cache))
        leader = GaugeMetricFamily("leader_election_master_status",
                                   "1 while this instance leads.", labels=("name",))
        leader.add_metric(("kube-scheduler",), 1 if self.is_leader() else 0)
        yield leader


class Metrics:
    def __init__(self, scheduler: Scheduler, is_leader: Callable[[], bool]):
        self.registry = CollectorRegistry()
        self.registry.register(SchedulerCollector(scheduler, is_leader))
        self.content_type = CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        return generate_latest(self.registry)
