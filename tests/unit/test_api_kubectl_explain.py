"""Real kubectl renders `kubectl explain` from these OpenAPI documents.

A throwaway plain-HTTP server on 127.0.0.1 serves the discovery documents
(kubesmith.api.discovery, aggregated and legacy) and the OpenAPI v3/v2 documents; every
kubectl build found next to /usr/bin/kubectl runs against it. Missing builds are skipped.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubesmith.api import discovery
from kubesmith.api.openapi import v2_document, v3_document, v3_index_body
from kubesmith.api.openapi_pb import ACCEPT_TYPES, CONTENT_TYPE, v2_protobuf


def _kubectl_builds() -> list[str]:
    main = Path("/usr/bin/kubectl")
    if not main.exists():
        return []
    folder = main.resolve().parent
    builds = [str(main)] + sorted(str(p) for p in folder.glob("kubectl.1.*"))
    return [b for b in builds if os.access(b, os.X_OK)]


BUILDS = _kubectl_builds()


class _Handler(BaseHTTPRequestHandler):
    served_aggregated = False

    def log_message(self, *args):  # quiet
        pass

    def _send(self, body: bytes, content_type: str = "application/json", code: int = 200):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        path = self.path.partition("?")[0]
        aggregated = discovery.AGGREGATED_CONTENT_TYPE in (self.headers.get("Accept") or "")
        if path in ("/api", "/apis") and aggregated:
            body = discovery.aggregated_discovery(legacy=path == "/api")
            type(self).served_aggregated = True
            return self._send(json.dumps(body).encode(), discovery.AGGREGATED_CONTENT_TYPE)
        if path == "/api":
            return self._send(json.dumps(discovery.api_versions()).encode())
        if path == "/apis":
            return self._send(json.dumps(discovery.api_group_list()).encode())
        parts = path.split("/")
        listing = None
        if path == "/api/v1":
            listing = discovery.api_resource_list("", "v1")
        elif len(parts) == 4 and parts[1] == "apis":
            listing = discovery.api_resource_list(parts[2], parts[3])
        if listing is not None:
            return self._send(json.dumps(listing).encode())
        if path == "/openapi/v3":
            return self._send(v3_index_body())
        if path.startswith("/openapi/v3/"):
            doc = v3_document(path[len("/openapi/v3/"):])
            if doc is not None:
                return self._send(doc.body)
        if path == "/openapi/v2":
            accept = self.headers.get("Accept") or ""
            if any(t in accept for t in ACCEPT_TYPES):
                return self._send(v2_protobuf().body, CONTENT_TYPE)
            return self._send(v2_document().body)
        if path == "/version":
            return self._send(json.dumps({"major": "1", "minor": "33",
                                          "gitVersion": "v1.33.0"}).encode())
        self._send(json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "NotFound", "code": 404}).encode(), code=404)


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    folder = tmp_path_factory.mktemp("kubectl")
    config = folder / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{server.server_port}'}}}}]\n"
        "users: [{name: u, user: {}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n")
    yield config, folder / "cache"
    server.shutdown()
    server.server_close()


def _explain(build: str, kubeconfig, *args: str) -> str:
    config, cache = kubeconfig
    result = subprocess.run([build, "--kubeconfig", str(config), "--cache-dir", str(cache),
                             "explain", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(not BUILDS, reason="no kubectl found")
@pytest.mark.parametrize("build", BUILDS, ids=lambda b: Path(b).name)
def test_kubectl_explain_renders_fields(build, kubeconfig):
    out = _explain(build, kubeconfig, "pod.spec.containers")
    assert "Pod" in out and "VERSION:" in out
    for line in ("name\t<string> -required-", "image\t<string>", "ports\t<[]ContainerPort>",
                 "resources\t<ResourceRequirements>"):
        assert line in out, out
    out = _explain(build, kubeconfig, "deploy.spec.strategy.rollingUpdate")
    assert "maxSurge\t<IntOrString>" in out, out
    out = _explain(build, kubeconfig, "cj.spec.jobTemplate.spec.template.spec.restartPolicy")
    assert "restartPolicy <string>" in out or "restartPolicy\t<string>" in out, out


@pytest.mark.skipif(not BUILDS, reason="no kubectl found")
def test_kubectl_explain_openapi_v2_output(kubeconfig):
    out = _explain(BUILDS[0], kubeconfig, "svc.spec.ports", "--output=plaintext-openapiv2")
    assert "port\t<integer> -required-" in out, out


def _kubectl(build: str, kubeconfig, *args: str) -> str:
    config, cache = kubeconfig
    result = subprocess.run([build, "--kubeconfig", str(config), "--cache-dir", str(cache),
                             *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(not BUILDS, reason="no kubectl found")
def test_kubectl_api_resources_from_discovery(kubeconfig):
    out = _kubectl(BUILDS[0], kubeconfig, "api-resources", "--no-headers")
    assert _Handler.served_aggregated
    rows = {tuple(line.split()[:2]) for line in out.splitlines()}
    assert ("deployments", "deploy") in rows and ("pods", "po") in rows
    out = _kubectl(BUILDS[0], kubeconfig, "api-resources", "--categories=all", "-o", "name")
    assert set(out.split()) == {"pods", "replicationcontrollers", "services",
                                "daemonsets.apps", "deployments.apps", "replicasets.apps",
                                "statefulsets.apps", "cronjobs.batch", "jobs.batch"}
