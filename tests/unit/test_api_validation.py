"""Defaulting and validation of the built-in kinds."""
from __future__ import annotations

import copy

import pytest

from kubesmith.api import REGISTRY
from kubesmith.api.validation import invalid_message, parse_quantity


def rt(plural, group=""):
    return REGISTRY.get(group, "v1", plural)


def errors_of(plural, obj, group="", old=None):
    return {(e.field, e.reason) for e in rt(plural, group).validate(obj, old)}


def test_minimal_deployment_defaults():
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "web", "namespace": "default"},
              "spec": {"selector": {"matchLabels": {"app": "web"}},
                       "template": {"metadata": {"labels": {"app": "web"}},
                                    "spec": {"containers": [{"name": "nginx",
                                                             "image": "nginx"}]}}}}
    rt("deployments", "apps").apply_defaults(deploy)
    spec = deploy["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    assert (spec["revisionHistoryLimit"], spec["progressDeadlineSeconds"]) == (10, 600)
    pod_spec = spec["template"]["spec"]
    assert pod_spec == {
        "containers": [{"name": "nginx", "image": "nginx", "imagePullPolicy": "Always",
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File", "resources": {}}],
        "dnsPolicy": "ClusterFirst", "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30, "securityContext": {},
        "schedulerName": "default-scheduler"}
    assert rt("deployments", "apps").validate(deploy) == []
    again = copy.deepcopy(deploy)
    rt("deployments", "apps").apply_defaults(again)
    assert again == deploy


def test_pod_defaults():
    pod = {"metadata": {"name": "p", "namespace": "d"},
           "spec": {"containers": [{
               "name": "c", "image": "registry:5000/app:1.2",
               "ports": [{"containerPort": 80}],
               "livenessProbe": {"httpGet": {"port": 80}},
               "resources": {"limits": {"cpu": "1"}},
               "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}],
               "volumes": [{"name": "v"}, {"name": "s", "secret": {"secretName": "x"}}]}}
    pods = rt("pods")
    pods.apply_defaults(pod)
    pods.prepare_for_create(pod)
    spec = pod["spec"]
    container = spec["containers"][0]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["ports"][0]["protocol"] == "TCP"
    assert container["livenessProbe"] == {
        "httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
        "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}
    assert container["resources"]["requests"] == {"cpu": "1"}
    assert container["env"][0]["valueFrom"]["fieldRef"]["apiVersion"] == "v1"
    assert spec["volumes"][0] == {"name": "v", "emptyDir": {}}
    assert spec["volumes"][1]["secret"]["defaultMode"] == 420
    assert spec["enableServiceLinks"] is True
    assert "priority" not in spec and "preemptionPolicy" not in spec   # admission's
    assert pod["status"] == {"phase": "Pending", "qosClass": "Burstable"}
    assert pods.validate(pod) == []


@pytest.mark.parametrize("image,policy", [("nginx", "Always"), ("nginx:latest", "Always"),
                                          ("nginx:1.25", "IfNotPresent"),
                                          ("localhost:5000/nginx", "Always"),
                                          ("nginx@sha256:abc", "IfNotPresent")])
def test_image_pull_policy_default(image, policy):
    pod = {"spec": {"containers": [{"name": "c", "image": image}]}}
    rt("pods").apply_defaults(pod)
    assert pod["spec"]["containers"][0]["imagePullPolicy"] == policy


def test_service_defaults():
    svc = {"metadata": {"name": "web", "namespace": "d"},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    rt("services").apply_defaults(svc)
    spec = svc["spec"]
    assert spec["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    assert (spec["type"], spec["sessionAffinity"], spec["internalTrafficPolicy"]) == \
        ("ClusterIP", "None", "Cluster")
    assert (spec["ipFamilies"], spec["ipFamilyPolicy"]) == (["IPv4"], "SingleStack")
    assert rt("services").validate(svc) == []


def test_other_defaults():
    sts = {"spec": {"template": {"spec": {"containers": []}}}}
    rt("statefulsets", "apps").apply_defaults(sts)
    assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                             "rollingUpdate": {"partition": 0}}
    assert sts["spec"]["podManagementPolicy"] == "OrderedReady"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain",
                                                                   "whenScaled": "Retain"}
    ds = {"spec": {}}
    rt("daemonsets", "apps").apply_defaults(ds)
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    job = {"metadata": {"name": "j", "namespace": "d", "uid": "u-1"},
           "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}],
                                          "restartPolicy": "Never"}}}}
    jobs = rt("jobs", "batch")
    jobs.apply_defaults(job)
    jobs.prepare_for_create(job)
    assert (job["spec"]["parallelism"], job["spec"]["completions"], job["spec"]["backoffLimit"],
            job["spec"]["completionMode"], job["spec"]["suspend"]) == (1, 1, 6, "NonIndexed",
                                                                      False)
    assert job["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid":
                                                       "u-1"}}
    assert job["spec"]["template"]["metadata"]["labels"]["job-name"] == "j"
    assert jobs.validate(job) == []
    cron = {"spec": {"schedule": "@hourly", "jobTemplate": {"spec": {"template": {"spec": {}}}}}}
    rt("cronjobs", "batch").apply_defaults(cron)
    assert (cron["spec"]["concurrencyPolicy"], cron["spec"]["suspend"],
            cron["spec"]["successfulJobsHistoryLimit"], cron["spec"]["failedJobsHistoryLimit"]) \
        == ("Allow", False, 3, 1)
    secret = {}
    rt("secrets").apply_defaults(secret)
    assert secret["type"] == "Opaque"
    rc = {"spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {}}}}
    rt("replicationcontrollers").apply_defaults(rc)
    assert (rc["spec"]["replicas"], rc["spec"]["selector"], rc["metadata"]["labels"]) == \
        (1, {"a": "b"}, {"a": "b"})


def test_bad_pod_reports_every_problem_with_upstream_paths():
    pod = {"metadata": {"name": "Bad_Name", "namespace": "d", "labels": {"a/b/c": "x",
                                                                         "ok": "-bad"}},
           "spec": {"containers": [
               {"name": "c", "ports": [{"containerPort": 70000}]},
               {"name": "c", "image": "x", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}],
               "restartPolicy": "Sometimes", "dnsPolicy": "ClusterFirst"}}
    got = errors_of("pods", pod)
    assert ("metadata.name", "FieldValueInvalid") in got
    assert ("metadata.labels", "FieldValueInvalid") in got
    assert ("spec.containers[0].image", "FieldValueRequired") in got
    assert ("spec.containers[0].ports[0].containerPort", "FieldValueInvalid") in got
    assert ("spec.containers[1].name", "FieldValueDuplicate") in got
    assert ("spec.containers[1].volumeMounts[0].name", "FieldValueNotFound") in got
    assert ("spec.restartPolicy", "FieldValueNotSupported") in got
    assert errors_of("pods", {"metadata": {"namespace": "d"}, "spec": {}}) >= {
        ("metadata.name", "FieldValueRequired"), ("spec.containers", "FieldValueRequired")}


def test_error_messages_read_like_upstream():
    errors = rt("pods").validate({"metadata": {"name": "p", "namespace": "d"},
                                  "spec": {"containers": [{"name": "c"}],
                                           "restartPolicy": "Bogus", "dnsPolicy": "Default"}})
    messages = {e.field: e.message for e in errors}
    assert messages["spec.containers[0].image"] == "Required value"
    assert messages["spec.restartPolicy"] == \
        'Unsupported value: "Bogus": supported values: "Always", "OnFailure", "Never"'
    text = invalid_message("Pod", "p", errors)
    assert text.startswith('Pod "p" is invalid: [spec.containers[0].image: Required value, ')
    one = invalid_message("Pod", "p", errors[:1])
    assert one == 'Pod "p" is invalid: spec.containers[0].image: Required value'


def test_pod_update_may_change_only_images_and_a_few_fields():
    old = {"metadata": {"name": "p", "namespace": "d", "uid": "1"},
           "spec": {"containers": [{"name": "c", "image": "a"}], "restartPolicy": "Always",
                    "dnsPolicy": "ClusterFirst", "tolerations": [{"key": "k",
                                                                  "operator": "Exists"}]}}
    new = copy.deepcopy(old)
    new["spec"]["containers"][0]["image"] = "b"
    new["spec"]["tolerations"].append({"key": "j", "operator": "Exists"})
    new["spec"]["activeDeadlineSeconds"] = 10
    assert rt("pods").validate(new, old) == []
    new["spec"]["containers"][0]["command"] = ["sh"]
    assert ("spec", "FieldValueForbidden") in errors_of("pods", new, old=old)
    renamed = copy.deepcopy(old)
    renamed["metadata"]["name"] = "q"
    assert ("metadata.name", "FieldValueInvalid") in errors_of("pods", renamed, old=old)


def test_bad_services():
    bad = {"metadata": {"name": "1web", "namespace": "d"},
           "spec": {"type": "Foo", "ports": [{"port": 0, "protocol": "HTTP"},
                                             {"port": 80, "nodePort": 30000}]}}
    got = errors_of("services", bad)
    assert {("metadata.name", "FieldValueInvalid"), ("spec.type", "FieldValueNotSupported"),
            ("spec.ports[0].port", "FieldValueInvalid"),
            ("spec.ports[0].protocol", "FieldValueNotSupported"),
            ("spec.ports[0].name", "FieldValueRequired")} <= got
    no_ports = {"metadata": {"name": "web", "namespace": "d"}, "spec": {"type": "ClusterIP"}}
    assert ("spec.ports", "FieldValueRequired") in errors_of("services", no_ports)
    headless = {"metadata": {"name": "web", "namespace": "d"},
                "spec": {"type": "ClusterIP", "clusterIP": "None"}}
    assert errors_of("services", headless) == set()
    external = {"metadata": {"name": "web", "namespace": "d"},
                "spec": {"type": "ExternalName", "externalName": "example.com"}}
    assert errors_of("services", external) == set()
    node_port = {"metadata": {"name": "web", "namespace": "d"},
                 "spec": {"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP",
                                                          "nodePort": 30001}]}}
    assert ("spec.ports[0].nodePort", "FieldValueForbidden") in errors_of("services", node_port)
    old = {"metadata": {"name": "web", "namespace": "d"},
           "spec": {"type": "ClusterIP", "clusterIP": "10.0.0.1",
                    "ports": [{"port": 80, "protocol": "TCP"}]}}
    new = copy.deepcopy(old)
    new["spec"]["clusterIP"] = "10.0.0.2"
    assert ("spec.clusterIP", "FieldValueInvalid") in errors_of("services", new, old=old)
    replaced = copy.deepcopy(old)
    del replaced["spec"]["clusterIP"]
    rt("services").apply_defaults(replaced)
    rt("services").prepare_for_update(replaced, old)
    assert replaced["spec"]["clusterIP"] == "10.0.0.1"
    assert rt("services").validate(replaced, old) == []


def test_bad_deployments():
    deploy = {"metadata": {"name": "web", "namespace": "d"},
              "spec": {"replicas": -1, "selector": {"matchLabels": {"app": "web"}},
                       "template": {"metadata": {"labels": {"app": "other"}},
                                    "spec": {"containers": [{"name": "c", "image": "x"}],
                                             "restartPolicy": "Never",
                                             "dnsPolicy": "ClusterFirst"}},
                       "strategy": {"type": "Recreate", "rollingUpdate": {}}}}
    got = errors_of("deployments", deploy, "apps")
    assert {("spec.replicas", "FieldValueInvalid"),
            ("spec.template.metadata.labels", "FieldValueInvalid"),
            ("spec.template.spec.restartPolicy", "FieldValueNotSupported"),
            ("spec.strategy.rollingUpdate", "FieldValueForbidden")} <= got
    no_selector = {"metadata": {"name": "web", "namespace": "d"}, "spec": {"template": {}}}
    assert ("spec.selector", "FieldValueRequired") in errors_of("deployments", no_selector,
                                                                 "apps")
    good = {"metadata": {"name": "web", "namespace": "d"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "x"}]}}}}
    rt("deployments", "apps").apply_defaults(good)
    changed = copy.deepcopy(good)
    changed["spec"]["selector"] = {"matchLabels": {"app": "web", "tier": "x"}}
    changed["spec"]["template"]["metadata"]["labels"]["tier"] = "x"
    assert ("spec.selector", "FieldValueInvalid") in errors_of("deployments", changed, "apps",
                                                               old=good)


