"""The controllers' roles in the bootstrap policy (upstream's controller_policy):
ClusterRole system:controller:<account> bound to ServiceAccount kube-system/<account>,
made at startup, also on a cluster that existed before them."""
from __future__ import annotations

import time

from kubesmith.apiserver import bootstrap_policy
from kubesmith.store.testing import free_port

RBAC = "rbac.authorization.k8s.io"


def test_controller_roles_are_bound_to_their_service_accounts():
    roles = {r["metadata"]["name"]: r for r in bootstrap_policy.cluster_roles()}
    bindings = {b["metadata"]["name"]: b for b in bootstrap_policy.cluster_role_bindings()}
    for account in bootstrap_policy.controller_service_accounts():
        name = "system:controller:" + account
        role = roles[name]
        assert role["metadata"]["labels"]["kubernetes.io/bootstrapping"] == "rbac-defaults"
        assert bindings[name]["roleRef"] == {"apiGroup": RBAC, "kind": "ClusterRole",
                                             "name": name}
        assert bindings[name]["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": "kube-system"}]
    events = {"verbs": ["create", "patch", "update"], "apiGroups": ["", "events.k8s.io"],
              "resources": ["events"]}
    assert events in roles["system:controller:deployment-controller"]["rules"]
    assert events not in roles["system:controller:pod-garbage-collector"]["rules"]


def test_bootstrap_creates_the_controller_roles(cluster):
    for account in ("deployment-controller", "generic-garbage-collector", "node-controller",
                    "legacy-service-account-token-cleaner"):
        name = f"system:controller:{account}"
        role = cluster.request("GET", f"/apis/{RBAC}/v1/clusterroles/{name}")
        assert role.status == 200, role.body
        assert role.json()["metadata"]["annotations"][
            "rbac.authorization.kubernetes.io/autoupdate"] == "true"
        binding = cluster.request("GET", f"/apis/{RBAC}/v1/clusterrolebindings/{name}")
        assert binding.status == 200, binding.body
        assert binding.json()["subjects"][0]["name"] == account
    cleaner = cluster.request("GET", f"/apis/{RBAC}/v1/namespaces/kube-system/roles/"
                                     "system:controller:token-cleaner")
    assert cleaner.status == 200, cleaner.body


def test_kubectl_auth_can_i_as_a_controller(cluster):
    who = "--as=system:serviceaccount:kube-system:deployment-controller"
    answer = cluster.kubectl("auth", "can-i", "update", "deployments.apps",
                             "--subresource=status", who, "-n", "default")
    assert answer.stdout.strip() == "yes"
    answer = cluster.kubectl("auth", "can-i", "delete", "secrets", who, "-n", "default",
                             check=False)
    assert answer.stdout.strip() == "no"


def test_a_restarted_server_adds_missing_controller_roles(cluster):
    """An upgraded control plane starting on an existing etcd creates the roles it
    lacks (as upstream's RBAC bootstrap hook does)."""
    name = "system:controller:ttl-after-finished-controller"
    for kind in ("clusterroles", "clusterrolebindings"):
        answer = cluster.request("DELETE", f"/apis/{RBAC}/v1/{kind}/{name}")
        assert answer.status == 200, answer.body
    # A default role that lost a rule gets it back; one marked autoupdate=false does not;
    # a rule an operator added stays.
    roles = f"/apis/{RBAC}/v1/clusterroles"
    extra = {"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}
    pruned = {}
    for role in ("system:controller:job-controller", "system:controller:cronjob-controller"):
        stored = cluster.request("GET", f"{roles}/{role}").json()
        pruned[role] = stored["rules"][0]
        stored["rules"] = stored["rules"][1:] + [extra]
        if role.endswith("cronjob-controller"):
            stored["metadata"]["annotations"][
                "rbac.authorization.kubernetes.io/autoupdate"] = "false"
        answer = cluster.request("PUT", f"{roles}/{role}", stored)
        assert answer.status == 200, answer.body
    port = free_port()
    process = cluster.spawn(cluster.flags(port=port), cluster.base / "roles-second.log")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if cluster.request("GET", "/readyz", port=port, timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "second API server not ready"
            time.sleep(0.1)
        for kind in ("clusterroles", "clusterrolebindings"):
            answer = cluster.request("GET", f"/apis/{RBAC}/v1/{kind}/{name}", port=port)
            assert answer.status == 200, answer.body
        job = cluster.request("GET", f"{roles}/system:controller:job-controller").json()
        assert pruned["system:controller:job-controller"] in job["rules"]
        assert extra in job["rules"]
        cron = cluster.request("GET", f"{roles}/system:controller:cronjob-controller").json()
        assert pruned["system:controller:cronjob-controller"] not in cron["rules"]
    finally:
        process.terminate()
        process.wait(10)
