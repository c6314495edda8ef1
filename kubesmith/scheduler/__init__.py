"""kubesmith's kube-scheduler: assigns pending pods to nodes, as upstream's does.

    resources.py   a pod's requests and a node's allocatable as integers (milli-CPU,
                   bytes, pod count), computed once per object
    cache.py       PodInfo / NodeInfo and the SchedulerCache: what is bound or assumed
                   on each node (requests, host ports, pods for affinity and spreading)
    plugins.py     the filters (with upstream's reason texts) and the scores
    framework.py   one scheduling cycle: filter a subset of nodes, score, pick; FitError
    queue.py       the scheduling queue: active (priority, then age), backoff,
                   unschedulable
    scheduler.py   the Scheduler: informers -> cache and queue, assume-then-bind,
                   FailedScheduling events and the PodScheduled condition
    metrics.py     /metrics under upstream's names, read from the scheduler's counters
    main.py        the command line (upstream flags), /healthz, leader election
"""
