"""Pod volumes (kubesmith.kubelet.volumes) in a temporary kubelet root with a fake API
client, with real tmpfs mounts (secret, projected, emptyDir medium Memory); every mount
made is unmounted when a test ends, also when it fails."""
from __future__ import annotations

import asyncio
import os
import re
import socket
import stat
import subprocess

import pytest

from kubesmith.cri import api
from kubesmith.kubelet import volumes as volumes_module
from kubesmith.kubelet.volumes import (
    FileProjection,
    VolumeError,
    VolumeManager,
    check_host_path,
    mount_tmpfs,
    mounts_under,
    unmount,
    write_atomic,
)
from provision.images import BUSYBOX_IMAGE, PAUSE_IMAGE
from tests.cri.throwaway_containerd import containerd_fixture
from tests.kubelet.contents_helpers import FakeClient, configmap, secret

UID = "0f1e2d3c-aaaa-bbbb-cccc-000000000001"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


@pytest.fixture
def root(tmp_path):
    """The kubelet root dir; whatever stays mounted under it is unmounted afterwards."""
    yield str(tmp_path / "kubelet")
    for point in mounts_under(str(tmp_path)):
        subprocess.run(["umount", "-l", point], check=False)
    assert not mounts_under(str(tmp_path))


def make_pod(volumes, containers=None, **spec):
    return {"metadata": {"name": "web-1", "namespace": "shop", "uid": UID,
                         "labels": {"app": "web"}, "annotations": {"a": "1"}},
            "spec": {"nodeName": "node-a", "serviceAccountName": "builder",
                     "volumes": volumes,
                     "containers": containers or [{"name": "app", "resources": {
                         "limits": {"memory": "128Mi"}}}], **spec}}


def read(path):
    with open(path) as handle:
        return handle.read()


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# --- the atomic writer ----------------------------------------------------------------

def test_atomic_writer_layout(tmp_path):
    target = str(tmp_path)
    assert write_atomic(target, {"a": FileProjection(b"A", 0o644),
                                 "sub/dir/b": FileProjection(b"B", 0o600)})
    data = os.readlink(os.path.join(target, "..data"))
    assert re.fullmatch(r"\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\w+", data)
    assert os.readlink(os.path.join(target, "a")) == "..data/a"
    assert os.readlink(os.path.join(target, "sub")) == "..data/sub"
    assert read(os.path.join(target, "sub/dir/b")) == "B"
    assert mode_of(os.path.join(target, data, "sub/dir/b")) == 0o600
    assert mode_of(os.path.join(target, data)) == 0o755
    assert sorted(os.listdir(target)) == sorted(["..data", data, "a", "sub"])
    # The same payload again: nothing written.
    assert not write_atomic(target, {"a": FileProjection(b"A", 0o644),
                                     "sub/dir/b": FileProjection(b"B", 0o600)})
    assert os.readlink(os.path.join(target, "..data")) == data


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "..hidden", "",
                                  "x" * 256])
def test_atomic_writer_refuses_paths_leaving_the_volume(tmp_path, path):
    with pytest.raises(VolumeError):
        write_atomic(str(tmp_path), {path: FileProjection(b"", 0o644)})
    assert os.listdir(tmp_path) == []


# --- configMap ------------------------------------------------------------------------

