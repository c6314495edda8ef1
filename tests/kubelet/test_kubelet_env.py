"""The container environment (kubesmith.kubelet.envvars): every kind of reference,
service variables and $(VAR) expansion, against a fake API client."""
from __future__ import annotations

import asyncio

import pytest

from kubesmith.kubelet import envvars
from kubesmith.kubelet.envvars import EnvError, container_env, expand, mapping_for
from tests.kubelet.contents_helpers import FakeClient, configmap, secret


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def service(name, namespace, cluster_ip, ports):
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": cluster_ip, "ports": ports}}


KUBERNETES = service("kubernetes", "default", "10.96.0.1",
                     [{"name": "https", "port": 443, "protocol": "TCP"}])


def pod(containers, **spec):
    return {"metadata": {"name": "web-1", "namespace": "shop", "uid": "uid-1",
                         "labels": {"app": "web", "tier": "front"},
                         "annotations": {"note": 'say "hi"'}},
            "spec": {"nodeName": "node-a", "serviceAccountName": "builder",
                     "containers": containers, **spec},
            "status": {"podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00::7"}]}}


def env_of(pod_obj, client=None, services=(), **kw):
    kw.setdefault("node_name", "node-a")
    kw.setdefault("host_ip", "192.168.1.10")
    kw.setdefault("pod_ip", "10.244.1.7")
    result = run(container_env(pod_obj, pod_obj["spec"]["containers"][0],
                               client=client or FakeClient(), services=list(services), **kw))
    names = [kv.key for kv in result]
    assert len(names) == len(set(names)), names
    return {kv.key: kv.value for kv in result}, names


# --- expansion ------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("$(A)", "a"),
    ("x$(A)y$(B)z", "xaybz"),
    ("$$(A)", "$(A)"),             # escaped reference
    ("$$$(A)", "$a"),
    ("$(MISSING)", "$(MISSING)"),  # unknown: left as written
    ("$(A", "$(A"),                # unclosed
    ("$A", "$A"),                  # not a reference
    ("50$", "50$"),
    ("$", "$"),
    ("$()", ""),
    ("$(A)$(A)", "aa"),
    ("(A)", "(A)"),
])
def test_expansion_as_upstream(text, expected):
    mapping = mapping_for({"A": "a", "B": "b", "": ""})
    assert expand(text, mapping) == expected


def test_subpath_expansion_needs_every_variable():
    assert envvars.expand_subpath("logs/$(POD)", {"POD": "web-1"}) == "logs/web-1"
    with pytest.raises(EnvError, match="missing value for NODE, POD"):
        envvars.expand_subpath("$(POD)/$(NODE)", {"POD": ""})


# --- every kind of reference ----------------------------------------------------------

