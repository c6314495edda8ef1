"""The pod-network agent (`kubesmith-pod-network`): routed pod networking, no overlay.

    network.py  the CNI conflist (bridge + host-local + portmap), route planning and the
                proto-199 routes, the masquerade/forward iptables chains
    agent.py    PodNetworkAgent: syncs on Node changes and periodically
    main.py     the command
"""