def test_configmap_volume_files_items_modes_and_refresh(root):
    client = FakeClient(configmap("cfg", {"app.conf": "x=1", "other": "o"},
                                  binary={"blob": b"\x00\x01"}, namespace="shop"))
    manager = VolumeManager(client, root, "node-a")
    pod = make_pod([
        {"name": "all", "configMap": {"name": "cfg", "defaultMode": 0o640}},
        {"name": "picked", "configMap": {"name": "cfg", "items": [
            {"key": "app.conf", "path": "etc/app/app.conf", "mode": 0o600}]}},
    ])
    paths = run(manager.setup(pod))
    all_dir = os.path.join(root, "pods", UID, "volumes", "kubernetes.io~configmap", "all")
    assert paths["all"] == all_dir
    assert sorted(n for n in os.listdir(all_dir) if not n.startswith("..")) == \
        ["app.conf", "blob", "other"]
    assert read(os.path.join(all_dir, "app.conf")) == "x=1"
    assert open(os.path.join(all_dir, "blob"), "rb").read() == b"\x00\x01"
    assert mode_of(os.path.join(all_dir, "app.conf")) == 0o640
    picked = paths["picked"]
    assert read(os.path.join(picked, "etc/app/app.conf")) == "x=1"
    assert mode_of(os.path.join(picked, "etc/app/app.conf")) == 0o600
    assert not os.path.lexists(os.path.join(picked, "other"))

    # An update: a key changed, one removed, one added -> a new timestamped dir swapped
    # in, the old one and the removed key's link gone.
    old_data = os.readlink(os.path.join(all_dir, "..data"))
    client.put(configmap("cfg", {"app.conf": "x=2", "new": "n"}, namespace="shop"))
    run(manager.refresh(pod))
    new_data = os.readlink(os.path.join(all_dir, "..data"))
    assert new_data != old_data
    assert not os.path.exists(os.path.join(all_dir, old_data))
    assert read(os.path.join(all_dir, "app.conf")) == "x=2"
    assert read(os.path.join(all_dir, "new")) == "n"
    assert not os.path.lexists(os.path.join(all_dir, "other"))
    assert not os.path.lexists(os.path.join(all_dir, "blob"))
    # Nothing changed: nothing rewritten.
    run(manager.refresh(pod))
    assert os.readlink(os.path.join(all_dir, "..data")) == new_data
    run(manager.teardown(UID))
    assert not os.path.exists(os.path.join(root, "pods", UID, "volumes"))


def test_refresh_keeps_contents_of_a_vanished_configmap(root):
    client = FakeClient(configmap("one", {"k": "1"}, namespace="shop"),
                        configmap("two", {"k": "2"}, namespace="shop"))
    manager = VolumeManager(client, root, "node-a")
    pod = make_pod([{"name": "one", "configMap": {"name": "one"}},
                    {"name": "two", "configMap": {"name": "two"}}])
    paths = run(manager.setup(pod))
    client.delete("configmaps", "shop", "one")
    client.put(configmap("two", {"k": "2b"}, namespace="shop"))
    with pytest.raises(VolumeError, match='volume "one" : configmap "one" not found'):
        run(manager.refresh(pod))
    assert read(os.path.join(paths["one"], "k")) == "1"       # kept
    assert read(os.path.join(paths["two"], "k")) == "2b"      # the others still refreshed
    run(manager.teardown(UID))


def test_missing_configmap_and_secret(root):
    client = FakeClient(configmap("cfg", {"a": "1"}, namespace="shop"))
    manager = VolumeManager(client, root, "node-a")
    with pytest.raises(VolumeError) as caught:
        run(manager.setup(make_pod([{"name": "v", "configMap": {"name": "nope"}}])))
    assert str(caught.value) == 'MountVolume.SetUp failed for volume "v" : ' \
                                'configmap "nope" not found'
    with pytest.raises(VolumeError, match='secret "nope" not found'):
        run(manager.setup(make_pod([{"name": "v", "secret": {"secretName": "nope"}}])))
    with pytest.raises(VolumeError, match="configmap references non-existent config key: b"):
        run(manager.setup(make_pod([{"name": "v", "configMap": {
            "name": "cfg", "items": [{"key": "b", "path": "b"}]}}])))
    # optional: an empty volume, and missing keys skipped
    paths = run(manager.setup(make_pod([
        {"name": "o1", "configMap": {"name": "nope", "optional": True}},
        {"name": "o2", "configMap": {"name": "cfg", "optional": True,
                                     "items": [{"key": "b", "path": "b"},
                                               {"key": "a", "path": "a"}]}},
    ])))
    assert [n for n in os.listdir(paths["o1"]) if not n.startswith("..")] == []
    assert [n for n in os.listdir(paths["o2"]) if not n.startswith("..")] == ["a"]
    run(manager.teardown(UID))


# --- secret and tmpfs -----------------------------------------------------------------

