"""kubesmith's cluster DNS add-on (`kubesmith-dns`), run on the masters by the service
manager, in place of CoreDNS pods.

It answers the names of upstream's Kubernetes DNS specification for the cluster domain
from shared informers (Services, discovery.k8s.io/v1 EndpointSlices, Namespaces) and
forwards every other name to the host's resolvers, with a cache. dnspython reads and
writes the messages; the UDP and TCP listeners are the project's own asyncio ones.

    records.py       RecordStore: the cluster's records, fed per object by the informers
    forward.py       Forwarder (upstreams from resolv.conf, UDP then TCP) and its Cache
    server.py        DnsServer: UDP/TCP listeners, one query -> one answer; metrics
    registration.py  SliceRegistration: this server's EndpointSlice of the kube-dns Service
    main.py          flags, /health /ready /metrics over HTTPS, the `kubesmith-dns` script

Access it needs (the add-ons manifest grants them to the identity of its kubeconfig):

    ""                services         list, watch        cluster-wide
    ""                namespaces       list, watch        cluster-wide
    discovery.k8s.io  endpointslices   list, watch        cluster-wide
    discovery.k8s.io  endpointslices   create, update, delete
                                                          in the --service's namespace
                                                          (kube-system)

(get is never used: reads come from the informers' caches. With --service= the
create/update/delete rights are not needed.)
"""
