"""pods/log, pods/exec, pods/attach and pods/portforward, proxied to the node's kubelet.

The kubelet is reached at the Node's address (InternalIP first) and its
status.daemonEndpoints.kubeletEndpoint.Port (10250 by default), over TLS with
--kubelet-client-certificate/--kubelet-client-key; its serving certificate is verified
against --kubelet-certificate-authority when given (as upstream, not verified otherwise).

Logs are streamed through. exec, attach and portforward are upgrade requests: the
request goes to the kubelet as it came (minus the caller's credentials), and once the
kubelet answers 101 Switching Protocols the bytes are relayed untouched both ways, so
WebSocket (v5.channel.k8s.io, kubectl >= 1.30) and SPDY/3.1 (older kubectl) both pass.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web

from kubesmith.api.registry import REGISTRY
from kubesmith.apiserver import errors
from kubesmith.apiserver.context import Ctx
from kubesmith.upgraderelay import read_response_head, relay_upgraded

if TYPE_CHECKING:
    from kubesmith.apiserver.rest import Target
    from kubesmith.apiserver.server import APIServer

log = logging.getLogger(__name__)

Obj = dict[str, Any]
DEFAULT_KUBELET_PORT = 10250
ADDRESS_TYPES = ("InternalIP", "Hostname", "InternalDNS", "ExternalIP", "ExternalDNS")
LOG_PARAMS = ("follow", "previous", "timestamps", "sinceSeconds", "sinceTime", "tailLines",
              "limitBytes", "stream")
UPGRADE_PARAMS = ("command", "stdin", "stdout", "stderr", "tty", "ports")
# Not passed on: hop-by-hop framing and the caller's own credentials.
DROPPED_HEADERS = {"host", "authorization", "content-length", "transfer-encoding",
                   "proxy-authorization"}
MAX_ERROR_BODY = 64 * 1024
CONNECT_TIMEOUT = 10.0


def ssl_context(srv: "APIServer") -> ssl.SSLContext:
    context = getattr(srv, "_kubelet_ssl", None)
    if context is None:
        options = srv.options
        ca = getattr(options, "kubelet_certificate_authority", None)
        if ca:
            context = ssl.create_default_context(cafile=ca)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if options.kubelet_client_certificate and options.kubelet_client_key:
            context.load_cert_chain(options.kubelet_client_certificate,
                                    options.kubelet_client_key)
        context.set_alpn_protocols(["http/1.1"])
        srv._kubelet_ssl = context
    return context


def _container_names(spec: Obj, key: str) -> list[str]:
    return [c.get("name", "") for c in spec.get(key) or [] if isinstance(c, dict)]


def pick_container(pod: Obj, name: str, wanted: str | None) -> str:
    spec = pod.get("spec") or {}
    containers = _container_names(spec, "containers")
    init = _container_names(spec, "initContainers")
    ephemeral = _container_names(spec, "ephemeralContainers")
    if not wanted:
        if len(containers) == 1:
            return containers[0]
        message = (f"a container name must be specified for pod {name}, choose one of: "
                   f"[{' '.join(containers)}]")
        if init:
            message += f" or one of the init containers: [{' '.join(init)}]"
        if ephemeral:
            message += f" or one of the ephemeral containers: [{' '.join(ephemeral)}]"
        raise errors.bad_request(message)
    if wanted not in containers + init + ephemeral:
        raise errors.bad_request(f"container {wanted} is not valid for pod {name}")
    return wanted


async def _pod(srv: "APIServer", target: "Target") -> Obj:
    from kubesmith.apiserver import rest
    main = rest.Target(target.rt, target.storage, target.namespace, target.name, "")
    pod, _ = await rest.read_current(srv, main)
    return pod


async def kubelet_location(srv: "APIServer", node_name: str, pod_name: str) -> tuple[str, int]:
    if not node_name:
        raise errors.bad_request(f"pod {pod_name} does not have a host assigned")
    nodes = REGISTRY.get("", "v1", "nodes")
    kv = await srv.store.get(nodes.storage_key(None, node_name))
    if kv is None:
        raise errors.not_found("nodes", "", node_name)
    node = srv.storage.for_type(nodes).decode_or_fail(kv)
    status = node.get("status") or {}
    addresses = [a for a in status.get("addresses") or [] if isinstance(a, dict)]
    host = node_name
    for kind in ADDRESS_TYPES:
        found = next((a.get("address") for a in addresses
                      if a.get("type") == kind and a.get("address")), None)
        if found:
            host = found
            break
    port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        port = DEFAULT_KUBELET_PORT
    return host, port


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_log_params(ctx: Ctx) -> list[tuple[str, str]]:
    params = []
    for name in LOG_PARAMS:
        value = ctx.query.get(name)
        if value is None:
            continue
        if name in ("sinceSeconds", "tailLines", "limitBytes"):
            try:
                number = int(value)
            except ValueError:
                raise errors.bad_request(f'{name}: Invalid value: "{value}": must be an '
                                         "integer") from None
            low = 0 if name == "tailLines" else 1
            if number < low:
                raise errors.APIError(422, "Invalid", f'PodLogOptions "" is invalid: {name}: '
                                      f"Invalid value: {number}: must be greater than or "
                                      f"equal to {low}")
        elif name in ("follow", "previous", "timestamps"):
            if value not in ("true", "false", "1", "0", "True", "False", ""):
                raise errors.bad_request(f'{name}: Invalid value: "{value}": must be a boolean')
        params.append((name, value))
    if ctx.query.get("sinceSeconds") and ctx.query.get("sinceTime"):
        raise errors.APIError(422, "Invalid", 'PodLogOptions "" is invalid: sinceSeconds: '
                              "Forbidden: at most one of `sinceTime` or `sinceSeconds` may "
                              "be specified")
    return params


async def logs(srv: "APIServer", ctx: Ctx, target: "Target", method: str):
    if method != "GET":
        raise errors.method_not_allowed(method, "pods/log")
    params = _check_log_params(ctx)
    pod = await _pod(srv, target)
    container = pick_container(pod, target.name, ctx.query.get("container"))
    host, port = await kubelet_location(srv, (pod.get("spec") or {}).get("nodeName") or "",
                                        target.name)
    path = "/containerLogs/" + "/".join(quote(p, safe="") for p in (
        target.namespace, target.name, container))
    url = f"https://{_url_host(host)}:{port}{path}"
    if params:
        url += "?" + urlencode(params)
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT)
    session = aiohttp.ClientSession(timeout=timeout)
    try:
        try:
            upstream = await session.get(url, ssl=ssl_context(srv), allow_redirects=False)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise errors.APIError(500, "InternalError", f'Get "{url}": {exc or "timed out"}',
                                  {"causes": [{"message": str(exc)}]}) from None
        async with upstream:
            if upstream.status >= 300:
                text = (await upstream.content.read(MAX_ERROR_BODY)).decode(errors="replace")
                reason = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden",
                          404: "NotFound"}.get(upstream.status, "InternalError")
                raise errors.APIError(upstream.status if upstream.status < 600 else 500,
                                      reason, text.strip() or reason)
            response = web.StreamResponse(status=200)
            response.content_type = "text/plain"
            response.enable_chunked_encoding()
            await response.prepare(ctx.request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.info("log stream of %s/%s ended: %s", target.namespace, target.name, exc)
            await response.write_eof()
            return response
    finally:
        await session.close()


async def _upgrade(srv: "APIServer", ctx: Ctx, target: "Target", method: str, kind: str):
    request = ctx.request
    pod = await _pod(srv, target)
    spec = pod.get("spec") or {}
    phase = (pod.get("status") or {}).get("phase")
    if kind == "portForward":
        segments = (target.namespace, target.name)
    else:
        container = pick_container(pod, target.name, ctx.query.get("container"))
        if phase in ("Succeeded", "Failed"):
            raise errors.bad_request(f"cannot {kind} into a container in a completed pod; "
                                     f"current phase is {phase}")
        segments = (target.namespace, target.name, container)
    host, port = await kubelet_location(srv, spec.get("nodeName") or "", target.name)
    if "upgrade" not in request.headers.get("Connection", "").lower():
        raise errors.bad_request("Upgrade request required")
    path = f"/{kind}/" + "/".join(quote(p, safe="") for p in segments)
    query = [(k, v) for k, v in request.query.items() if k in UPGRADE_PARAMS]
    if query:
        path += "?" + urlencode(query)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            host, port, ssl=ssl_context(srv), server_hostname=host
            if getattr(srv.options, "kubelet_certificate_authority", None) else None),
            CONNECT_TIMEOUT)
    except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
        url = f"https://{_url_host(host)}:{port}{path}"
        raise errors.APIError(500, "InternalError",
                              f"error dialing backend: {exc or 'timed out'} ({url})") from None
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: {_url_host(host)}:{port}"]
        for name, value in request.headers.items():
            lower = name.lower()
            if lower in DROPPED_HEADERS or lower.startswith("impersonate-"):
                continue
            head.append(f"{name}: {value}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        status, headers = await asyncio.wait_for(read_response_head(reader), CONNECT_TIMEOUT)
    except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError,
            asyncio.LimitOverrunError) as exc:
        writer.close()
        raise errors.APIError(500, "InternalError",
                              f"error upgrading connection: {exc or 'timed out'}") from None
    if status != 101:
        # The kubelet refused: its answer goes back as it is.
        length = next((int(v) for k, v in headers if k.lower() == "content-length"
                       and v.isdigit()), None)
        try:
            body = await asyncio.wait_for(
                reader.readexactly(min(length, MAX_ERROR_BODY)) if length is not None
                else reader.read(MAX_ERROR_BODY), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            body = b""
        writer.close()
        content_type = next((v for k, v in headers if k.lower() == "content-type"),
                            "text/plain")
        response = web.Response(status=status, body=body)
        response.headers["Content-Type"] = content_type
        return response
    return await relay_upgraded(request, reader, writer, headers)


async def exec_(srv: "APIServer", ctx: Ctx, target: "Target", method: str):
    if method not in ("GET", "POST"):
        raise errors.method_not_allowed(method, "pods/exec")
    return await _upgrade(srv, ctx, target, method, "exec")


async def attach(srv: "APIServer", ctx: Ctx, target: "Target", method: str):
    if method not in ("GET", "POST"):
        raise errors.method_not_allowed(method, "pods/attach")
    return await _upgrade(srv, ctx, target, method, "attach")


async def portforward(srv: "APIServer", ctx: Ctx, target: "Target", method: str):
    if method not in ("GET", "POST"):
        raise errors.method_not_allowed(method, "pods/portforward")
    return await _upgrade(srv, ctx, target, method, "portForward")


SUBRESOURCES = {"log": logs, "exec": exec_, "attach": attach, "portforward": portforward}