def test_secret_volume_on_tmpfs_and_teardown(root):
    client = FakeClient(secret("creds", {"password": b"hunter2", "user": b"me"},
                               namespace="shop"))
    manager = VolumeManager(client, root, "node-a")
    pod = make_pod([{"name": "creds", "secret": {"secretName": "creds",
                                                 "defaultMode": 0o400}}])
    paths = run(manager.setup(pod))
    path = paths["creds"]
    assert path.endswith("volumes/kubernetes.io~secret/creds")
    assert mounts_under(path) == [os.path.realpath(path)]
    assert read(os.path.join(path, "password")) == "hunter2"
    assert mode_of(os.path.join(path, "password")) == 0o400
    # setup again (a kubelet restart, a resync) mounts nothing twice
    run(manager.setup(pod))
    assert len(mounts_under(path)) == 1
    run(manager.teardown(UID))
    assert mounts_under(os.path.join(root, "pods", UID)) == []
    assert not os.path.exists(path)
    run(manager.teardown(UID))      # nothing left: fine


# --- emptyDir -------------------------------------------------------------------------

def test_empty_dir_plain_and_memory(root):
    manager = VolumeManager(FakeClient(), root, "node-a")
    pod = make_pod([{"name": "scratch", "emptyDir": {}},
                    {"name": "fast", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}])
    paths = run(manager.setup(pod))
    assert paths["scratch"].endswith("volumes/kubernetes.io~empty-dir/scratch")
    assert mode_of(paths["scratch"]) == 0o777
    assert mounts_under(paths["scratch"]) == []
    assert mounts_under(paths["fast"]) == [os.path.realpath(paths["fast"])]
    fs = os.statvfs(paths["fast"])
    assert fs.f_blocks * fs.f_frsize == 8 * 1024 * 1024
    with open(os.path.join(paths["scratch"], "kept"), "w") as handle:
        handle.write("data")
    run(manager.setup(pod))         # again: contents stay
    assert read(os.path.join(paths["scratch"], "kept")) == "data"
    run(manager.teardown(UID))
    assert not os.path.exists(os.path.join(root, "pods", UID, "volumes"))


def test_memory_empty_dir_sized_by_pod_limit_or_allocatable(root):
    manager = VolumeManager(FakeClient(), root, "node-a", node_allocatable={"memory": "1Gi"})
    pod = make_pod([{"name": "fast", "emptyDir": {"medium": "Memory"}}], [
        {"name": "a", "resources": {"limits": {"memory": "16Mi"}}},
        {"name": "b", "resources": {"limits": {"memory": "4Mi"}}}])
    path = run(manager.setup(pod))["fast"]
    fs = os.statvfs(path)
    assert fs.f_blocks * fs.f_frsize == 20 * 1024 * 1024     # the pod's limits together
    run(manager.teardown(UID))
    pod["spec"]["containers"][1]["resources"] = {}           # no pod limit: allocatable
    path = run(manager.setup(pod))["fast"]
    fs = os.statvfs(path)
    assert fs.f_blocks * fs.f_frsize == 1024 ** 3
    run(manager.teardown(UID))


