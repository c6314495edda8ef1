"""Table cells (what `kubectl get` shows) for representative objects."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kubesmith.api import REGISTRY
from kubesmith.api.kinds.core import pod_summary
from kubesmith.api.registry import human_duration, since


def ago(**delta) -> str:
    return (datetime.now(timezone.utc) - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def row(plural, obj, group=""):
    rt = REGISTRY.get(group, "v1", plural)
    return dict(zip([c.name for c in rt.table_columns()], rt.table_row(obj)))


def pod(containers=1, statuses=(), init=(), init_statuses=(), phase="Running", **extra):
    obj = {"metadata": {"name": "p", "namespace": "d", "creationTimestamp": ago(minutes=5)},
           "spec": {"containers": [{"name": f"c{i}", "image": "x"} for i in range(containers)],
                    "initContainers": list(init)},
           "status": {"phase": phase, "containerStatuses": list(statuses),
                      "initContainerStatuses": list(init_statuses)}}
    for key, value in extra.items():
        obj[key] = value
    return obj


RUNNING = {"name": "c0", "ready": True, "restartCount": 0, "state": {"running": {}}}


def test_human_durations_like_kubectl():
    assert [human_duration(s) for s in (5, 119, 125, 600, 3 * 3600 + 60, 30 * 3600,
                                        3 * 86400 + 7200, 40 * 86400, 800 * 86400)] == \
        ["5s", "119s", "2m5s", "10m", "3h1m", "30h", "3d2h", "40d", "2y70d"]
    assert since(None) == "<unknown>"


def test_pod_running_ready():
    cells = row("pods", pod(statuses=[RUNNING]))
    assert (cells["Ready"], cells["Status"], cells["Restarts"]) == ("1/1", "Running", "0")
    assert cells["Age"] == "5m" or cells["Age"].startswith("5m")
    assert (cells["IP"], cells["Node"], cells["Nominated Node"], cells["Readiness Gates"]) == \
        ("<none>", "<none>", "<none>", "<none>")


def test_pod_pending_and_container_creating():
    assert pod_summary(pod(phase="Pending")) == ("0/1", "Pending", "0")
    waiting = {"name": "c0", "ready": False, "restartCount": 0,
               "state": {"waiting": {"reason": "ContainerCreating"}}}
    assert pod_summary(pod(statuses=[waiting], phase="Pending")) == \
        ("0/1", "ContainerCreating", "0")


def test_pod_crash_loop_with_restart_age():
    crashing = {"name": "c0", "ready": False, "restartCount": 5,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                             "finishedAt": ago(minutes=3)}}}
    ready, status, restarts = pod_summary(pod(containers=2, statuses=[RUNNING, crashing]))
    assert (ready, status) == ("1/2", "CrashLoopBackOff")
    assert restarts.startswith("5 (3m") and restarts.endswith(" ago)")


def test_pod_completed_and_exit_codes():
    done = {"name": "c0", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    assert pod_summary(pod(statuses=[done], phase="Succeeded"))[1] == "Completed"
    killed = {"name": "c0", "ready": False, "state": {"terminated": {"exitCode": 137,
                                                                     "signal": 9}}}
    assert pod_summary(pod(statuses=[killed], phase="Failed"))[1] == "Signal:9"
    failed = {"name": "c0", "ready": False, "state": {"terminated": {"exitCode": 2}}}
    assert pod_summary(pod(statuses=[failed], phase="Failed"))[1] == "ExitCode:2"


def test_pod_init_containers():
    init = [{"name": "i0", "image": "x"}, {"name": "i1", "image": "x"}]
    statuses = [{"name": "i0", "state": {"terminated": {"exitCode": 0}}},
                {"name": "i1", "state": {"running": {}}}]
    assert pod_summary(pod(init=init, init_statuses=statuses, phase="Pending"))[1] == "Init:1/2"
    crashing = [{"name": "i0", "restartCount": 3,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]
    assert pod_summary(pod(init=init, init_statuses=crashing, phase="Pending")) == \
        ("0/1", "Init:CrashLoopBackOff", "3")
    failed = [{"name": "i0", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]
    assert pod_summary(pod(init=init, init_statuses=failed, phase="Pending"))[1] == "Init:Error"
    # A restartable (sidecar) init container counts as a container.
    sidecar = [{"name": "s", "image": "x", "restartPolicy": "Always"}]
    started = [{"name": "s", "started": True, "ready": True, "state": {"running": {}}}]
    assert pod_summary(pod(init=sidecar, init_statuses=started, statuses=[RUNNING]))[:2] == \
        ("2/2", "Running")


def test_pod_terminating_and_gates():
    obj = pod(statuses=[RUNNING])
    obj["metadata"]["deletionTimestamp"] = ago(seconds=1)
    assert pod_summary(obj)[1] == "Terminating"
    gated = pod(phase="Pending")
    gated["status"]["conditions"] = [{"type": "PodScheduled", "status": "False",
                                      "reason": "SchedulingGated"}]
    assert pod_summary(gated)[1] == "SchedulingGated"
    wide = pod(statuses=[RUNNING])
    wide["spec"].update(nodeName="n1", readinessGates=[{"conditionType": "a"},
                                                       {"conditionType": "b"}])
    wide["status"].update(podIPs=[{"ip": "10.1.0.4"}], conditions=[{"type": "a",
                                                                     "status": "True"}])
    cells = row("pods", wide)
    assert (cells["IP"], cells["Node"], cells["Readiness Gates"]) == ("10.1.0.4", "n1", "1/2")


def test_service_cells():
    svc = {"metadata": {"name": "web", "creationTimestamp": ago(hours=2)},
           "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
                    "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080},
                              {"port": 53, "protocol": "UDP"}],
                    "selector": {"b": "2", "a": "1"}}}
    cells = row("services", svc)
    assert cells == {"Name": "web", "Type": "NodePort", "Cluster-IP": "10.96.0.10",
                     "External-IP": "<none>", "Port(s)": "80:30080/TCP,53/UDP", "Age": "120m",
                     "Selector": "a=1,b=2"}
    lb = {"spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.1", "ports": []}}
    assert row("services", lb)["External-IP"] == "<pending>"
    assert row("services", lb)["Port(s)"] == "<none>"
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}
    assert row("services", lb)["External-IP"] == "1.2.3.4"
    ext = {"spec": {"type": "ExternalName", "externalName": "example.com"}}
    assert row("services", ext)["External-IP"] == "example.com"
    assert row("services", {"spec": {"type": "ClusterIP", "clusterIP": "None"}})["Cluster-IP"] \
        == "None"


def test_deployment_cells():
    deploy = {"metadata": {"name": "d"},
              "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "x"}},
                       "template": {"spec": {"containers": [
                           {"name": "a", "image": "nginx:1"}, {"name": "b", "image": "busybox"}]}}},
              "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}
    cells = row("deployments", deploy, "apps")
    assert (cells["Ready"], cells["Up-to-date"], cells["Available"]) == ("2/3", 3, 2)
    assert (cells["Containers"], cells["Images"], cells["Selector"]) == \
        ("a,b", "nginx:1,busybox", "app=x")
    assert row("deployments", {"spec": {"replicas": 1}}, "apps")["Ready"] == "0/1"


def test_node_cells():
    node = {"metadata": {"name": "n", "labels": {"node-role.kubernetes.io/control-plane": "",
                                                 "kubernetes.io/role": "master"}},
            "spec": {"unschedulable": True},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "10.0.0.5"}],
                       "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "Debian"}}}
    cells = row("nodes", node)
    assert cells["Status"] == "Ready,SchedulingDisabled"
    assert cells["Roles"] == "control-plane,master"
    assert (cells["Version"], cells["Internal-IP"], cells["External-IP"]) == \
        ("v1.33.0", "10.0.0.5", "<none>")
    assert (cells["OS-Image"], cells["Kernel-Version"]) == ("Debian", "<unknown>")
    assert row("nodes", {"metadata": {"name": "x"}})["Status"] == "Unknown"


def test_other_kinds():
    endpoints = {"subsets": [{"addresses": [{"ip": f"10.0.0.{i}"} for i in range(3)],
                              "ports": [{"port": 80}, {"port": 443}]}]}
    assert row("endpoints", endpoints)["Endpoints"] == \
        "10.0.0.0:80,10.0.0.1:80,10.0.0.2:80 + 3 more..."
    assert row("endpoints", {})["Endpoints"] == "<none>"
    event = {"metadata": {"name": "e1"}, "type": "Warning", "reason": "BackOff",
             "involvedObject": {"kind": "Pod", "name": "p", "fieldPath": "spec.containers{a}"},
             "message": "Back-off restarting ", "count": 4, "source": {"component": "kubelet",
                                                                        "host": "n1"},
             "firstTimestamp": ago(minutes=30), "lastTimestamp": ago(minutes=1)}
    cells = row("events", event)
    assert (cells["Last Seen"], cells["Object"], cells["Message"], cells["Count"]) == \
        ("60s", "pod/p", "Back-off restarting", 4)
    assert (cells["Source"], cells["Name"], cells["First Seen"]) == ("kubelet, n1", "e1", "30m")
    job = {"spec": {"completions": 3, "parallelism": 1},
           "status": {"succeeded": 1, "startTime": ago(minutes=10),
                      "completionTime": ago(minutes=8)}}
    cells = row("jobs", job, "batch")
    assert (cells["Status"], cells["Completions"], cells["Duration"]) == ("Running", "1/3",
                                                                          "2m")
    job["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    assert row("jobs", job, "batch")["Status"] == "Complete"
    cron = {"spec": {"schedule": "*/5 * * * *", "suspend": False}, "status": {"active": [{}]}}
    cells = row("cronjobs", cron, "batch")
    assert (cells["Schedule"], cells["Timezone"], cells["Suspend"], cells["Active"],
            cells["Last Schedule"]) == ("*/5 * * * *", "<none>", "false", 1, "<none>")
    lease = {"spec": {"holderIdentity": "node-a"}}
    assert row("leases", lease, "coordination.k8s.io")["Holder"] == "node-a"
    binding = {"roleRef": {"kind": "ClusterRole", "name": "view"},
               "subjects": [{"kind": "User", "name": "alice"},
                            {"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}]}
    cells = row("rolebindings", binding, "rbac.authorization.k8s.io")
    assert (cells["Role"], cells["Users"], cells["ServiceAccounts"], cells["Groups"]) == \
        ("ClusterRole/view", "alice", "ns/sa", "")
    role = {"metadata": {"name": "r", "creationTimestamp": "2024-05-01T10:00:00Z"}}
    assert row("roles", role, "rbac.authorization.k8s.io")["Created At"] == "2024-05-01T10:00:00Z"
    slice_ = {"addressType": "IPv4", "ports": [{"port": 80}],
              "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]}
    cells = row("endpointslices", slice_, "discovery.k8s.io")
    assert (cells["AddressType"], cells["Ports"], cells["Endpoints"]) == \
        ("IPv4", "80", "10.0.0.1,10.0.0.2")
    quota = {"status": {"hard": {"pods": "10", "limits.cpu": "2", "requests.memory": "1Gi"},
                        "used": {"pods": "1"}}}
    cells = row("resourcequotas", quota)
    assert (cells["Request"], cells["Limit"]) == ("pods: 1/10, requests.memory: 0/1Gi",
                                                  "limits.cpu: 0/2")
    assert row("secrets", {"data": {"a": "", "b": ""}})["Data"] == 2
    assert row("serviceaccounts", {"secrets": [{"name": "x"}]})["Secrets"] == 1
    assert row("daemonsets", {"spec": {"template": {"spec": {"nodeSelector": {"os": "linux"}}}},
                              "status": {"desiredNumberScheduled": 2}}, "apps")["Node Selector"] \
        == "os=linux"
    assert row("statefulsets", {"spec": {"replicas": 2}, "status": {"readyReplicas": 1}},
               "apps")["Ready"] == "1/2"
    revision = {"revision": 3, "metadata": {"ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ds", "controller": True}]}}
    assert row("controllerrevisions", revision, "apps")["Controller"] == "daemonset.apps/ds"
    new_event = {"regarding": {"kind": "Node", "name": "n"}, "note": "hi", "type": "Normal",
                 "reason": "R", "reportingController": "c"}
    assert row("events", new_event, "events.k8s.io")["Object"] == "node/n"
