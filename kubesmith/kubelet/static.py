"""Static pods: pod manifests in the kubelet's staticPodPath, run without the API
server, and their mirror pods, which show them in the API.

    source = StaticPodSource(path, node_name, on_change=kubelet.static_pods_changed)
    source.start()                       # reads the folder every fileCheckFrequency
    mirrors = MirrorPods(client, node_name)
    await mirrors.ensure(static_pod, existing_mirror, node_uid)

As upstream's file source and mirror client:
  * every file of the folder not starting with "." holds one Pod (YAML or JSON); the
    pod is named <name>-<node name>, defaults to the "default" namespace, is bound to
    this node, tolerates every NoExecute taint, gets the API server's pod defaults, and
    its uid is a digest of its manifest and node (so an edited manifest is a new pod);
    annotations kubernetes.io/config.hash (= the uid), .source=file and .seen;
  * the mirror pod is a copy created in the API server with the
    kubernetes.io/config.mirror annotation (= the config hash) and owned by the Node (as
    NodeRestriction asks); a mirror pod of an older hash is deleted and made anew; a
    mirror pod whose static pod is gone is deleted.
"""
from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import os
from typing import Any, Callable

import yaml

from kubesmith.api.podspec import default_pod_spec
from kubesmith.client.rest import (ApiClient, ApiError, is_already_exists, is_conflict,
                                   is_not_found)
from kubesmith.api.times import rfc3339

log = logging.getLogger(__name__)

Obj = dict[str, Any]
CONFIG_HASH = "kubernetes.io/config.hash"
CONFIG_SOURCE = "kubernetes.io/config.source"
CONFIG_SEEN = "kubernetes.io/config.seen"
CONFIG_MIRROR = "kubernetes.io/config.mirror"


def is_mirror_pod(pod: Obj) -> bool:
    return CONFIG_MIRROR in ((pod.get("metadata") or {}).get("annotations") or {})


def config_hash(pod: Obj) -> str:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return annotations.get(CONFIG_MIRROR) or annotations.get(CONFIG_HASH) or ""


def static_pod(manifest: Obj, node_name: str, source: str) -> Obj:
    """A static pod from one manifest (see the module docstring); raises ValueError."""
    if not isinstance(manifest, dict) or manifest.get("kind", "Pod") != "Pod":
        raise ValueError("not a Pod manifest")
    pod = copy.deepcopy(manifest)
    pod["apiVersion"], pod["kind"] = "v1", "Pod"
    meta = pod.setdefault("metadata", {})
    if not meta.get("name"):
        raise ValueError("the pod has no metadata.name")
    meta["name"] = f"{meta['name']}-{node_name.lower()}"
    meta["namespace"] = meta.get("namespace") or "default"
    for key in ("resourceVersion", "creationTimestamp", "deletionTimestamp"):
        meta.pop(key, None)
    spec = pod.setdefault("spec", {})
    if not isinstance(spec, dict) or not spec.get("containers"):
        raise ValueError("the pod has no containers")
    spec["nodeName"] = node_name
    tolerations = spec.setdefault("tolerations", [])
    if not any(t.get("operator") == "Exists" and t.get("effect") == "NoExecute"
               and not t.get("key") for t in tolerations):
        tolerations.append({"operator": "Exists", "effect": "NoExecute"})
    default_pod_spec(spec)
    pod.pop("status", None)
    if not meta.get("uid"):
        digest = hashlib.md5(json.dumps(pod, sort_keys=True).encode())
        digest.update(f"host:{node_name}".encode())
        digest.update(f"file:{source}".encode())
        meta["uid"] = digest.hexdigest()
    annotations = meta.setdefault("annotations", {})
    annotations[CONFIG_HASH] = meta["uid"]
    annotations[CONFIG_SOURCE] = "file"
    annotations.setdefault(CONFIG_SEEN, rfc3339())
    pod["status"] = {"phase": "Pending"}
    return pod