def test_fs_group_owns_volume_contents(root):
    client = FakeClient(configmap("cfg", {"a": "1"}, namespace="shop"))
    manager = VolumeManager(client, root, "node-a")
    pod = make_pod([{"name": "scratch", "emptyDir": {}},
                    {"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 0o400}}],
                   securityContext={"fsGroup": 2345})
    paths = run(manager.setup(pod))
    scratch = os.stat(paths["scratch"])
    assert scratch.st_gid == 2345 and scratch.st_mode & stat.S_ISGID
    config_file = os.stat(os.path.join(paths["cfg"], "a"))
    assert config_file.st_gid == 2345 and stat.S_IMODE(config_file.st_mode) == 0o440
    run(manager.teardown(UID))


# --- downwardAPI ----------------------------------------------------------------------

def test_downward_api_volume(root):
    manager = VolumeManager(FakeClient(), root, "node-a",
                            node_allocatable={"cpu": "4", "memory": "8Gi"})
    pod = make_pod([{"name": "info", "downwardAPI": {"items": [
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "meta/annotations", "fieldRef": {"fieldPath": "metadata.annotations"},
         "mode": 0o600},
        {"path": "mem", "resourceFieldRef": {"containerName": "app",
                                             "resource": "limits.memory", "divisor": "1Mi"}},
        {"path": "cpu", "resourceFieldRef": {"containerName": "app",
                                             "resource": "limits.cpu"}},
    ]}}])
    path = run(manager.setup(pod))["info"]
    assert path.endswith("volumes/kubernetes.io~downward-api/info")
    assert read(os.path.join(path, "name")) == "web-1"
    assert read(os.path.join(path, "labels")) == 'app="web"'
    assert read(os.path.join(path, "meta/annotations")) == 'a="1"'
    assert mode_of(os.path.join(path, "meta/annotations")) == 0o600
    assert read(os.path.join(path, "mem")) == "128"
    assert read(os.path.join(path, "cpu")) == "4"         # unset limit: allocatable
    pod["metadata"]["labels"] = {"app": "web", "version": "2"}
    run(manager.refresh(pod))
    assert read(os.path.join(path, "labels")) == 'app="web"\nversion="2"'
    run(manager.teardown(UID))


# --- projected and tokens -------------------------------------------------------------

def kube_api_access():
    """The volume the API server's ServiceAccount admission adds to every pod."""
    return {"name": "kube-api-access-x1y2z", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt",
                       "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
            "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}}


def test_projected_service_account_volume_and_token_refresh(root):
    client = FakeClient(configmap("kube-root-ca.crt", {"ca.crt": "CA"}, namespace="shop"))
    manager = VolumeManager(client, root, "node-a")
    now = [1_000_000.0]
    manager.clock = lambda: now[0]
    pod = make_pod([kube_api_access(), {"name": "extra", "projected": {"sources": [
        {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 100,
                                 "path": "vault/token"}},
        {"secret": {"name": "missing", "optional": True}},
    ]}}])
    paths = run(manager.setup(pod))
    path = paths["kube-api-access-x1y2z"]
    assert path.endswith("volumes/kubernetes.io~projected/kube-api-access-x1y2z")
    assert mounts_under(path) == [os.path.realpath(path)]       # tokens stay off disk
    assert read(os.path.join(path, "token")) == "token-1"
    assert read(os.path.join(path, "ca.crt")) == "CA"
    assert read(os.path.join(path, "namespace")) == "shop"
    assert mode_of(os.path.join(path, "token")) == 0o644
    assert read(os.path.join(paths["extra"], "vault/token")) == "token-2"

    namespace, account, body = client.token_requests[0]
    assert (namespace, account) == ("shop", "builder")
    assert body["spec"]["expirationSeconds"] == 3607
    assert body["spec"]["boundObjectRef"] == {"apiVersion": "v1", "kind": "Pod",
                                              "name": "web-1", "uid": UID}
    assert "audiences" not in body["spec"]
    extra_body = client.token_requests[1][2]
    assert extra_body["spec"]["audiences"] == ["vault"]
    assert extra_body["spec"]["expirationSeconds"] == 600      # the least allowed

    # Before 80 % of their life nothing is renewed ...
    now[0] += 0.79 * 600
    run(manager.refresh(pod))
    assert len(client.token_requests) == 2
    # ... after it, the short one is; the hour-long one later.
    now[0] += 0.02 * 600
    run(manager.refresh(pod))
    assert len(client.token_requests) == 3
    assert read(os.path.join(paths["extra"], "vault/token")) == "token-3"
    assert read(os.path.join(path, "token")) == "token-1"
    now[0] = 1_000_000.0 + 0.81 * 3607
    run(manager.refresh(pod))
    assert read(os.path.join(path, "token")).startswith("token-")
    assert read(os.path.join(path, "token")) != "token-1"
    run(manager.teardown(UID))
    assert not os.path.exists(os.path.join(root, "pods", UID, "volumes"))


def test_token_renewed_after_a_day_even_if_issued_for_longer(root):
    client = FakeClient()
    manager = VolumeManager(client, root, "node-a")
    now = [5_000_000.0]
    manager.clock = lambda: now[0]
    pod = make_pod([{"name": "t", "projected": {"sources": [
        {"serviceAccountToken": {"expirationSeconds": 7 * 24 * 3600, "path": "token"}}]}}])
    run(manager.setup(pod))
    now[0] += 23 * 3600
    run(manager.refresh(pod))
    assert len(client.token_requests) == 1
    now[0] += 2 * 3600
    run(manager.refresh(pod))
    assert len(client.token_requests) == 2
    run(manager.teardown(UID))


# --- hostPath -------------------------------------------------------------------------

def test_host_path_types(tmp_path):
    base = tmp_path / "host"
    base.mkdir()
    (base / "file").write_text("f")
    check_host_path({"path": str(base / "anything-goes"), "type": ""})
    check_host_path({"path": str(base / "made/deep"), "type": "DirectoryOrCreate"})
    assert (base / "made/deep").is_dir() and mode_of(base / "made/deep") == 0o755
    check_host_path({"path": str(base), "type": "Directory"})
    check_host_path({"path": str(base / "new-file"), "type": "FileOrCreate"})
    assert (base / "new-file").is_file() and mode_of(base / "new-file") == 0o644
    check_host_path({"path": str(base / "file"), "type": "File"})
    check_host_path({"path": "/dev/null", "type": "CharDevice"})
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(base / "sock"))
        check_host_path({"path": str(base / "sock"), "type": "Socket"})
    failures = [
        ({"path": str(base / "file"), "type": "Directory"}, "is not a directory"),
        ({"path": str(base / "missing"), "type": "Directory"}, "is not a directory"),
        ({"path": str(base), "type": "File"}, "is not a file"),
        ({"path": str(base / "file"), "type": "DirectoryOrCreate"}, "is not a directory"),
        ({"path": str(base / "file"), "type": "Socket"}, "is not a socket file"),
        ({"path": str(base / "file"), "type": "CharDevice"}, "is not a character device"),
        ({"path": "/dev/null", "type": "BlockDevice"}, "is not a block device"),
        ({"path": str(base / "no-parent/f"), "type": "FileOrCreate"}, "type check failed"),
    ]
    for spec, problem in failures:
        with pytest.raises(VolumeError, match=problem):
            check_host_path(spec)


