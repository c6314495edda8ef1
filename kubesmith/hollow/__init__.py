"""Simulated nodes (like kubemark's hollow nodes or kwok): Node objects with leases and
status, whose bound pods go Running and Ready without any container.

    kubesmith-hollow --kubeconfig admin.conf --nodes 100 [--name-prefix hollow-node-]

    objects.py   the Node, Lease and pod status a kubelet would write (pure functions)
    nodes.py     HollowNodes: registration, heartbeats, pods, on the shared client
    main.py      the `kubesmith-hollow` command
"""
