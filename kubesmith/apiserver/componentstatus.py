"""core/v1 ComponentStatus (`kubectl get componentstatuses`, deprecated since 1.19).

Nothing is stored: every get or list probes the components when it is asked, as
upstream does:

  * scheduler           GET https://127.0.0.1:10259/healthz (certificate not verified)
  * controller-manager  GET https://127.0.0.1:10257/healthz
  * etcd-<i>            a status call to the i-th --etcd-servers member

Each probe is bounded (PROBE_TIMEOUT) and the probes of one list run concurrently. A
healthy component has the condition {"type": "Healthy", "status": "True", "message":
<its answer>}; an unhealthy one {"type": "Healthy", "status": "False", "error": <why>}.
Every answer carries upstream's deprecation warning.
"""
from __future__ import annotations

import asyncio
import errno
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from kubesmith.apiserver import negotiation
from kubesmith.apiserver.context import Ctx
from kubesmith.store import EtcdStore, StoreError

if TYPE_CHECKING:
    from kubesmith.apiserver.rest import Target
    from kubesmith.apiserver.server import APIServer

Obj = dict[str, Any]
Probe = Callable[[], Awaitable[tuple[bool, str]]]

DEPRECATION = "v1 ComponentStatus is deprecated in v1.19+"
PROBE_TIMEOUT = 2.0
SCHEDULER_URL = "https://127.0.0.1:10259/healthz"
CONTROLLER_MANAGER_URL = "https://127.0.0.1:10257/healthz"
_BODY_LIMIT = 64 * 1024


def _dial_error(url: str, exc: BaseException) -> str:
    """A failed connection worded as Go's HTTP client words it (what upstream shows)."""
    parts = urlsplit(url)
    address = f"{parts.hostname}:{parts.port}"
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.errno is not None:
        reason = {errno.ECONNREFUSED: "connection refused",
                  errno.EHOSTUNREACH: "no route to host",
                  errno.ENETUNREACH: "network is unreachable"}.get(
                      cause.errno, (cause.strerror or str(cause)).lower())
        return f'Get "{url}": dial tcp {address}: connect: {reason}'
    return f'Get "{url}": {exc}'


async def probe_http(url: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """(healthy, the answer or the failure) of an HTTPS health endpoint."""
    connector = aiohttp.TCPConnector(ssl=False)
    try:
        async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(url, allow_redirects=True) as response:
                body = (await response.content.read(_BODY_LIMIT)).decode(errors="replace")
                if 200 <= response.status < 400:
                    return True, body
                return False, f"HTTP probe failed with statuscode: {response.status}"
    except asyncio.TimeoutError:
        return False, (f'Get "{url}": context deadline exceeded (Client.Timeout exceeded '
                       "while awaiting headers)")
    except aiohttp.ClientConnectorError as exc:
        return False, _dial_error(url, exc.os_error)
    except (aiohttp.ClientError, OSError) as exc:
        return False, f'Get "{url}": {exc}'


async def probe_etcd(srv: "APIServer", endpoint: str,
                     timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """(healthy, "ok" or the failure) of one etcd member, asked on its own."""
    options = srv.options
    try:
        store = EtcdStore([endpoint], options.etcd_cafile, options.etcd_certfile,
                          options.etcd_keyfile, timeout=timeout)
    except (ValueError, OSError) as exc:
        return False, str(exc)
    try:
        await asyncio.wait_for(store.status(), timeout)
        return True, "ok"
    except asyncio.TimeoutError:
        return False, f"etcd at {endpoint} did not answer within {timeout:g}s"
    except StoreError as exc:
        return False, str(exc)
    finally:
        await store.close()


def components(srv: "APIServer") -> dict[str, Probe]:
    """name -> probe, in upstream's order."""
    probes: dict[str, Probe] = {
        "scheduler": lambda: probe_http(SCHEDULER_URL),
        "controller-manager": lambda: probe_http(CONTROLLER_MANAGER_URL),
    }
    for index, endpoint in enumerate(srv.options.etcd_servers):
        probes[f"etcd-{index}"] = lambda endpoint=endpoint: probe_etcd(srv, endpoint)
    return probes


def component_status(name: str, healthy: bool, detail: str) -> Obj:
    condition: Obj = {"type": "Healthy", "status": "True" if healthy else "False"}
    condition["message" if healthy else "error"] = detail
    return {"kind": "ComponentStatus", "apiVersion": "v1", "metadata": {"name": name},
            "conditions": [condition]}


async def _probe(name: str, probe: Probe) -> Obj:
    try:
        healthy, detail = await probe()
    except Exception as exc:  # a probe must never fail the whole request
        healthy, detail = False, str(exc) or type(exc).__name__
    return component_status(name, healthy, detail)


async def serve(srv: "APIServer", ctx: Ctx, target: "Target") -> web.Response:
    """GET of one component (target.name) or of the list; the verb is already checked."""
    from kubesmith.apiserver import rest
    ctx.warn(DEPRECATION)
    output = negotiation.negotiate(ctx.request.headers.get("Accept"), allow_transform=True)
    probes = components(srv)
    if target.name:
        probe = probes.get(target.name)
        if probe is None:
            raise target.not_found()
        return rest.render_one(ctx, target.rt, await _probe(target.name, probe), output)
    selectors = rest.ListSelectors(target.rt, ctx)
    items = await asyncio.gather(*(_probe(name, probe) for name, probe in probes.items()))
    items = [item for item in items if selectors.matches(item)]
    return rest.render_list(ctx, target.rt, items, {}, output)


# (group, plural) -> handler of kinds computed per request instead of stored.
HANDLERS = {("", "componentstatuses"): serve}