def test_host_path_volume_used_in_place(root, tmp_path):
    manager = VolumeManager(FakeClient(), root, "node-a")
    pod = make_pod([{"name": "h", "hostPath": {"path": str(tmp_path / "logs"),
                                               "type": "DirectoryOrCreate"}}])
    assert run(manager.setup(pod)) == {"h": str(tmp_path / "logs")}
    with pytest.raises(VolumeError, match='volume "h" : hostPath type check failed'):
        run(manager.setup(make_pod([{"name": "h", "hostPath": {
            "path": str(tmp_path / "nothing"), "type": "Directory"}}])))
    run(manager.teardown(UID))
    assert (tmp_path / "logs").is_dir()     # the host's, never removed


def test_unsupported_volume_type(root):
    manager = VolumeManager(FakeClient(), root, "node-a")
    with pytest.raises(VolumeError, match="persistentVolumeClaim is not supported"):
        run(manager.setup(make_pod([{"name": "v", "persistentVolumeClaim": {
            "claimName": "c"}}])))


# --- container mounts -----------------------------------------------------------------

def test_container_mounts(root, tmp_path):
    client = FakeClient(configmap("cfg", {"a": "1"}, namespace="shop"))
    manager = VolumeManager(client, root, "node-a")
    host = tmp_path / "host"
    host.mkdir()
    container = {"name": "app",
                 "env": [{"name": "POD", "valueFrom": {"fieldRef": {
                     "fieldPath": "metadata.name"}}}],
                 "volumeMounts": [
                     {"name": "scratch", "mountPath": "/scratch"},
                     {"name": "scratch", "mountPath": "/logs", "subPathExpr": "logs/$(POD)"},
                     {"name": "scratch", "mountPath": "/ro", "subPath": "ro", "readOnly": True},
                     {"name": "cfg", "mountPath": "/etc/cfg"},
                     {"name": "host", "mountPath": "/host",
                      "mountPropagation": "HostToContainer"},
                     {"name": "host", "mountPath": "/shared",
                      "mountPropagation": "Bidirectional"},
                 ]}
    pod = make_pod([{"name": "scratch", "emptyDir": {}},
                    {"name": "cfg", "configMap": {"name": "cfg"}},
                    {"name": "host", "hostPath": {"path": str(host)}}], [container])
    paths = run(manager.setup(pod))
    mounts = manager.mounts(pod, container, paths)
    scratch = paths["scratch"]
    assert mounts == [
        api.Mount(container_path="/scratch", host_path=scratch),
        api.Mount(container_path="/logs", host_path=os.path.join(scratch, "logs/web-1")),
        api.Mount(container_path="/ro", host_path=os.path.join(scratch, "ro"), readonly=True),
        api.Mount(container_path="/etc/cfg", host_path=paths["cfg"], readonly=True),
        api.Mount(container_path="/host", host_path=str(host),
                  propagation=api.PROPAGATION_HOST_TO_CONTAINER),
        api.Mount(container_path="/shared", host_path=str(host),
                  propagation=api.PROPAGATION_BIDIRECTIONAL),
    ]
    assert os.path.isdir(os.path.join(scratch, "logs/web-1"))      # subPath made
    assert mode_of(os.path.join(scratch, "ro")) == 0o777
    # With the container's built environment given, it is what subPathExpr uses.
    mounts = manager.mounts(pod, container, paths, env={"POD": "other"})
    assert mounts[1].host_path == os.path.join(scratch, "logs/other")
    run(manager.teardown(UID))


