"""A throwaway containerd for tests: real CRI, nothing left behind.

    with start_containerd(tmp_path) as running:
        import_image(running, tarball)            # e.g. from provision.images
        parent = running.cgroup_parent()          # "/kubesmith-test-<random>"
        client = running.client()                 # a RuntimeClient on its socket
        ...                                       # run sandboxes with that cgroup_parent

It runs Debian's containerd with its root, state, sockets, runc state, CNI
config folder and network namespaces all under ``tmpdir`` (on the real disk, so
the overlayfs snapshotter works), the CRI plugin on, cgroupfs as the cgroup
driver, the sandbox image ``kubesmith.local/pause:latest`` (import it before
running a sandbox), the streaming server on 127.0.0.1 at a free port and the CNI
plugins of /usr/lib/cni. It shares nothing with another containerd on the
machine except /run/containerd/s, where every shim puts its socket under a name
hashed from the containerd socket, so names never collide, and, for sandboxes
with a pod network, /var/lib/cni/results, where the CNI library caches each
attachment until the sandbox is stopped.

Pod networking is the caller's: put a CNI config in ``cni_conf_dir`` (give
host-local IPAM its own ``dataDir`` under tmpdir, or it keeps its leases in the
machine's /var/lib/cni) and remove the bridge, veths and iptables rules the
plugins made. Host-network sandboxes (NamespaceOption.network = NODE) need none.

``stop()`` (also on leaving the ``with``) ends containerd, deletes every container
still known to runc (which kills its processes), kills the shims started for this
containerd, removes their sockets, unmounts everything mounted under tmpdir and
removes the cgroups its containers made. The cgroup *parent* of a sandbox is the
caller's choice: take one from ``cgroup_parent()`` (removed by ``stop()``), or pick a
unique one such as ``/kubesmith-test-<random>`` and remove it with
``remove_cgroup_tree``; never share a parent between tests.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import grpc

from kubesmith.cri import api
from kubesmith.cri.client import KUBELET_RUNTIME_API_VERSION, RuntimeClient
from kubesmith.cri.proto import api_pb2_grpc

log = logging.getLogger(__name__)

SANDBOX_IMAGE = "kubesmith.local/pause:latest"
CRI_NAMESPACE = "k8s.io"   # the containerd namespace the CRI plugin works in
CNI_BIN_DIR = "/usr/lib/cni"
CGROUP_ROOT = Path("/sys/fs/cgroup")

# Binaries containerd looks up on PATH (shim, runc) live in these.
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# sun_path holds 108 bytes; the ttrpc socket adds ".ttrpc" to the gRPC one.
_MAX_SOCKET_PATH = 100

_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
# Plugins that would look for other storage back-ends or write outside our folders.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "{log_level}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{tmpdir}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # Never ask for an oom_score_adj below containerd's own: lowering it needs
  # CAP_SYS_RESOURCE, which a confined root (a container, a lab host) may lack,
  # and runc then fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  # Pod network namespaces are bind-mounted under the state folder, not /run/netns.
  netns_mounts_under_state_dir = true

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{cni_conf_dir}"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"
"""


class ContainerdStartError(RuntimeError):
    pass


class RunningContainerd:
    """A containerd started by start_containerd. ``endpoint`` is its CRI endpoint."""

    def __init__(self, tmpdir: Path, socket_dir: Path, own_socket_dir: bool,
                 cni_conf_dir: Path, process: subprocess.Popen):
        self.tmpdir = tmpdir
        self.root = tmpdir / "root"
        self.state = tmpdir / "state"
        self.runc_root = tmpdir / "runc"
        self.cni_conf_dir = cni_conf_dir
        self.log_path = tmpdir / "containerd.log"
        self.socket = socket_dir / "containerd.sock"
        self.endpoint = f"unix://{self.socket}"
        self.process = process
        self._socket_dir = socket_dir
        self._own_socket_dir = own_socket_dir
        self._cgroup_parents: list[str] = []
        self._stopped = False

    def client(self, timeout: float = 30.0) -> RuntimeClient:
        """A new RuntimeClient on this containerd (close it in the test)."""
        return RuntimeClient(self.endpoint, timeout=timeout)

    def cgroup_parent(self) -> str:
        """A fresh cgroup parent for sandboxes, e.g. "/kubesmith-test-1a2b3c4d"; stop() removes it."""
        parent = f"/kubesmith-test-{secrets.token_hex(4)}"
        self._cgroup_parents.append(parent)
        return parent

    def __enter__(self) -> RunningContainerd:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Ends containerd and everything it started; safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        _terminate(self.process)
        shim_sockets = _shim_sockets(self.state)
        container_cgroups = _delete_runc_containers(self.runc_root)
        _kill_shims(str(self.socket))
        for sock in shim_sockets:
            with contextlib.suppress(OSError):
                os.unlink(sock)
        unmounted_all = _unmount_under(self.tmpdir)
        for path in container_cgroups:
            # Only a container's own folder, never a hierarchy's root.
            if Path(path).is_relative_to(CGROUP_ROOT) and len(Path(path).relative_to(CGROUP_ROOT).parts) >= 2:
                _remove_cgroup_dir(Path(path))
        for parent in self._cgroup_parents:
            remove_cgroup_tree(parent)
        if unmounted_all:
            # Only with nothing mounted below: rmtree must never walk into a mount.
            for d in (self.root, self.state, self.runc_root, self.tmpdir / "opt"):
                shutil.rmtree(d, ignore_errors=True)
        else:
            log.warning("mounts remain under %s; its folders are left in place", self.tmpdir)
        if self._own_socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        else:
            for sock in (self.socket, self.socket.with_name(self.socket.name + ".ttrpc")):
                with contextlib.suppress(OSError):
                    sock.unlink()


