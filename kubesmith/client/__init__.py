"""The shared API client machinery of kubesmith's components (client-go's pattern).

Scheduler, controllers, kubelet, proxy and DNS all build on these; none writes its own
HTTP client or watch loop.

    kubeconfig.py      ClientConfig from a kubeconfig (certs, token, CA) or from a pod's
                       service account (in_cluster)
    rest.py            ApiClient: get/list/list_all/create/update/update_status/patch/
                       apply/delete/delete_collection/watch on one aiohttp session, with
                       resources named through the registry ("apps/v1 deployments");
                       ApiError carries the server's Status (is_not_found, is_conflict,
                       is_expired, ...); client-side token bucket; retries on 429
    informers.py       InformerFactory / SharedInformer: one list + watch per resource and
                       scope, an indexed cache (Indexer, Lister), add/update/delete
                       handlers, re-list on 410 with DeletedFinalStateUnknown tombstones,
                       resync
    workqueue.py       WorkQueue: dedup, one worker per key at a time, add_after,
                       per-key exponential backoff + overall token bucket; run_workers
    leaderelection.py  LeaderElector on a coordination.k8s.io/v1 Lease
    events.py          EventRecorder: core/v1 Events, repeats counted on one Event
    ratelimit.py       TokenBucket and Backoff, shared by the above
    probe.py           `python -m kubesmith.client.probe /readyz` for the deploy
"""