def test_container_mount_errors(root, tmp_path):
    manager = VolumeManager(FakeClient(), root, "node-a")
    pod = make_pod([{"name": "scratch", "emptyDir": {}}])
    paths = run(manager.setup(pod))
    os.symlink("/etc", os.path.join(paths["scratch"], "escape"))
    cases = [
        ({"name": "missing", "mountPath": "/m"},
         'cannot find volume "missing" to mount into container "app"'),
        ({"name": "scratch", "mountPath": "/m", "subPath": "../../x"}, "must not contain"),
        ({"name": "scratch", "mountPath": "/m", "subPath": "/etc"}, "relative path"),
        ({"name": "scratch", "mountPath": "/m", "subPath": "escape"}, "not within volume"),
        ({"name": "scratch", "mountPath": "/m", "subPathExpr": "$(NOPE)"},
         "missing value for NOPE"),
    ]
    for volume_mount, message in cases:
        container = {"name": "app", "volumeMounts": [volume_mount]}
        with pytest.raises(VolumeError, match=re.escape(message)):
            manager.mounts(pod, container, paths)
    run(manager.teardown(UID))


def test_mount_and_unmount_errors_name_the_path_and_the_reason(tmp_path):
    with pytest.raises(VolumeError, match=r"mounting a tmpfs at .*/missing failed: "
                                          r"No such file or directory"):
        run(mount_tmpfs(str(tmp_path / "missing")))
    with pytest.raises(VolumeError, match=r"unmounting .* failed: Invalid argument"):
        run(unmount(str(tmp_path)))          # not a mount point


def test_busy_tmpfs_is_unmounted_lazily(tmp_path):
    run(mount_tmpfs(str(tmp_path), 1024 * 1024))
    with open(tmp_path / "open-file", "w"):
        run(unmount(str(tmp_path)))          # busy: detached, not refused
        assert not mounts_under(str(tmp_path))


def test_mountinfo_escapes():
    assert volumes_module._unescape_mountinfo(r"/a\040b\134c") == "/a b\\c"


# --- against a real API server --------------------------------------------------------

@pytest.fixture(scope="module")
def api_cluster():
    from kubesmith.store.testing import etcd_available
    from tests.apiserver.harness import Cluster
    if not etcd_available():
        pytest.skip("needs /usr/bin/etcd (etcd-server)")
    with Cluster() as running:
        yield running


