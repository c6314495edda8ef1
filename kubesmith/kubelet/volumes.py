"""Pod volumes on the node: made before the pod's containers start, kept fresh while it
runs, removed after it is gone.

    volumes = VolumeManager(client, "/var/lib/kubelet", "node-1")
    paths = await volumes.setup(pod)               # {"config": "/var/lib/kubelet/pods/<uid>/
                                                   #   volumes/kubernetes.io~configmap/config"}
    mounts = volumes.mounts(pod, container, paths) # CRI Mounts for the ContainerConfig
    await volumes.refresh(pod)                     # about every minute per running pod
    await volumes.teardown(pod_uid)                # after the pod's containers are gone

A volume lives at `<root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`, plugins
named as upstream's (empty-dir, configmap, secret, downward-api, projected); a hostPath
volume is used in place. Secret and projected volumes sit on their own tmpfs (never on
disk), as does an emptyDir with medium Memory (sized by its sizeLimit, the pod's memory
limit or the node's allocatable memory, the smallest known). With the pod's fsGroup set,
that group owns the volumes' contents.

Files of configMap, secret, downwardAPI and projected volumes are written the way
upstream's AtomicWriter does, so a reader never sees half an update:

    <volume>/..2024_05_01_10_00_00.123456/   the files, in a timestamped directory
    <volume>/..data -> ..2024_05_01_...      swapped atomically (rename of ..data_tmp)
    <volume>/<key>  -> ..data/<key>          what the container sees

The node reads ConfigMaps and Secrets with its own identity (the API server's Node
authorizer lets it read exactly those its pods reference) and asks for service-account
tokens bound to the pod (TokenRequest), renewed once 80 % of their life or 24 hours has
passed.
"""
from __future__ import annotations

import asyncio
import base64
import ctypes
import logging
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Mapping

from kubesmith.api.times import parse_rfc3339
from kubesmith.api.validation import parse_quantity
from kubesmith.client.rest import ApiClient, ApiError, is_not_found
from kubesmith.cri import api
from kubesmith.kubelet import envvars

log = logging.getLogger(__name__)
Obj = dict[str, Any]

# Volume source field -> upstream's plugin directory name.
PLUGIN_DIRS = {
    "emptyDir": "kubernetes.io~empty-dir",
    "configMap": "kubernetes.io~configmap",
    "secret": "kubernetes.io~secret",
    "downwardAPI": "kubernetes.io~downward-api",
    "projected": "kubernetes.io~projected",
}
# Volumes the kubelet fills from the API: always mounted read-only into containers.
API_DATA_SOURCES = ("configMap", "secret", "downwardAPI", "projected")
# Their files hold secrets: kept on tmpfs.
TMPFS_SOURCES = ("secret", "projected")
DEFAULT_MODE = 0o644
DATA_DIR = "..data"
DATA_DIR_TMP = "..data_tmp"
MAX_PATH_LENGTH = 4096
MAX_FILE_NAME_LENGTH = 255
# Service-account tokens: renewed past this share of their life or this age (upstream's
# token manager), whichever comes first.
TOKEN_REFRESH_FRACTION = 0.8
TOKEN_MAX_AGE = 24 * 3600.0
DEFAULT_TOKEN_EXPIRATION = 3600
MIN_TOKEN_EXPIRATION = 600
MOUNTINFO = "/proc/self/mountinfo"
PROPAGATION = {
    None: api.PROPAGATION_PRIVATE,
    "": api.PROPAGATION_PRIVATE,
    "None": api.PROPAGATION_PRIVATE,
    "HostToContainer": api.PROPAGATION_HOST_TO_CONTAINER,
    "Bidirectional": api.PROPAGATION_BIDIRECTIONAL,
}


class VolumeError(Exception):
    """A volume could not be made or mounted; the message fits a FailedMount event."""


# --- mounts ---------------------------------------------------------------------------

