"""`python -m kubesmith.client.apply`: the two writes the deploy makes through the API.

    python -m kubesmith.client.apply --kubeconfig /etc/kubernetes/admin.conf -f FILE
    python -m kubesmith.client.apply --kubeconfig /etc/kubernetes/admin.conf \\
        --label-node master-1 node-role.kubernetes.io/control-plane=

(--server overrides the kubeconfig's server URL, e.g. a master's own https://127.0.0.1:6443.)

`-f` server-side applies every document of a YAML file (as `kubectl apply
--server-side --force-conflicts --field-manager kubesmith-deploy`): the add-ons
manifest. `--label-node` sets labels on an existing Node with a merge patch, waiting for
the Node to register first: the control-plane label of masters, which a kubelet may not
set on itself (NodeRestriction). Both retry until --timeout while the API server cannot
be reached or answers 5xx, so the deploy can run them right after a (re)start. Hosts
have no kubectl; this keeps the deploy's needs on the component wheel.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from typing import Any, Awaitable, Callable

import yaml

from kubesmith.api import REGISTRY
from kubesmith.client import kubeconfig
from kubesmith.client.rest import ApiClient, ApiError, TransportError, is_not_found

FIELD_MANAGER = "kubesmith-deploy"
RETRY_INTERVAL = 1.0


class ApplyError(Exception):
    """A manifest the command cannot apply (unknown kind, missing name)."""


def documents(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML text (empty documents skipped); a List's
    items count as documents, as kubectl reads them."""
    objects = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        if not isinstance(doc, dict):
            raise ApplyError(f"not an object: {doc!r:.80}")
        if doc.get("kind", "").endswith("List") and isinstance(doc.get("items"), list):
            objects.extend(doc["items"])
        else:
            objects.append(doc)
    for obj in objects:
        name = (obj.get("metadata") or {}).get("name")
        if not obj.get("apiVersion") or not obj.get("kind") or not name:
            raise ApplyError(f"an object needs apiVersion, kind and metadata.name: {obj!r:.120}")
        if REGISTRY.by_api_version(obj["apiVersion"], obj["kind"]) is None:
            raise ApplyError(f"unknown kind {obj['kind']} in {obj['apiVersion']}")
    return objects


def labels_from(pairs: list[str]) -> dict[str, str | None]:
    """KEY=VALUE sets a label (the value may be empty), KEY- removes it (as kubectl)."""
    labels: dict[str, str | None] = {}
    for pair in pairs:
        if "=" in pair:
            key, value = pair.split("=", 1)
            labels[key] = value
        elif pair.endswith("-"):
            labels[pair[:-1]] = None
        else:
            raise ApplyError(f"label {pair!r} must be KEY=VALUE or KEY-")
    return labels


def _retryable(err: BaseException) -> bool:
    return isinstance(err, TransportError) or (isinstance(err, ApiError) and err.code >= 500)


async def _until(deadline: float, attempt: Callable[[], Awaitable[None]],
                 retry_also: Callable[[BaseException], bool] = lambda err: False) -> None:
    while True:
        try:
            return await attempt()
        except (ApiError, TransportError) as err:
            if not (_retryable(err) or retry_also(err)) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(RETRY_INTERVAL)


async def apply_file(client: ApiClient, path: str, deadline: float) -> list[str]:
    """Server-side apply each object of `path`; returns "<kind>/<name>" of each."""
    with open(path) as handle:
        objects = documents(handle.read())
    done = []
    for obj in objects:
        resource = REGISTRY.by_api_version(obj["apiVersion"], obj["kind"])
        await _until(deadline, lambda: client.apply(resource, obj, field_manager=FIELD_MANAGER,
                                                    force=True))
        namespace = obj["metadata"].get("namespace")
        done.append(f"{obj['kind'].lower()}/{obj['metadata']['name']}"
                    + (f" in {namespace}" if namespace else ""))
    return done


async def label_node(client: ApiClient, node: str, labels: dict[str, str | None],
                     deadline: float) -> None:
    """Merge-patch the Node's labels, waiting (until `deadline`) for it to register."""
    patch = {"metadata": {"labels": labels}}
    await _until(deadline, lambda: client.patch("v1 nodes", node, patch, patch_type="merge"),
                 retry_also=is_not_found)


async def _main(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.timeout
    config = kubeconfig.load(args.kubeconfig)
    if args.server:
        config = dataclasses.replace(config, server=args.server)
    async with ApiClient(config, component="kubesmith-apply") as client:
        for path in args.filename or []:
            for line in await apply_file(client, path, deadline):
                print(f"{line} serverside-applied")
        if args.label_node:
            node, *pairs = args.label_node
            await label_node(client, node, labels_from(pairs), deadline)
            print(f"node/{node} labeled")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubesmith.client.apply")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--server", help="override the kubeconfig's server URL")
    parser.add_argument("-f", "--filename", action="append",
                        help="YAML file whose objects are server-side applied (repeatable)")
    parser.add_argument("--label-node", nargs="+", metavar=("NODE", "KEY=VALUE"),
                        help="set (KEY=VALUE) or remove (KEY-) labels of an existing Node")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to keep retrying while the API server is unreachable "
                             "(and, for --label-node, the Node is not registered)")
    args = parser.parse_args(argv)
    if not args.filename and not args.label_node:
        parser.error("nothing to do: give -f FILE and/or --label-node NODE KEY=VALUE")
    try:
        asyncio.run(_main(args))
    except (ApplyError, OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ApiError, TransportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
