"""kube-proxy in iptables mode: Services and EndpointSlices to nat/filter rules.

    config.py      KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) and flags
    servicemap.py  service ports and their endpoints from the API objects; chain names
    rules.py       the iptables-restore input of the full desired state (pure)
    iptables.py    the commands: iptables(-save/-restore), conntrack, sysctl
    proxier.py     Proxier: syncs on changes (min_sync_period) and every sync_period,
                   writes only when the rules differ, cleans UDP conntrack entries
    metrics.py     /metrics under upstream's names; the /healthz state
    main.py        the `kube-proxy` command
"""
