"""kubesmith's kubelet: runs the pods bound to its node through CRI v1 (containerd).

    main.py      the `kubelet` command: flags, wiring, signals
    config.py    KubeletConfiguration (kubelet.config.k8s.io/v1beta1) and the flags
    node.py      Node registration, node status, the Lease heartbeat
    pods.py      one worker per pod: sandbox, init containers, containers, restarts
                 with back-off, probes' verdicts, graceful termination; the runtime
                 relist that notices container changes (upstream's PLEG)
    runtime.py   CRI sandbox and container configs from pod specs
    status.py    pod status computed from the runtime, written to the API server
    static.py    static pods from staticPodPath and their mirror pods
    cgroups.py   pod cgroups (cgroup v1, cgroupfs) made with the pod's limits, removed
    pullsecrets.py  registry credentials from imagePullSecrets
    volumes.py   pod volumes (VolumeManager)
    envvars.py   container environment (container_env)
    probes.py    liveness, readiness and startup probes (ProbeManager)
    server.py    the HTTPS server on :10250 (KubeletServer)
    logs.py      container log rotation (LogRotator)
    stats.py     /stats/summary figures
"""