def read_static_pods(path: str, node_name: str) -> dict[str, Obj]:
    """uid -> static pod of every manifest in folder `path` (a bad file is logged and
    skipped, as upstream)."""
    pods: dict[str, Obj] = {}
    if not path or not os.path.isdir(path):
        return pods
    for name in sorted(os.listdir(path)):
        file_path = os.path.join(path, name)
        if name.startswith(".") or not os.path.isfile(file_path):
            continue
        try:
            with open(file_path, encoding="utf-8") as source:
                manifest = yaml.safe_load(source)
            pod = static_pod(manifest, node_name, file_path)
        except (OSError, yaml.YAMLError, ValueError) as exc:
            log.warning("static pod %s skipped: %s", file_path, exc)
            continue
        pods[pod["metadata"]["uid"]] = pod
    return pods


class StaticPodSource:
    """Reads the static pod folder every `frequency` seconds and calls
    `on_change(pods)` (uid -> pod) when what it holds changed."""

    def __init__(self, path: str, node_name: str, on_change: Callable[[dict[str, Obj]], None],
                 frequency: float = 20.0):
        self.path = path
        self.node_name = node_name
        self.on_change = on_change
        self.frequency = max(0.5, frequency)
        self.pods: dict[str, Obj] = {}
        self._first = True
        self._task: asyncio.Task | None = None

    def poll(self) -> bool:
        """Read the folder now; true when the set of pods changed (the first read
        always reports)."""
        found = read_static_pods(self.path, self.node_name)
        # The "seen" time differs at each read: a pod is kept as first seen.
        merged = {uid: self.pods.get(uid, pod) for uid, pod in found.items()}
        changed = self._first or set(merged) != set(self.pods)
        self._first = False
        self.pods = merged
        if changed:
            self.on_change(dict(merged))
        return changed

    def start(self) -> None:
        self.poll()
        self._task = asyncio.create_task(self._loop(), name="kubelet-static-pods")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.frequency)
            try:
                self.poll()
            except Exception:
                log.exception("reading static pods")


def mirror_manifest(pod: Obj, node_name: str, node_uid: str) -> Obj:
    mirror = copy.deepcopy(pod)
    meta = mirror["metadata"]
    static_uid = meta.pop("uid", "")
    meta.pop("resourceVersion", None)
    meta["annotations"] = dict(meta.get("annotations") or {}, **{CONFIG_MIRROR: static_uid})
    if node_uid:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node_name,
                                    "uid": node_uid, "controller": True}]
    mirror.pop("status", None)
    return mirror


class MirrorPods:
    """Creates and deletes the mirror pods of static pods."""

    def __init__(self, client: ApiClient, node_name: str):
        self.client = client
        self.node_name = node_name

    async def ensure(self, pod: Obj, mirror: Obj | None, node_uid: str) -> None:
        """Make the mirror of static pod `pod` exist (given the current one, or None)."""
        wanted_hash = pod["metadata"]["uid"]
        if mirror is not None:
            meta = mirror.get("metadata") or {}
            if config_hash(mirror) == wanted_hash and not meta.get("deletionTimestamp"):
                return
            await self.delete(mirror)
        meta = pod["metadata"]
        try:
            await self.client.create("v1 pods", mirror_manifest(pod, self.node_name, node_uid),
                                     meta["namespace"])
            log.info("mirror pod %s/%s created", meta["namespace"], meta["name"])
        except ApiError as exc:
            if not is_already_exists(exc):
                raise

    async def delete(self, mirror: Obj) -> None:
        meta = mirror.get("metadata") or {}
        try:
            await self.client.delete("v1 pods", meta.get("name", ""), meta.get("namespace", ""),
                                     grace_period_seconds=0,
                                     preconditions={"uid": meta.get("uid", "")})
        except ApiError as exc:
            if not (is_not_found(exc) or is_conflict(exc)):
                raise
