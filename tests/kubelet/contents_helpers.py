"""Fakes shared by the volume, environment and probe tests: an API client that holds
ConfigMaps and Secrets and issues tokens, and a CRI runtime that only answers ExecSync."""
from __future__ import annotations

import asyncio
import base64
import datetime
from typing import Any, Callable

import grpc

from kubesmith.client.rest import ApiError
from kubesmith.cri.client import RuntimeError_

Obj = dict[str, Any]


def not_found(plural: str, name: str) -> ApiError:
    return ApiError({"kind": "Status", "code": 404, "reason": "NotFound",
                     "message": f'{plural} "{name}" not found'})


def configmap(name: str, data: dict[str, str] | None = None,
              binary: dict[str, bytes] | None = None, namespace: str = "default") -> Obj:
    obj: Obj = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace}, "data": data or {}}
    if binary:
        obj["binaryData"] = {k: base64.b64encode(v).decode() for k, v in binary.items()}
    return obj


def secret(name: str, data: dict[str, bytes], namespace: str = "default") -> Obj:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name,
                                                               "namespace": namespace},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


class FakeClient:
    """The few ApiClient calls the kubelet's pod contents make: get of configmaps and
    secrets, and POST serviceaccounts/<name>/token."""

    def __init__(self, *objects: Obj):
        self.objects: dict[tuple[str, str, str], Obj] = {}
        for obj in objects:
            self.put(obj)
        self.gets: list[tuple[str, str, str]] = []
        self.token_requests: list[tuple[str, str, Obj]] = []
        self.token_lifetime: int | None = None  # what the "server" grants (None: as asked)

    def put(self, obj: Obj) -> None:
        plural = obj["kind"].lower() + "s"
        self.objects[(plural, obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj

    def delete(self, plural: str, namespace: str, name: str) -> None:
        self.objects.pop((plural, namespace, name), None)

    async def get(self, resource: str, name: str, namespace: str | None = None, **_) -> Obj:
        self.gets.append((resource, namespace or "", name))
        try:
            return self.objects[(resource, namespace or "", name)]
        except KeyError:
            raise not_found(resource, name) from None

    async def create(self, resource: str, body: Obj, namespace: str | None = None, *,
                     name: str | None = None, subresource: str | None = None, **_) -> Obj:
        assert (resource, subresource) == ("serviceaccounts", "token"), (resource, subresource)
        self.token_requests.append((namespace or "", name or "", body))
        spec = dict(body["spec"])
        lifetime = self.token_lifetime or spec["expirationSeconds"]
        spec["expirationSeconds"] = lifetime
        expires = datetime.datetime.now(datetime.timezone.utc) + \
            datetime.timedelta(seconds=lifetime)
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": spec,
                "status": {"token": f"token-{len(self.token_requests)}",
                           "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}}


class FakeRuntime:
    """A runtime whose ExecSync answers from `handler(container_id, cmd)`, which returns
    (exit code, stdout, stderr), or raises, or sleeps."""

    def __init__(self, handler: Callable[[str, list[str]], Any]):
        self.handler = handler
        self.calls: list[tuple[str, list[str], int]] = []

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: int):
        self.calls.append((container_id, cmd, timeout))
        answer = self.handler(container_id, cmd)
        if asyncio.iscoroutine(answer):
            answer = await answer
        return answer


def deadline_exceeded() -> RuntimeError_:
    return RuntimeError_("ExecSync", grpc.StatusCode.DEADLINE_EXCEEDED, "timeout")