def test_real_api_server_node_identity_volumes_and_env(api_cluster, root):
    """With a real kube-apiserver (Node authorizer): the node reads the ConfigMaps and
    Secrets its pod references, nothing else, and gets a token bound to the pod."""
    import json as json_module

    import jwt

    from kubesmith.client.kubeconfig import ClientConfig
    from kubesmith.client.rest import ApiClient
    from kubesmith.kubelet.envvars import EnvError, container_env

    cluster = api_cluster
    ns = cluster.new_namespace("kubelet-vol-", default_service_account=True)
    for obj in (configmap("app-config", {"mode": "fast"}, namespace=ns),
                configmap("kube-root-ca.crt", {"ca.crt": "CA PEM"}, namespace=ns),
                configmap("unrelated", {"x": "y"}, namespace=ns),
                secret("app-secret", {"password": b"hunter2"}, namespace=ns)):
        plural = obj["kind"].lower() + "s"
        answer = cluster.request("POST", f"/api/v1/namespaces/{ns}/{plural}", obj)
        assert answer.status == 201, answer.body
    container = {"name": "app", "image": "kubesmith.local/busybox:latest",
                 "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {
                     "name": "app-secret", "key": "password"}}}],
                 "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]}
    answer = cluster.request("POST", f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"nodeName": "node-vol", "containers": [container],
                 "volumes": [{"name": "config", "configMap": {"name": "app-config"}},
                             {"name": "creds", "secret": {"secretName": "app-secret"}}]}})
    assert answer.status == 201, answer.body
    pod = answer.json()
    access = [v["name"] for v in pod["spec"]["volumes"]
              if v["name"].startswith("kube-api-access-")]
    assert len(access) == 1     # added by the ServiceAccount admission

    cert = cluster.client_cert("system:node:node-vol", "system:nodes")
    config = ClientConfig(server=cluster.url, ssl_context=cluster.ssl_context(cert))

    async def main():
        async with ApiClient(config, component="kubelet") as client:
            manager = VolumeManager(client, root, "node-vol")
            # The Node authorizer learns of the pod from a watch: allow it a moment.
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                try:
                    paths = await manager.setup(pod)
                    break
                except VolumeError:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            try:
                token_dir = paths[access[0]]
                assert read(os.path.join(token_dir, "ca.crt")) == "CA PEM"
                assert read(os.path.join(token_dir, "namespace")) == ns
                claims = jwt.decode(read(os.path.join(token_dir, "token")),
                                    options={"verify_signature": False})
                assert claims["sub"] == f"system:serviceaccount:{ns}:default"
                assert claims["kubernetes.io"]["pod"] == {"name": "web",
                                                          "uid": pod["metadata"]["uid"]}
                assert read(os.path.join(paths["config"], "mode")) == "fast"
                assert read(os.path.join(paths["creds"], "password")) == "hunter2"
                env = await container_env(pod, container, client=client, services=[],
                                          node_name="node-vol", host_ip="127.0.0.1",
                                          pod_ip="10.244.0.9")
                assert {kv.key: kv.value for kv in env}["PASSWORD"] == "hunter2"
                # Not referenced by any of the node's pods: refused.
                stranger = json_module.loads(json_module.dumps(pod))
                stranger["metadata"]["uid"] = "another-uid"
                stranger["spec"]["volumes"] = [{"name": "u", "configMap": {
                    "name": "unrelated"}}]
                with pytest.raises(VolumeError, match="couldn't get configmap"):
                    await manager.setup(stranger)
                with pytest.raises(EnvError, match="couldn't get configmap"):
                    await container_env(pod, {"name": "x", "envFrom": [{"configMapRef": {
                        "name": "unrelated"}}]}, client=client, services=[],
                        node_name="node-vol", host_ip="", pod_ip="")
            finally:
                await manager.teardown(pod["metadata"]["uid"])
                await manager.teardown("another-uid")
    run(main())


# --- real: a throwaway containerd runs a container with the volumes -------------------

# A throwaway containerd with the locally built pause and busybox images, for the module.
containerd = containerd_fixture(PAUSE_IMAGE, BUSYBOX_IMAGE)


