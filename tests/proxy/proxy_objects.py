"""Service and EndpointSlice dicts for kube-proxy's tests, and the chain names upstream
gives them."""
from __future__ import annotations

from kubesmith.proxy.servicemap import endpoint_chain_name, port_proto_hash

POD_RANGE = "10.244.0.0/16"


def service(name="web", namespace="default", *, ports=None, type_="ClusterIP",
            cluster_ip="10.96.0.20", labels=None, **spec):
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"type": type_, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                     "ports": ports or [{"name": "http", "port": 80, "protocol": "TCP",
                                         "targetPort": 8080}], **spec}}


def endpoint(ip, *, node="node-1", ready=True, serving=None, terminating=None):
    conditions = {"ready": ready}
    if serving is not None:
        conditions["serving"] = serving
    if terminating is not None:
        conditions["terminating"] = terminating
    return {"addresses": [ip], "conditions": conditions, "nodeName": node}


def slice_(service_name="web", namespace="default", *endpoints, name=None, ports=None,
           address_type="IPv4"):
    return {"metadata": {"name": name or f"{service_name}-abcde", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": address_type,
            "ports": ports or [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": list(endpoints)}


def svc_chain(name="default/web:http", proto="tcp"):
    return "KUBE-SVC-" + port_proto_hash(name, proto)


def sep(ip_port, name="default/web:http", proto="tcp"):
    return endpoint_chain_name(name, proto, ip_port)