def test_every_reference_kind():
    client = FakeClient(
        configmap("settings", {"mode": "fast", "level": "3", "bad key": "x", "1st": "y"},
                  namespace="shop"),
        secret("creds", {"user": b"admin", "pass": b"s3cret"}, namespace="shop"))
    container = {
        "name": "app",
        "resources": {"limits": {"cpu": "1500m", "memory": "256Mi"},
                      "requests": {"cpu": "250m", "memory": "64Mi"}},
        "envFrom": [{"configMapRef": {"name": "settings"}},
                    {"secretRef": {"name": "creds"}, "prefix": "DB_"}],
        "env": [
            {"name": "MODE", "value": "overridden-$(mode)"},
            {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "settings",
                                                                  "key": "level"}}},
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "creds",
                                                                   "key": "pass"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NONE", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.labels['missing']"}}},
            {"name": "NOTE", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['note']"}}},
            {"name": "LABELS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
            {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "CPU_MILLI", "valueFrom": {"resourceFieldRef": {
                "resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {
                "resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "MEM_REQ", "valueFrom": {"resourceFieldRef": {
                "resource": "requests.memory"}}},
            {"name": "GREETING", "value": "hi $(POD_NAME) on $(NODE), $$(POD_NAME) $(LATER)"},
            {"name": "LATER", "value": "later"},
            {"name": "EMPTY"},
        ]}
    env, names = env_of(pod([container]), client, services=[KUBERNETES])
    assert env["mode"] == "fast" and env["level"] == "3"
    assert "bad key" not in env and "1st" not in env        # not variable names: skipped
    assert env["DB_user"] == "admin" and env["DB_pass"] == "s3cret"
    assert env["MODE"] == "overridden-fast"
    assert env["FROM_CM"] == "3" and env["FROM_SECRET"] == "s3cret"
    assert (env["POD_NAME"], env["POD_NS"], env["POD_UID"]) == ("web-1", "shop", "uid-1")
    assert env["APP"] == "web" and env["NONE"] == ""
    assert env["NOTE"] == 'say "hi"'
    assert env["LABELS"] == 'app="web"\ntier="front"'
    assert (env["NODE"], env["SA"]) == ("node-a", "builder")
    assert env["HOST_IP"] == "192.168.1.10"
    assert env["POD_IP"] == "10.244.1.7" and env["POD_IPS"] == "10.244.1.7,fd00::7"
    assert env["CPU_LIMIT"] == "2"          # 1.5 cores rounded up
    assert env["CPU_MILLI"] == "250"
    assert env["MEM_MI"] == "256"
    assert env["MEM_REQ"] == str(64 * 1024 * 1024)
    # Only variables declared earlier expand; $$ escapes.
    assert env["GREETING"] == "hi web-1 on node-a, $(POD_NAME) $(LATER)"
    assert env["EMPTY"] == ""
    # Declared order, then the service variables.
    assert names.index("MODE") < names.index("FROM_CM") < names.index("GREETING")
    assert names[-1].startswith("KUBERNETES_")
    # Each ConfigMap and Secret is read once.
    assert sorted(client.gets) == [("configmaps", "shop", "settings"),
                                   ("secrets", "shop", "creds")]