def test_job_requires_on_failure_or_never():
    job = {"metadata": {"name": "j", "namespace": "d", "uid": "u"},
           "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}
    jobs = rt("jobs", "batch")
    jobs.apply_defaults(job)
    jobs.prepare_for_create(job)
    errors = jobs.validate(job)
    assert [(e.field, e.reason) for e in errors] == [("spec.template.spec.restartPolicy",
                                                      "FieldValueNotSupported")]
    bad_cron = {"metadata": {"name": "c", "namespace": "d"},
                "spec": {"schedule": "every minute", "jobTemplate": {"spec": {"template": {
                    "spec": {"containers": [{"name": "c", "image": "x"}],
                             "restartPolicy": "OnFailure"}}}}}}
    rt("cronjobs", "batch").apply_defaults(bad_cron)
    assert errors_of("cronjobs", bad_cron, "batch") == {("spec.schedule", "FieldValueInvalid")}


def test_names_labels_annotations():
    cm = {"metadata": {"name": "ok.name", "namespace": "d",
                       "annotations": {"example.com/x": "y" * (256 * 1024)}},
          "data": {"bad key": "v", "good-key.txt": "v"}}
    got = errors_of("configmaps", cm)
    assert got == {("metadata.annotations", "FieldValueTooLong"),
                   ("data[bad key]", "FieldValueInvalid")}
    ns = {"metadata": {"name": "has.dot"}}
    rt("namespaces").apply_defaults(ns)
    assert ("metadata.name", "FieldValueInvalid") in errors_of("namespaces", ns)
    role = {"metadata": {"name": "system:controller:x", "namespace": "d"},
            "rules": [{"apiGroups": [""], "resources": ["pods"]}]}
    got = errors_of("roles", role, "rbac.authorization.k8s.io")
    assert got == {("rules[0].verbs", "FieldValueRequired")}
    slash = {"metadata": {"name": "a/b"}, "rules": []}
    assert ("metadata.name", "FieldValueInvalid") in errors_of("clusterroles", slash,
                                                               "rbac.authorization.k8s.io")
    assert ("metadata.namespace", "FieldValueRequired") in errors_of(
        "configmaps", {"metadata": {"name": "x"}})
    assert ("metadata.namespace", "FieldValueForbidden") in errors_of(
        "nodes", {"metadata": {"name": "x", "namespace": "d"}})
    generated = {"metadata": {"generateName": "web-", "namespace": "d"}}
    assert errors_of("configmaps", generated) == set()


def test_secrets():
    secret = {"metadata": {"name": "s", "namespace": "d"}, "type": "kubernetes.io/tls",
              "data": {"tls.crt": "not base64!"}}
    got = errors_of("secrets", secret)
    assert got == {("data[tls.crt]", "FieldValueInvalid"), ("data[tls.key]", "FieldValueRequired")}
    old = {"metadata": {"name": "s", "namespace": "d"}, "type": "Opaque", "immutable": True,
           "data": {"a": "YQ=="}}
    new = copy.deepcopy(old)
    new["data"]["a"] = "Yg=="
    assert ("data", "FieldValueForbidden") in errors_of("secrets", new, old=old)


def test_rbac_and_misc_kinds():
    binding = {"metadata": {"name": "b", "namespace": "d"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
               "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Robot", "name": "x"}]}
    rbac = rt("rolebindings", "rbac.authorization.k8s.io")
    rbac.apply_defaults(binding)
    assert binding["subjects"][0]["apiGroup"] == "rbac.authorization.k8s.io"
    assert {(e.field, e.reason) for e in rbac.validate(binding)} == {
        ("subjects[1].kind", "FieldValueNotSupported")}
    lease = {"metadata": {"name": "l", "namespace": "d"}, "spec": {"leaseDurationSeconds": 0}}
    assert errors_of("leases", lease, "coordination.k8s.io") == {
        ("spec.leaseDurationSeconds", "FieldValueInvalid")}
    sar = {"spec": {"resourceAttributes": {"verb": "get"}}}
    assert errors_of("subjectaccessreviews", sar, "authorization.k8s.io") == {
        ("spec.user,spec.groups", "FieldValueInvalid")}
    assert errors_of("selfsubjectaccessreviews", sar, "authorization.k8s.io") == set()
    eps = {"metadata": {"name": "e", "namespace": "d"}, "addressType": "IPv5",
           "endpoints": [{"addresses": []}]}
    assert errors_of("endpointslices", eps, "discovery.k8s.io") == {
        ("addressType", "FieldValueNotSupported"), ("endpoints[0].addresses",
                                                    "FieldValueRequired")}


def test_quantities():
    assert parse_quantity("500m") == parse_quantity("0.5")
    assert parse_quantity("1Gi") == 1024 ** 3
    assert parse_quantity("1e3") == 1000
    assert parse_quantity("1.5.5") is None
    pod = {"metadata": {"name": "p", "namespace": "d"},
           "spec": {"containers": [{"name": "c", "image": "x", "resources": {
               "limits": {"cpu": "1"}, "requests": {"cpu": "2", "memory": "lots"}}}],
               "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"}}
    assert errors_of("pods", pod) == {
        ("spec.containers[0].resources.requests[memory]", "FieldValueInvalid"),
        ("spec.containers[0].resources.requests[cpu]", "FieldValueInvalid")}


def test_secret_string_data_is_merged_into_data():
    secret = {"metadata": {"name": "s", "namespace": "d"}, "data": {"a": "eA==", "b": "eQ=="},
              "stringData": {"b": "new", "c": "z"}}
    rt("secrets").apply_defaults(secret)
    assert "stringData" not in secret
    assert secret["data"] == {"a": "eA==", "b": "bmV3", "c": "eg=="}
    assert rt("secrets").validate(secret) == []