def _unescape_mountinfo(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \040, \011, \012, \134.
    out, index = [], 0
    while index < len(text):
        escape = text[index + 1:index + 4]
        if text[index] == "\\" and len(escape) == 3 and escape.isdigit():
            out.append(chr(int(text[index + 1:index + 4], 8)))
            index += 4
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


def mount_points() -> list[str]:
    """Every mount point of this mount namespace, as /proc/self/mountinfo lists them."""
    with open(MOUNTINFO) as lines:
        return [_unescape_mountinfo(line.split()[4]) for line in lines if line.strip()]


def is_mount_point(path: str) -> bool:
    return os.path.realpath(path) in mount_points()


def mounts_under(path: str) -> list[str]:
    """Mount points at or below `path`, deepest first (the order to unmount them in)."""
    root = os.path.realpath(path)
    found = [point for point in mount_points()
             if point == root or point.startswith(root.rstrip("/") + "/")]
    return sorted(set(found), key=lambda point: point.count("/"), reverse=True)


# mount(2) and umount2(2) straight from libc: a pod's token and secret volumes would
# otherwise cost a fork and exec of mount(8) each.
_LIBC = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


def _syscall_failed(what: str, path: str) -> VolumeError:
    code = ctypes.get_errno()
    return VolumeError(f"{what} {path} failed: {os.strerror(code)}")


async def mount_tmpfs(path: str, size: int | None = None) -> None:
    """A tmpfs at `path` (once: an existing mount is kept)."""
    if is_mount_point(path):
        return
    data = f"size={size}".encode() if size else None
    if _LIBC.mount(b"tmpfs", os.fsencode(path), b"tmpfs", 0, data) != 0:
        raise _syscall_failed("mounting a tmpfs at", path)


async def unmount(path: str) -> None:
    """Unmounts `path`; lazily if it is busy, so the pod's removal never waits on it."""
    target = os.fsencode(path)
    if _LIBC.umount2(target, 0) == 0:
        return
    if _LIBC.umount2(target, _MNT_DETACH) != 0:
        raise _syscall_failed("unmounting", path)


# --- atomic writer --------------------------------------------------------------------

@dataclass(frozen=True)
class FileProjection:
    data: bytes
    mode: int


def validate_path(path: str) -> None:
    """A payload path must be relative, inside the volume and of sane length."""
    if not path:
        raise VolumeError("invalid path: must not be empty")
    if os.path.isabs(path):
        raise VolumeError(f"invalid path {path!r}: must be relative path")
    if len(path) > MAX_PATH_LENGTH:
        raise VolumeError(f"invalid path {path!r}: must be less than or equal to "
                          f"{MAX_PATH_LENGTH} characters")
    parts = path.split("/")
    for part in parts:
        if len(part) > MAX_FILE_NAME_LENGTH:
            raise VolumeError(f"invalid path {path!r}: each element must be less than or "
                              f"equal to {MAX_FILE_NAME_LENGTH} characters")
        if part == "..":
            raise VolumeError(f"invalid path {path!r}: must not contain '..'")
    if path.startswith(".."):
        raise VolumeError(f"invalid path {path!r}: must not start with '..'")


def _files_in(directory: str) -> dict[str, FileProjection]:
    """The regular files below a timestamped directory, by relative path."""
    found = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            full = os.path.join(parent, name)
            with open(full, "rb") as handle:
                data = handle.read()
            found[os.path.relpath(full, directory)] = FileProjection(
                data, stat.S_IMODE(os.lstat(full).st_mode))
    return found


def write_atomic(target_dir: str, payload: Mapping[str, FileProjection]) -> bool:
    """Projects `payload` into `target_dir` as upstream's AtomicWriter (see the module
    docstring); True when something was written, False when it was already there."""
    clean: dict[str, FileProjection] = {}
    for path, projection in payload.items():
        validate_path(path)
        clean[os.path.normpath(path)] = projection
    data_link = os.path.join(target_dir, DATA_DIR)
    try:
        old_ts = os.readlink(data_link)
    except FileNotFoundError:
        old_ts = ""
    old_ts_path = os.path.join(target_dir, old_ts) if old_ts else ""
    old_files = _files_in(old_ts_path) if old_ts and os.path.isdir(old_ts_path) else {}
    new_top = {path.split("/")[0] for path in clean}
    old_top = {path.split("/")[0] for path in old_files}

    changed = old_files != clean or not old_ts
    if changed:
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        ts_path = tempfile.mkdtemp(prefix=stamp, dir=target_dir)
        os.chmod(ts_path, 0o755)
        for path, projection in clean.items():
            full = os.path.join(ts_path, path)
            os.makedirs(os.path.dirname(full), mode=0o755, exist_ok=True)
            with open(full, "wb") as handle:
                handle.write(projection.data)
            os.chmod(full, projection.mode)
        tmp_link = os.path.join(target_dir, DATA_DIR_TMP)
        if os.path.lexists(tmp_link):
            os.unlink(tmp_link)
        os.symlink(os.path.basename(ts_path), tmp_link)
        os.rename(tmp_link, data_link)          # the atomic switch
    # User-visible entries: one symlink per top-level name into ..data.
    for name in new_top:
        visible = os.path.join(target_dir, name)
        if not os.path.islink(visible):
            if os.path.lexists(visible):
                _remove(visible)
            os.symlink(os.path.join(DATA_DIR, name), visible)
    if changed:
        for name in old_top - new_top:
            visible = os.path.join(target_dir, name)
            if os.path.islink(visible):
                os.unlink(visible)
        if old_ts_path and os.path.isdir(old_ts_path):
            shutil.rmtree(old_ts_path, ignore_errors=True)
    return changed


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


# --- payloads from API objects --------------------------------------------------------

def _mode(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _object_files(kind: str, obj: Obj) -> dict[str, bytes]:
    """A ConfigMap's data and binaryData, or a Secret's decoded data, by key."""
    if kind == "secret":
        return {key: base64.b64decode(value) for key, value in (obj.get("data") or {}).items()}
    files = {key: value.encode() for key, value in (obj.get("data") or {}).items()}
    for key, value in (obj.get("binaryData") or {}).items():
        files[key] = base64.b64decode(value)
    return files


def key_payload(kind: str, obj: Obj | None, items: list[Obj] | None, default_mode: int,
                optional: bool) -> dict[str, FileProjection]:
    """A configMap/secret volume (or projected source): every key as a file, or the
    listed items at their paths with their modes."""
    if obj is None:
        return {}
    files = _object_files(kind, obj)
    if not items:
        return {key: FileProjection(data, default_mode) for key, data in files.items()}
    payload = {}
    for item in items:
        key = item.get("key") or ""
        if key not in files:
            if optional:
                continue
            noun = "config" if kind == "configmap" else "secret"
            raise VolumeError(f"{kind} references non-existent {noun} key: {key}")
        payload[item.get("path") or key] = FileProjection(
            files[key], _mode(item.get("mode"), default_mode))
    return payload


def downward_payload(pod: Obj, items: list[Obj], default_mode: int,
                     node_allocatable: Mapping[str, Any] | None) -> dict[str, FileProjection]:
    """downwardAPI items: metadata fieldRefs and container resourceFieldRefs."""
    payload = {}
    for item in items or []:
        try:
            if item.get("fieldRef") is not None:
                value = envvars.metadata_field_value(pod, item["fieldRef"].get("fieldPath")
                                                     or "")
            elif item.get("resourceFieldRef") is not None:
                value = envvars.resource_field_value(pod, None, item["resourceFieldRef"],
                                                     node_allocatable)
            else:
                continue
        except envvars.EnvError as err:
            raise VolumeError(str(err)) from err
        payload[item.get("path") or ""] = FileProjection(
            value.encode(), _mode(item.get("mode"), default_mode))
    return payload


@dataclass
class _Token:
    token: str
    issued: float       # wall-clock time the token became valid
    expires: float      # wall-clock time it expires
    ttl: float

    def needs_refresh(self, now: float) -> bool:
        return (now >= self.issued + TOKEN_MAX_AGE
                or now >= self.issued + TOKEN_REFRESH_FRACTION * self.ttl)


# --- the manager ----------------------------------------------------------------------

class VolumeManager:
    """Makes, refreshes, mounts and removes the volumes of the pods on one node."""

    def __init__(self, client: ApiClient, root_dir: str, node_name: str, *,
                 node_allocatable: Mapping[str, Any] | None = None):
        self.client = client
        self.root_dir = root_dir
        self.node_name = node_name
        # The Node's status.allocatable, for resourceFieldRefs of unset limits; the
        # kubelet sets it once it knows it.
        self.node_allocatable = node_allocatable
        self._tokens: dict[tuple[str, str, int], _Token] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.clock = time.time      # wall clock of token lifetimes (tests move it)

    # --- paths ------------------------------------------------------------------------

    def pod_dir(self, pod_uid: str) -> str:
        return os.path.join(self.root_dir, "pods", pod_uid)

    def volumes_dir(self, pod_uid: str) -> str:
        return os.path.join(self.pod_dir(pod_uid), "volumes")

    def volume_path(self, pod_uid: str, source: str, name: str) -> str:
        return os.path.join(self.volumes_dir(pod_uid), PLUGIN_DIRS[source], name)

    # --- setup and refresh ------------------------------------------------------------

    async def setup(self, pod: Obj) -> dict[str, str]:
        """Makes and fills every volume of the pod; volume name -> host path. Safe to
        call again: what exists is kept, API data is rewritten only when it changed."""
        return await self._sync(pod, initial=True)

    async def refresh(self, pod: Obj) -> None:
        """Re-reads the ConfigMaps, Secrets and downward API fields the pod's volumes
        project and renews service-account tokens that are due."""
        await self._sync(pod, initial=False)

    async def _sync(self, pod: Obj, initial: bool) -> dict[str, str]:
        uid = pod["metadata"]["uid"]
        lock = self._locks.setdefault(uid, asyncio.Lock())
        async with lock:
            paths = {}
            first_error: VolumeError | None = None
            for volume in (pod.get("spec") or {}).get("volumes") or []:
                name = volume.get("name") or ""
                try:
                    path = await self._sync_volume(pod, volume, initial)
                except (VolumeError, OSError) as err:
                    error = VolumeError(f'MountVolume.SetUp failed for volume "{name}" : '
                                        f"{err}")
                    if initial:
                        raise error from None
                    # A refresh goes on with the other volumes; this one keeps its
                    # current contents.
                    first_error = first_error or error
                    continue
                if path is not None:
                    paths[name] = path
            if first_error is not None:
                raise first_error
            return paths

    async def _sync_volume(self, pod: Obj, volume: Obj, initial: bool) -> str | None:
        uid = pod["metadata"]["uid"]
        name = volume.get("name") or ""
        if volume.get("hostPath") is not None:
            if initial:
                check_host_path(volume["hostPath"])
            return volume["hostPath"].get("path") or ""
        source = next((key for key in PLUGIN_DIRS if volume.get(key) is not None), None)
        if source is None:
            if initial:
                kinds = [key for key in volume if key != "name"]
                raise VolumeError(f"volume type {kinds[0] if kinds else 'unknown'} is not "
                                  f"supported by this kubelet")
            return None
        path = self.volume_path(uid, source, name)
        spec = volume[source] or {}
        if not os.path.isdir(path):
            os.makedirs(path, exist_ok=True)
        fs_group = _fs_group(pod)
        if source == "emptyDir":
            if initial:
                await self._setup_empty_dir(pod, path, spec)
                if fs_group is not None:
                    set_ownership(path, fs_group, read_only=False)
            return path
        if source in TMPFS_SOURCES:
            await mount_tmpfs(path)
        else:
            os.chmod(path, 0o777)
        payload = await self._payload(pod, volume, source, spec)
        if write_atomic(path, payload) and fs_group is not None:
            set_ownership(path, fs_group, read_only=True)
        return path

    async def _setup_empty_dir(self, pod: Obj, path: str, spec: Obj) -> None:
        medium = spec.get("medium") or ""
        if medium == "Memory":
            await mount_tmpfs(path, self._memory_volume_size(pod, spec))
        elif medium:
            raise VolumeError(f"emptyDir medium {medium!r} is not supported")
        os.chmod(path, 0o777)       # upstream's emptyDir is world-writable

    def _memory_volume_size(self, pod: Obj, spec: Obj) -> int | None:
        """A memory-backed emptyDir's tmpfs size, as upstream sizes it: the smallest of
        its sizeLimit, the pod's memory limit (when every container has one) and the
        node's allocatable memory; None (tmpfs' default) when none is known."""
        candidates = []
        if spec.get("sizeLimit") is not None:
            candidates.append(parse_quantity(spec["sizeLimit"]))
        containers = (pod.get("spec") or {}).get("containers") or []
        limits = [((c.get("resources") or {}).get("limits") or {}).get("memory")
                  for c in containers]
        if containers and all(limit is not None for limit in limits):
            candidates.append(sum((parse_quantity(limit) or 0) for limit in limits))
        if self.node_allocatable and self.node_allocatable.get("memory") is not None:
            candidates.append(parse_quantity(self.node_allocatable["memory"]))
        sizes = [int(size) for size in candidates if size]
        return min(sizes) if sizes else None

    async def _payload(self, pod: Obj, volume: Obj, source: str, spec: Obj
                       ) -> dict[str, FileProjection]:
        namespace = pod["metadata"].get("namespace") or "default"
        default_mode = _mode(spec.get("defaultMode"), DEFAULT_MODE)
        if source == "configMap":
            obj = await self._get("configmap", namespace, spec.get("name") or "",
                                  bool(spec.get("optional")))
            return key_payload("configmap", obj, spec.get("items"), default_mode,
                               bool(spec.get("optional")))
        if source == "secret":
            obj = await self._get("secret", namespace, spec.get("secretName") or "",
                                  bool(spec.get("optional")))
            return key_payload("secret", obj, spec.get("items"), default_mode,
                               bool(spec.get("optional")))
        if source == "downwardAPI":
            return downward_payload(pod, spec.get("items") or [], default_mode,
                                    self.node_allocatable)
        return await self._projected(pod, volume, spec, default_mode)

    async def _projected(self, pod: Obj, volume: Obj, spec: Obj, default_mode: int
                         ) -> dict[str, FileProjection]:
        namespace = pod["metadata"].get("namespace") or "default"
        payload: dict[str, FileProjection] = {}
        for index, item in enumerate(spec.get("sources") or []):
            if item.get("configMap") is not None:
                ref = item["configMap"]
                optional = bool(ref.get("optional"))
                obj = await self._get("configmap", namespace, ref.get("name") or "", optional)
                payload.update(key_payload("configmap", obj, ref.get("items"), default_mode,
                                           optional))
            elif item.get("secret") is not None:
                ref = item["secret"]
                optional = bool(ref.get("optional"))
                obj = await self._get("secret", namespace, ref.get("name") or "", optional)
                payload.update(key_payload("secret", obj, ref.get("items"), default_mode,
                                           optional))
            elif item.get("downwardAPI") is not None:
                payload.update(downward_payload(pod, item["downwardAPI"].get("items") or [],
                                                default_mode, self.node_allocatable))
            elif item.get("serviceAccountToken") is not None:
                ref = item["serviceAccountToken"]
                token = await self._token(pod, volume.get("name") or "", index, ref)
                payload[ref.get("path") or "token"] = FileProjection(token.encode(),
                                                                     default_mode)
            else:
                kinds = [key for key in item]
                raise VolumeError(f"projected source {kinds[0] if kinds else 'unknown'} is "
                                  f"not supported by this kubelet")
        return payload

    async def _get(self, kind: str, namespace: str, name: str, optional: bool) -> Obj | None:
        try:
            return await self.client.get(f"{kind}s", name, namespace)
        except ApiError as err:
            if is_not_found(err):
                if optional:
                    return None
                raise VolumeError(f'{kind} "{name}" not found') from None
            raise VolumeError(f"couldn't get {kind} {namespace}/{name}: {err}") from None

    async def _token(self, pod: Obj, volume_name: str, index: int, ref: Obj) -> str:
        """The pod's bound service-account token for one projected source, requested
        anew when there is none yet or the current one is due for renewal."""
        meta = pod["metadata"]
        key = (meta["uid"], volume_name, index)
        now = self.clock()
        current = self._tokens.get(key)
        if current is not None and not current.needs_refresh(now):
            return current.token
        account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        expiration = max(int(ref.get("expirationSeconds") or DEFAULT_TOKEN_EXPIRATION),
                         MIN_TOKEN_EXPIRATION)
        request_spec: Obj = {
            "expirationSeconds": expiration,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                               "uid": meta["uid"]},
        }
        if ref.get("audience"):
            request_spec["audiences"] = [ref["audience"]]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": request_spec}
        try:
            answer = await self.client.create("serviceaccounts", body, meta.get("namespace"),
                                              name=account, subresource="token")
        except ApiError as err:
            if current is not None and now < current.expires:
                # Keep serving the old token while it lasts; the next refresh tries again.
                log.warning("renewing the token of pod %s/%s failed: %s",
                            meta.get("namespace"), meta.get("name"), err)
                return current.token
            raise VolumeError(f"failed to fetch token: {err}") from None
        status = answer.get("status") or {}
        if not status.get("token"):
            raise VolumeError("failed to fetch token: the TokenRequest returned no token")
        ttl = float((answer.get("spec") or {}).get("expirationSeconds") or expiration)
        expires = parse_rfc3339(status.get("expirationTimestamp")) or now + ttl
        # A server may extend a token's life beyond what was asked; renewal still goes
        # by the lifetime asked for, counted from when it was issued.
        issued = min(now, expires - ttl)
        self._tokens[key] = _Token(status["token"], issued, expires, ttl)
        return status["token"]

    # --- container mounts -------------------------------------------------------------

    def mounts(self, pod: Obj, container: Obj, volume_paths: Mapping[str, str], *,
               env: Mapping[str, str] | None = None) -> list[api.Mount]:
        """The container's volumeMounts as CRI Mounts: subPath / subPathExpr resolved
        (made as a directory when missing, never leading out of the volume), read-only
        as asked and always for API-data volumes, mount propagation mapped. `env` (the
        container's variables) expands subPathExpr; without it the container's literal
        and fieldRef variables are used."""
        volumes = {volume.get("name"): volume
                   for volume in (pod.get("spec") or {}).get("volumes") or []}
        result = []
        for volume_mount in container.get("volumeMounts") or []:
            name = volume_mount.get("name") or ""
            if name not in volume_paths:
                raise VolumeError(f'cannot find volume "{name}" to mount into container '
                                  f'"{container.get("name")}"')
            volume = volumes.get(name) or {}
            host_path = volume_paths[name]
            sub_path = volume_mount.get("subPath") or ""
            if volume_mount.get("subPathExpr"):
                if env is None:
                    env = _simple_env(pod, container, self.node_name)
                try:
                    sub_path = envvars.expand_subpath(volume_mount["subPathExpr"], env)
                except envvars.EnvError as err:
                    raise VolumeError(str(err)) from None
            if sub_path:
                host_path = _sub_path(host_path, sub_path)
            propagation = volume_mount.get("mountPropagation")
            if propagation not in PROPAGATION:
                raise VolumeError(f"invalid mount propagation mode {propagation!r}")
            readonly = bool(volume_mount.get("readOnly")) or any(
                volume.get(source) is not None for source in API_DATA_SOURCES)
            result.append(api.Mount(container_path=volume_mount.get("mountPath") or "",
                                    host_path=host_path, readonly=readonly,
                                    propagation=PROPAGATION[propagation]))
        return result

    # --- teardown ---------------------------------------------------------------------

    async def teardown(self, pod_uid: str) -> None:
        """Unmounts and removes the pod's volumes (works from what is on disk, so also
        for pods the kubelet learnt of only after a restart). hostPath volumes are the
        host's and stay."""
        lock = self._locks.setdefault(pod_uid, asyncio.Lock())
        async with lock:        # not while a setup or refresh of the pod runs
            volumes_dir = self.volumes_dir(pod_uid)
            for point in mounts_under(self.pod_dir(pod_uid)):
                await unmount(point)
            left = mounts_under(self.pod_dir(pod_uid))
            if left:
                # Never delete through a mount that is still there.
                raise VolumeError(f"volumes of pod {pod_uid} are still mounted: {left}")
            if os.path.isdir(volumes_dir):
                shutil.rmtree(volumes_dir)
            self._tokens = {key: token for key, token in self._tokens.items()
                            if key[0] != pod_uid}
        if self._locks.get(pod_uid) is lock and not lock.locked():
            del self._locks[pod_uid]


def _fs_group(pod: Obj) -> int | None:
    group = ((pod.get("spec") or {}).get("securityContext") or {}).get("fsGroup")
    return group if isinstance(group, int) and not isinstance(group, bool) else None


def set_ownership(path: str, fs_group: int, read_only: bool) -> None:
    """The pod's fsGroup owns the volume's contents, as upstream's SetVolumeOwnership:
    group-readable (and writable unless the volume is read-only), directories setgid so
    new files inherit the group. Symlinks are not followed."""
    mask = 0o440 if read_only else 0o660
    entries = [path]
    for parent, dirs, files in os.walk(path):       # symlinked dirs are not entered
        entries += [os.path.join(parent, name) for name in dirs + files]
    for entry in entries:
        info = os.lstat(entry)
        if stat.S_ISLNK(info.st_mode):
            continue
        os.chown(entry, -1, fs_group)
        extra = mask | (stat.S_ISGID | 0o110 if stat.S_ISDIR(info.st_mode) else 0)
        os.chmod(entry, stat.S_IMODE(info.st_mode) | extra)


def _sub_path(volume_path: str, sub_path: str) -> str:
    """The host path of a volumeMount's subPath, checked to stay inside the volume."""
    if os.path.isabs(sub_path):
        raise VolumeError(f"subPath {sub_path!r} must be a relative path")
    if ".." in sub_path.split("/"):
        raise VolumeError(f"subPath {sub_path!r} must not contain '..'")
    full = os.path.join(volume_path, sub_path)
    if not os.path.lexists(full):
        mode = stat.S_IMODE(os.stat(volume_path).st_mode) if os.path.isdir(volume_path) \
            else 0o755
        os.makedirs(full, exist_ok=True)
        os.chmod(full, mode)
    real_volume = os.path.realpath(volume_path)
    real = os.path.realpath(full)
    if real != real_volume and not real.startswith(real_volume.rstrip("/") + "/"):
        raise VolumeError(f"subpath {full!r} not within volume path {volume_path!r}")
    return full


def _simple_env(pod: Obj, container: Obj, node_name: str) -> dict[str, str]:
    """The container's variables that need no API reads (literal values and fieldRefs),
    for subPathExpr when the full environment is not at hand."""
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        source = var.get("valueFrom") or {}
        if var.get("value"):
            env[var["name"]] = envvars.expand(var["value"], envvars.mapping_for(env))
        elif source.get("fieldRef") is not None:
            try:
                env[var["name"]] = envvars.pod_field_value(
                    pod, source["fieldRef"].get("fieldPath") or "", node_name=node_name)
            except envvars.EnvError:
                continue
    return env


# --- hostPath -------------------------------------------------------------------------

_HOST_PATH_KINDS = {
    "Directory": (stat.S_ISDIR, "is not a directory"),
    "File": (stat.S_ISREG, "is not a file"),
    "Socket": (stat.S_ISSOCK, "is not a socket file"),
    "CharDevice": (stat.S_ISCHR, "is not a character device"),
    "BlockDevice": (stat.S_ISBLK, "is not a block device"),
}


def check_host_path(spec: Obj) -> None:
    """hostPath's type: checks that the path is what it says, or creates it
    (DirectoryOrCreate: 0755 directories; FileOrCreate: an empty 0644 file, its parent
    must exist)."""
    path = spec.get("path") or ""
    kind = spec.get("type") or ""
    if not kind:
        return
    if kind == "DirectoryOrCreate":
        if not os.path.exists(path):
            os.makedirs(path, mode=0o755, exist_ok=True)
        kind = "Directory"
    elif kind == "FileOrCreate":
        if not os.path.exists(path):
            try:
                fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
            except OSError as err:
                raise VolumeError(f"hostPath type check failed: {path}: {err.strerror}") \
                    from None
            os.close(fd)
            os.chmod(path, 0o644)
        kind = "File"
    if kind not in _HOST_PATH_KINDS:
        raise VolumeError(f"hostPath type {kind!r} is not supported")
    is_kind, problem = _HOST_PATH_KINDS[kind]
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise VolumeError(f"hostPath type check failed: {path} {problem}") from None
    if not is_kind(mode):
        raise VolumeError(f"hostPath type check failed: {path} {problem}")
