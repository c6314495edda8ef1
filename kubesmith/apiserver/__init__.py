"""kube-apiserver: the Kubernetes API over etcd, driven by the kind registry.

    main.py          flags (upstream names) and the process
    options.py       flag parsing and checks
    server.py        TLS listener and the request pipeline (authn -> authz -> limits -> serve)
    authn.py         client certificates, the bearer-token hook, anonymous
    authz.py         authorizer chain: system:masters, Node, RBAC, AlwaysAllow/Deny
    bootstrap_policy.py, bootstrap.py
                     default roles and bindings, system namespaces, kubernetes Service
    admission.py     admission chain (NamespaceLifecycle)
    requestinfo.py   what a path asks for (verb, resource, namespace, name, subresource)
    rest.py          generic REST for every registered kind
    special.py       namespaces, pod graceful deletion and binding, scale, finalize
    reviews.py       access, rules, token and self-subject reviews
    watch.py         WATCH streaming; watchcache.py one etcd watch per resource, fanned out
    storage.py       objects in etcd (JSON, encryption at rest)
    negotiation.py   Accept / Content-Type handling; protobuf.py reads protobuf bodies
    selectors.py, patch.py, tables.py, fieldcheck.py, objectmeta.py, context.py
    endpoints.py     discovery, /version, health checks, /metrics, /openapi
    compaction.py    etcd history compaction
"""