def start_containerd(tmpdir: Path | str, *, sandbox_image: str = SANDBOX_IMAGE,
                     cni_conf_dir: Path | str | None = None,
                     timeout: float = 20.0, log_level: str = "info") -> RunningContainerd:
    """Starts a containerd under tmpdir and waits until its CRI service answers.

    cni_conf_dir defaults to ``<tmpdir>/cni/net.d`` (created empty: host-network
    sandboxes need no CNI). Raises ContainerdStartError (with the log's tail)
    when it does not come up within ``timeout`` seconds. Its log is
    ``<tmpdir>/containerd.log``; log_level "debug" also logs each runc call.
    """
    tmpdir = Path(tmpdir).resolve()
    tmpdir.mkdir(parents=True, exist_ok=True)
    cni_conf = Path(cni_conf_dir) if cni_conf_dir else tmpdir / "cni" / "net.d"
    cni_conf.mkdir(parents=True, exist_ok=True)

    socket_dir, own_socket_dir = tmpdir, False
    if len(str(tmpdir / "containerd.sock.ttrpc")) > _MAX_SOCKET_PATH:
        socket_dir, own_socket_dir = Path(tempfile.mkdtemp(prefix="ksctd-", dir="/tmp")), True

    config = tmpdir / "containerd.toml"
    config.write_text(_CONFIG.format(
        root=tmpdir / "root", state=tmpdir / "state", tmpdir=tmpdir,
        socket=socket_dir / "containerd.sock", sandbox_image=sandbox_image,
        cni_bin_dir=CNI_BIN_DIR, cni_conf_dir=cni_conf, runc_root=tmpdir / "runc",
        log_level=log_level))

    containerd = shutil.which("containerd", path=_PATH)
    if containerd is None:
        raise ContainerdStartError("containerd is not installed")
    env = {"PATH": _PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    with open(tmpdir / "containerd.log", "ab") as log_file:
        process = subprocess.Popen([containerd, "--config", str(config)], stdin=subprocess.DEVNULL,
                                   stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    running = RunningContainerd(tmpdir, socket_dir, own_socket_dir, cni_conf, process)
    try:
        _wait_for_cri(running, timeout)
    except BaseException:
        running.stop()
        raise
    return running


def _wait_for_cri(running: RunningContainerd, timeout: float) -> None:
    give_up = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < give_up:
        if running.process.poll() is not None:
            last_error = f"containerd exited with {running.process.returncode}"
            break
        if running.socket.exists():
            with grpc.insecure_channel(running.endpoint) as channel:
                try:
                    api_pb2_grpc.RuntimeServiceStub(channel).Version(
                        api.VersionRequest(version=KUBELET_RUNTIME_API_VERSION), timeout=1.0)
                    return
                except grpc.RpcError as err:
                    last_error = f"{err.code().name}: {err.details()}"
        time.sleep(0.1)
    tail = running.log_path.read_text(errors="replace")[-3000:] if running.log_path.exists() else ""
    raise ContainerdStartError(f"containerd's CRI service did not come up ({last_error}); log:\n{tail}")


def import_image(endpoint_or_running: str | RunningContainerd, tarball: Path | str,
                 timeout: float = 60.0) -> None:
    """Imports an OCI/docker image tarball into the CRI namespace (k8s.io) with ctr."""
    endpoint = (endpoint_or_running.endpoint if isinstance(endpoint_or_running, RunningContainerd)
                else endpoint_or_running)
    address = endpoint.removeprefix("unix://")
    ctr = shutil.which("ctr", path=_PATH)
    if ctr is None:
        raise FileNotFoundError("ctr (containerd's CLI) is not installed")
    result = subprocess.run([ctr, "--address", address, "--namespace", CRI_NAMESPACE,
                             "images", "import", str(tarball)],
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"ctr images import {tarball} failed: {result.stderr.strip()}")


# --- clean-up helpers ---

def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _shim_sockets(state: Path) -> list[str]:
    """Socket paths of this containerd's shims, from the 'address' file in each task bundle."""
    sockets = []
    for address in state.glob("io.containerd.runtime.v2.task/*/*/address"):
        with contextlib.suppress(OSError):
            value = address.read_text().strip()
            if value.startswith("unix://"):
                sockets.append(value.removeprefix("unix://"))
    return sockets


def _delete_runc_containers(runc_root: Path) -> list[str]:
    """runc delete --force for every container left; returns the cgroup paths they had."""
    cgroups: list[str] = []
    runc = shutil.which("runc", path=_PATH)
    for state_file in runc_root.glob("*/*/state.json"):
        root, container_id = state_file.parent.parent, state_file.parent.name
        with contextlib.suppress(OSError, ValueError):
            cgroups.extend(json.loads(state_file.read_text()).get("cgroup_paths", {}).values())
        if runc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run([runc, "--root", str(root), "delete", "--force", container_id],
                               capture_output=True, timeout=15)
    return sorted(set(cgroups))


def _process_args(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _kill_shims(containerd_socket: str) -> None:
    """SIGKILL every containerd-shim whose -address is this containerd's socket."""
    shims = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        args = _process_args(int(entry))
        if (args and os.path.basename(args[0]).startswith("containerd-shim")
                and "-address" in args and args[args.index("-address") + 1:][:1] == [containerd_socket]):
            shims.append(int(entry))
    for pid in shims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    give_up = time.monotonic() + 5
    while shims and time.monotonic() < give_up:
        shims = [pid for pid in shims if Path(f"/proc/{pid}").exists()
                 and not _is_zombie(pid)]
        time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory).rstrip("/") + "/"
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # Field 5 is the mount point, with spaces etc. octal-escaped.
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                mounts.append(point)
    return mounts


_MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _unmount_under(directory: Path) -> bool:
    """Unmounts every mount below directory, deepest first; True when none remain."""
    for _ in range(5):
        mounts = _mounts_under(directory)
        if not mounts:
            return True
        for point in sorted(mounts, key=lambda p: p.count("/"), reverse=True):
            if _libc.umount2(point.encode(), 0) != 0:
                _libc.umount2(point.encode(), _MNT_DETACH)  # busy: detach it lazily
    return not _mounts_under(directory)


def _cgroup_hierarchies() -> list[Path]:
    """Every cgroup hierarchy mounted under /sys/fs/cgroup (v1 controllers, named, unified)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]  # pure cgroup v2
    return sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink())


def _remove_cgroup_dir(path: Path) -> None:
    """Removes one cgroup folder and its children, killing what still runs in them."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()),
                        key=lambda p: len(p.parts), reverse=True) + [path]:
        give_up = time.monotonic() + 5
        while True:
            try:
                child.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > give_up:
                    log.warning("could not remove cgroup %s", child)
                    break
                _kill_cgroup_processes(child)
                time.sleep(0.05)


def _kill_cgroup_processes(cgroup: Path) -> None:
    with contextlib.suppress(OSError):
        for pid in (cgroup / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


def remove_cgroup_tree(parent: str) -> None:
    """Removes the cgroup ``parent`` (e.g. "/kubesmith-test-1a2b") under every hierarchy.

    Anything still running in it is killed first. Refuses a parent outside a
    kubesmith-test-* folder, so a typo cannot reach the machine's own cgroups.
    """
    relative = parent.strip("/")
    if not relative or not relative.split("/")[0].startswith("kubesmith-test-") or ".." in relative.split("/"):
        raise ValueError(f"refusing to remove cgroup {parent!r}: not under /kubesmith-test-*")
    for hierarchy in _cgroup_hierarchies():
        _remove_cgroup_dir(hierarchy / relative)