def test_unset_limits_default_to_node_allocatable():
    container = {"name": "app", "env": [
        {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu",
                                                           "divisor": "1m"}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
        {"name": "REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
    ]}
    env, _ = env_of(pod([container]), node_allocatable={"cpu": "2", "memory": "4Gi"})
    assert env["CPU"] == "2000" and env["MEM"] == str(4 * 2 ** 30) and env["REQ"] == "0"


def test_resource_field_ref_of_another_container():
    app = {"name": "app", "env": [{"name": "SIDE_MEM", "valueFrom": {"resourceFieldRef": {
        "containerName": "side", "resource": "limits.memory", "divisor": "1Ki"}}}]}
    side = {"name": "side", "resources": {"limits": {"memory": "1Mi"}}}
    env, _ = env_of(pod([app, side]))
    assert env["SIDE_MEM"] == "1024"


def test_optional_references_tolerate_absence():
    client = FakeClient(configmap("present", {"a": "1"}, namespace="shop"))
    container = {"name": "app",
                 "envFrom": [{"configMapRef": {"name": "gone", "optional": True}},
                             {"secretRef": {"name": "gone", "optional": True}}],
                 "env": [
                     {"name": "X", "valueFrom": {"configMapKeyRef": {
                         "name": "gone", "key": "a", "optional": True}}},
                     {"name": "Y", "valueFrom": {"configMapKeyRef": {
                         "name": "present", "key": "nope", "optional": True}}},
                     {"name": "Z", "valueFrom": {"secretKeyRef": {
                         "name": "gone", "key": "a", "optional": True}}}]}
    env, _ = env_of(pod([container]), client)
    assert not {"X", "Y", "Z", "a"} & set(env)


@pytest.mark.parametrize("env_entry, env_from, message", [
    ({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "a"}}}, None,
     'configmap "gone" not found'),
    ({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope"}}}, None,
     "couldn't find key nope in ConfigMap shop/cm"),
    ({"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "a"}}}, None,
     'secret "gone" not found'),
    ({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope"}}}, None,
     "couldn't find key nope in Secret shop/s"),
    (None, {"configMapRef": {"name": "gone"}}, 'configmap "gone" not found'),
    (None, {"secretRef": {"name": "gone"}}, 'secret "gone" not found'),
    ({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}, None,
     "unsupported fieldPath: spec.bogus"),
    ({"name": "X", "valueFrom": {"resourceFieldRef": {"resource": "limits.bogus"}}}, None,
     "unsupported container resource : limits.bogus"),
])
def test_missing_required_references_are_errors(env_entry, env_from, message):
    client = FakeClient(configmap("cm", {"a": "1"}, namespace="shop"),
                        secret("s", {"a": b"1"}, namespace="shop"))
    container = {"name": "app", "env": [env_entry] if env_entry else [],
                 "envFrom": [env_from] if env_from else []}
    with pytest.raises(EnvError) as caught:
        env_of(pod([container]), client)
    assert str(caught.value) == message


# --- service variables ----------------------------------------------------------------

SHOP_SERVICES = [
    service("web-front", "shop", "10.96.5.5",
            [{"name": "http", "port": 80, "protocol": "TCP"},
             {"name": "dns-udp", "port": 53, "protocol": "UDP"}]),
    service("headless", "shop", "None", [{"port": 80}]),
    service("external", "shop", "", [{"port": 80}]),
    service("other-ns", "elsewhere", "10.96.9.9", [{"port": 80}]),
    service("v6", "shop", "fd00::10", [{"port": 8080}]),
]


def test_service_variables_in_upstream_form():
    env, _ = env_of(pod([{"name": "app"}]), services=[KUBERNETES] + SHOP_SERVICES)
    assert {k: v for k, v in env.items() if k.startswith("KUBERNETES_")} == {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "KUBERNETES_SERVICE_PORT_HTTPS": "443",
        "KUBERNETES_PORT": "tcp://10.96.0.1:443",
        "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": "443",
        "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
    }
    assert env["WEB_FRONT_SERVICE_HOST"] == "10.96.5.5"
    assert env["WEB_FRONT_SERVICE_PORT"] == "80"
    assert env["WEB_FRONT_SERVICE_PORT_HTTP"] == "80"
    assert env["WEB_FRONT_SERVICE_PORT_DNS_UDP"] == "53"
    assert env["WEB_FRONT_PORT"] == "tcp://10.96.5.5:80"
    assert env["WEB_FRONT_PORT_53_UDP"] == "udp://10.96.5.5:53"
    assert env["WEB_FRONT_PORT_53_UDP_PROTO"] == "udp"
    assert env["V6_PORT"] == "tcp://[fd00::10]:8080"
    assert env["V6_PORT_8080_TCP_ADDR"] == "fd00::10"
    assert not any(k.startswith(("HEADLESS_", "EXTERNAL_", "OTHER_NS_")) for k in env)


def test_service_links_disabled_keeps_the_kubernetes_service():
    env, _ = env_of(pod([{"name": "app"}], enableServiceLinks=False),
                    services=[KUBERNETES] + SHOP_SERVICES)
    assert "KUBERNETES_SERVICE_HOST" in env
    assert not any(k.startswith("WEB_FRONT_") for k in env)


def test_declared_variables_win_over_service_variables_and_can_use_them():
    container = {"name": "app", "env": [
        {"name": "KUBERNETES_SERVICE_HOST", "value": "mine"},
        {"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"},
    ]}
    env, names = env_of(pod([container]), services=[KUBERNETES])
    assert env["KUBERNETES_SERVICE_HOST"] == "mine"
    assert names.count("KUBERNETES_SERVICE_HOST") == 1
    assert env["API"] == "https://mine:443"


def test_format_map_quotes_like_go():
    assert envvars.format_map({"b": "x\ny", "a": "tab\there", "c": "é"}) == \
        'a="tab\\there"\nb="x\\ny"\nc="é"'
