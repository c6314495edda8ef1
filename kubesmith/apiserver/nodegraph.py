"""The Node authorizer's graph: which objects each node may reach through its pods.

Edges follow upstream's: a pod bound to a node (spec.nodeName) links the node to the
secrets, config maps, persistent volume claims, resource claims and service account
the pod references; a persistent volume links to the claim it is bound to (claimRef)
and the secrets it names. A node may reach an object when a path leads from it to the
node.

The graph is fed by the API server's own watch caches (pods and persistentvolumes):
it subscribes as one more watcher whose events are applied the moment the cache applies
them, so the graph is never behind what a watch client of the same cache has been told.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Iterable

from kubesmith.apiserver.watchcache import DELETED, CacheEvent, CacheWatcher, WatchCache

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Ref = tuple[str, str, str]    # (kind, namespace, name); namespace "" for cluster scope

SECRET, CONFIGMAP, PVC, PV, SERVICEACCOUNT, RESOURCECLAIM = (
    "secret", "configmap", "pvc", "pv", "serviceaccount", "resourceclaim")

# Volume sources whose secretRef names a secret in the pod's namespace.
_SECRET_REF_VOLUMES = ("cephfs", "cinder", "flexVolume", "rbd", "storageos", "scaleIO", "iscsi")
# Persistent volume sources naming secrets: source -> (ref field, namespace field or None).
_PV_SECRET_REFS = {
    "csi": ("controllerPublishSecretRef", "nodePublishSecretRef", "nodeStageSecretRef",
            "controllerExpandSecretRef", "nodeExpandSecretRef"),
    "cephfs": ("secretRef",), "cinder": ("secretRef",), "flexVolume": ("secretRef",),
    "rbd": ("secretRef",), "scaleIO": ("secretRef",), "iscsi": ("secretRef",),
    "storageos": ("secretRef",),
}


def _dicts(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def pod_references(pod: Obj) -> set[Ref]:
    """Every secret, config map, claim and service account a pod uses (upstream's
    VisitPodSecretNames / VisitPodConfigmapNames plus volumes and the account)."""
    meta = pod.get("metadata") or {}
    namespace, pod_name = meta.get("namespace", ""), meta.get("name", "")
    spec = pod.get("spec") or {}
    refs: set[Ref] = set()

    def add(kind: str, name: Any, ns: str = namespace) -> None:
        if isinstance(name, str) and name:
            refs.add((kind, ns, name))

    for secret in _dicts(spec.get("imagePullSecrets")):
        add(SECRET, secret.get("name"))
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for container in _dicts(spec.get(key)):
            for env in _dicts(container.get("env")):
                add(SECRET, _get(env, "valueFrom", "secretKeyRef", "name"))
                add(CONFIGMAP, _get(env, "valueFrom", "configMapKeyRef", "name"))
            for env_from in _dicts(container.get("envFrom")):
                add(SECRET, _get(env_from, "secretRef", "name"))
                add(CONFIGMAP, _get(env_from, "configMapRef", "name"))
    for volume in _dicts(spec.get("volumes")):
        add(SECRET, _get(volume, "secret", "secretName"))
        add(CONFIGMAP, _get(volume, "configMap", "name"))
        add(PVC, _get(volume, "persistentVolumeClaim", "claimName"))
        if isinstance(volume.get("ephemeral"), dict):
            add(PVC, f"{pod_name}-{volume.get('name', '')}")
        for source in _SECRET_REF_VOLUMES:
            add(SECRET, _get(volume, source, "secretRef", "name"))
        add(SECRET, _get(volume, "csi", "nodePublishSecretRef", "name"))
        azure = volume.get("azureFile")
        if isinstance(azure, dict):
            add(SECRET, azure.get("secretName"), azure.get("secretNamespace") or namespace)
        for projection in _dicts(_get(volume, "projected", "sources")):
            add(SECRET, _get(projection, "secret", "name"))
            add(CONFIGMAP, _get(projection, "configMap", "name"))
    add(SERVICEACCOUNT, spec.get("serviceAccountName") or spec.get("serviceAccount"))
    for claim in _dicts(_get(pod, "status", "resourceClaimStatuses")):
        add(RESOURCECLAIM, claim.get("resourceClaimName"))
    for claim in _dicts(spec.get("resourceClaims")):
        add(RESOURCECLAIM, claim.get("resourceClaimName"))
    return refs


def pv_references(pv: Obj) -> tuple[Ref | None, set[Ref]]:
    """(the claim a persistent volume is bound to, the secrets it names)."""
    spec = pv.get("spec") or {}
    claim_ref = spec.get("claimRef")
    claim = None
    if isinstance(claim_ref, dict) and claim_ref.get("name"):
        claim = (PVC, claim_ref.get("namespace") or "", claim_ref["name"])
    secrets: set[Ref] = set()
    for source, fields in _PV_SECRET_REFS.items():
        volume = spec.get(source)
        if not isinstance(volume, dict):
            continue
        for field in fields:
            ref = volume.get(field)
            if isinstance(ref, dict) and ref.get("name"):
                secrets.add((SECRET, ref.get("namespace") or "default", ref["name"]))
    azure = spec.get("azureFile")
    if isinstance(azure, dict) and azure.get("secretName"):
        secrets.add((SECRET, azure.get("secretNamespace") or "default", azure["secretName"]))
    return claim, secrets


class Graph:
    def __init__(self) -> None:
        # pod (namespace, name) -> (node, uid, references)
        self.pods: dict[tuple[str, str], tuple[str, str, frozenset[Ref]]] = {}
        # reference -> how many pods on each node use it
        self.users: dict[Ref, Counter] = {}
        # persistent volume name -> (claim, secrets); secret -> volumes naming it
        self.volumes: dict[str, tuple[Ref | None, set[Ref]]] = {}
        self.volume_secrets: dict[Ref, set[str]] = {}

    # --- changes -------------------------------------------------------------------

    def set_pod(self, pod: Obj) -> None:
        meta = pod.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        node = (pod.get("spec") or {}).get("nodeName") or ""
        old = self.pods.get(key)
        if not node:
            if old is not None:
                self.delete_pod(*key)
            return
        refs = frozenset(pod_references(pod))
        entry = (node, meta.get("uid", ""), refs)
        if old == entry:
            return
        if old is not None:
            self.delete_pod(*key)
        self.pods[key] = entry
        for ref in refs:
            self.users.setdefault(ref, Counter())[node] += 1

    def delete_pod(self, namespace: str, name: str) -> None:
        old = self.pods.pop((namespace, name), None)
        if old is None:
            return
        node, _, refs = old
        for ref in refs:
            counter = self.users.get(ref)
            if counter is None:
                continue
            counter[node] -= 1
            if counter[node] <= 0:
                del counter[node]
            if not counter:
                del self.users[ref]

    def set_pv(self, pv: Obj) -> None:
        name = (pv.get("metadata") or {}).get("name", "")
        self.delete_pv(name)
        claim, secrets = pv_references(pv)
        self.volumes[name] = (claim, secrets)
        for secret in secrets:
            self.volume_secrets.setdefault(secret, set()).add(name)

    def delete_pv(self, name: str) -> None:
        old = self.volumes.pop(name, None)
        if old is None:
            return
        for secret in old[1]:
            names = self.volume_secrets.get(secret)
            if names is not None:
                names.discard(name)
                if not names:
                    del self.volume_secrets[secret]

    def clear_pods(self) -> None:
        self.pods.clear()
        self.users.clear()

    def clear_pvs(self) -> None:
        self.volumes.clear()
        self.volume_secrets.clear()

    # --- questions -----------------------------------------------------------------

    def _used_on(self, node: str, ref: Ref) -> bool:
        counter = self.users.get(ref)
        return bool(counter) and counter.get(node, 0) > 0

    def _pv_reachable(self, node: str, name: str) -> bool:
        entry = self.volumes.get(name)
        return entry is not None and entry[0] is not None and self._used_on(node, entry[0])

    def has_path(self, node: str, kind: str, namespace: str, name: str) -> bool:
        """Whether `node` may reach the object through the pods bound to it."""
        if kind == PV:
            return self._pv_reachable(node, name)
        ref = (kind, namespace, name)
        if self._used_on(node, ref):
            return True
        if kind == SECRET:
            return any(self._pv_reachable(node, pv) for pv in self.volume_secrets.get(ref, ()))
        return False

    def pod_node(self, namespace: str, name: str) -> tuple[str, str] | None:
        """(node, uid) of a pod the graph knows to be bound."""
        entry = self.pods.get((namespace, name))
        return (entry[0], entry[1]) if entry is not None else None


class _Feed(CacheWatcher):
    """A watcher of one cache that applies each event to the graph as the cache applies it."""

    def __init__(self, cache: WatchCache, on_event, on_resync):
        super().__init__(cache, cache.prefix)
        self.on_event = on_event
        self.on_resync = on_resync

    def push(self, event: CacheEvent) -> None:
        try:
            self.on_event(event)
        except Exception:
            log.exception("node graph: applying %s %s failed", event.type, event.key)

    def terminate(self) -> None:
        # The cache ends its watchers after listing again (or when it stops): rebuild
        # from what it now holds and stay subscribed.
        self.on_resync()


class CachedGraph(Graph):
    """A Graph kept current from the pods and persistentvolumes watch caches."""

    def __init__(self, pods: WatchCache, volumes: WatchCache | None = None):
        super().__init__()
        self.caches = [c for c in (pods, volumes) if c is not None]
        self._pods, self._volumes = pods, volumes
        self._synced: set[int] = set()
        for cache in self.caches:
            feed = _Feed(cache, lambda e, c=cache: self._apply(c, e),
                         lambda c=cache: self._resync(c))
            cache.watchers.add(feed)

    def _apply(self, cache: WatchCache, event: CacheEvent) -> None:
        if id(cache) not in self._synced:
            return      # the first full sync picks it up
        meta = event.obj.get("metadata") or {}
        if cache is self._pods:
            if event.type == DELETED:
                self.delete_pod(meta.get("namespace", ""), meta.get("name", ""))
            else:
                self.set_pod(event.obj)
        elif event.type == DELETED:
            self.delete_pv(meta.get("name", ""))
        else:
            self.set_pv(event.obj)

    def _resync(self, cache: WatchCache) -> None:
        if not cache.ready.is_set():
            return
        self._load(cache, cache.objects.values())

    def _load(self, cache: WatchCache, objects: Iterable[Obj]) -> None:
        if cache is self._pods:
            self.clear_pods()
            for obj in objects:
                self.set_pod(obj)
        else:
            self.clear_pvs()
            for obj in objects:
                self.set_pv(obj)
        self._synced.add(id(cache))

    @property
    def ready(self) -> bool:
        """Every cache synced (the first sync happens on the first question after its
        cache has listed)."""
        for cache in self.caches:
            if id(cache) not in self._synced:
                cache.start()
                if not cache.ready.is_set():
                    return False
                self._load(cache, cache.objects.values())
        return True


def for_server(srv) -> CachedGraph:
    """The graph of a server, fed by its pods and persistentvolumes watch caches."""
    from kubesmith.api.registry import REGISTRY
    pods = srv.cache_for(REGISTRY.get("", "v1", "pods"))
    volumes_rt = REGISTRY.get("", "v1", "persistentvolumes")
    return CachedGraph(pods, srv.cache_for(volumes_rt) if volumes_rt is not None else None)