def test_real_containerd_container_sees_volumes_and_runs_exec_probes(containerd, root,
                                                                     tmp_path):
    """The CRI mounts made here work in a real container: config read-only and updated
    in place through ..data, the secret on tmpfs, emptyDir writable, subPath; and exec
    probes run in the container through the real runtime."""
    import time as time_module

    from kubesmith.kubelet.probes import ProbeManager

    client = FakeClient(configmap("cfg", {"app.conf": "x=1"}, namespace="shop"),
                        secret("creds", {"password": b"hunter2"}, namespace="shop"))
    manager = VolumeManager(client, root, "node-a")
    container = {"name": "app", "volumeMounts": [
        {"name": "cfg", "mountPath": "/etc/cfg"},
        {"name": "creds", "mountPath": "/secrets"},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "scratch", "mountPath": "/logs", "subPath": "logs/web-1"}],
        "readinessProbe": {"exec": {"command": ["cat", "/scratch/healthy"]},
                           "periodSeconds": 1, "timeoutSeconds": 5},
        "livenessProbe": {"exec": {"command": ["sh", "-c", "echo sick; exit 1"]},
                          "periodSeconds": 1, "timeoutSeconds": 5, "failureThreshold": 1}}
    pod = make_pod([{"name": "cfg", "configMap": {"name": "cfg"}},
                    {"name": "creds", "secret": {"secretName": "creds"}},
                    {"name": "scratch", "emptyDir": {}}], [container])
    labels = {"io.kubernetes.pod.name": "web-1", "io.kubernetes.pod.namespace": "shop",
              "io.kubernetes.pod.uid": UID}
    no_network = api.NamespaceOption(network=api.NODE, pid=api.POD, ipc=api.POD)
    sandbox = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="web-1", uid=UID, namespace="shop"),
        log_directory=str(tmp_path / "logs"), labels=labels,
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent=containerd.cgroup_parent(),
            security_context=api.LinuxSandboxSecurityContext(namespace_options=no_network)))

    async def main():
        paths = await manager.setup(pod)
        runtime = containerd.client()
        probes = ProbeManager(runtime, lambda uid: None, time_scale=0.05)
        sandbox_id = await runtime.run_pod_sandbox(sandbox)
        try:
            config = api.ContainerConfig(
                metadata=api.ContainerMetadata(name="app"),
                image=api.ImageSpec(image=BUSYBOX_IMAGE),
                command=["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
                labels=dict(labels, **{"io.kubernetes.container.name": "app"}),
                log_path="app/0.log",
                mounts=manager.mounts(pod, container, paths),
                linux=api.LinuxContainerConfig(
                    security_context=api.LinuxContainerSecurityContext(
                        namespace_options=no_network)))
            container_id = await runtime.create_container(sandbox_id, config, sandbox)
            await runtime.start_container(container_id)

            async def sh(script):
                code, out, err = await runtime.exec_sync(container_id, ["sh", "-c", script], 10)
                return code, (out + err).decode()
            assert await sh("cat /etc/cfg/app.conf") == (0, "x=1")
            code, output = await sh("echo no > /etc/cfg/new")
            assert code != 0 and "Read-only file system" in output
            assert await sh("cat /secrets/password") == (0, "hunter2")
            assert (await sh("grep ' /secrets ' /proc/mounts"))[1].startswith("tmpfs")
            assert (await sh("echo kept > /logs/out && cat /scratch/logs/web-1/out")) == \
                (0, "kept\n")
            # An update reaches the running container through the ..data swap.
            client.put(configmap("cfg", {"app.conf": "x=2"}, namespace="shop"))
            await manager.refresh(pod)
            assert await sh("cat /etc/cfg/app.conf") == (0, "x=2")

            probes.update(pod, "", {"app": (container_id, time_module.monotonic())})
            give_up = time_module.monotonic() + 10
            while probes.liveness_failed(UID, "app") is None:
                assert time_module.monotonic() < give_up
                await asyncio.sleep(0.02)
            assert probes.liveness_failed(UID, "app") == "Liveness probe failed: sick\n"
            assert not probes.ready(UID, "app")
            with open(os.path.join(paths["scratch"], "healthy"), "w") as handle:
                handle.write("yes")
            while not probes.ready(UID, "app"):
                assert time_module.monotonic() < give_up
                await asyncio.sleep(0.02)
        finally:
            await probes.close()
            await runtime.stop_pod_sandbox(sandbox_id)
            await runtime.remove_pod_sandbox(sandbox_id)
            await runtime.close()
            await manager.teardown(UID)
    run(main())
