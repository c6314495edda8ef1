"""Small OCI images built on the operator's machine, for nodes that reach no registry.

The lab's hosts (and air-gapped sites) cannot pull, yet containerd needs a sandbox
("pause") image and the workloads need something to run. So the operator's machine
builds them from files it already has and the node role imports them into every
node's containerd (`ctr -n k8s.io images import <tar>`):

- ``kubesmith.local/pause:latest``: busybox's sh trapping TERM and sleeping, the
  pod sandbox's one process (containerd's sandbox_image).
- ``kubesmith.local/busybox:latest``: Debian's busybox-static with every applet
  linked, an /etc/passwd and /etc/group with root and nobody.
- ``kubesmith.local/python:latest``: the machine's Debian python3 (binary, the
  stdlib without tests, GUI and build files, and the shared libraries ``ldd``
  names), plus the busybox applets so a shell, probes and ``kubectl exec`` work.

The images copy binaries from this machine, so they suit hosts of the same CPU
architecture (and, for python, a compatible Debian). Each image is one OCI image
layout tarball with one gzip layer. Builds are deterministic (entries sorted, fixed
owners, fixed times for generated files and the source files' own times for copied
ones, gzip without a timestamp): the same inputs give byte-identical tarballs, and a
tarball is only rebuilt when a fingerprint of its inputs changes, so a re-deploy
uploads nothing.

Every image uses Debian's merged /usr layout (/bin -> usr/bin, /lib -> usr/lib, ...),
as the files it copies expect.

CLI: ``python -m provision.images build DIR`` prints each image ref and its tarball.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import re
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

PAUSE_IMAGE = "kubesmith.local/pause:latest"
BUSYBOX_IMAGE = "kubesmith.local/busybox:latest"
PYTHON_IMAGE = "kubesmith.local/python:latest"

BUSYBOX = Path("/bin/busybox")
PYTHON = Path("/usr/bin/python3")

# Bump when the image contents change for a reason the input fingerprint cannot
# see (this file's logic), so existing tarballs are rebuilt.
_BUILDER_VERSION = "1"

# Time of every entry this module writes itself (directories, links, /etc files):
# 2020-01-01T00:00:00Z. Copied files keep their own mtime, which their .pyc files check.
_EPOCH = 1577836800

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}

# The pause process: exits 0 on TERM/INT; sleeping in the background and waiting
# keeps the shell able to run its trap at once (a foreground sleep would delay it).
_PAUSE_SCRIPT = "trap 'kill $! 2>/dev/null; exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"

_PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
           "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
_GROUP = "root:x:0:\nnobody:x:65534:\nnogroup:x:65534:\n"
# glibc (the python image) looks at /etc/hosts before DNS only when told to;
# without this file, "localhost" would go to the cluster DNS first.
_NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"

# Parts of the stdlib a container never needs: tests, GUI, build support, docs.
_STDLIB_SKIP_DIRS = {"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "curses",
                     "ensurepip", "distutils", "pydoc_data", "site-packages",
                     "dist-packages"}
_STDLIB_SKIP_PREFIXES = ("config-",)  # config-3.11-<arch>: the static libpython for embedding
# Extension modules for tests, plus a few whose libraries would double the image
# (nis pulls Kerberos, _dbm Berkeley DB, _curses ncurses; ossaudiodev is for sound).
_DYNLOAD_SKIP = re.compile(r"^(_test|_xx|xx|_ctypes_test|nis\.|_dbm\.|_curses|ossaudiodev\.)")


class ImageBuildError(RuntimeError):
    pass


# --- layer contents ---

@dataclass
class _Entry:
    kind: str                  # "dir", "file", "symlink"
    mode: int = 0o755
    data: bytes = b""          # file contents
    source: Path | None = None  # file copied from this machine (read at write time)
    target: str = ""           # symlink target
    mtime: int = _EPOCH


@dataclass
class Layer:
    """A root filesystem as a map of image path (no leading /) -> entry."""

    entries: dict[str, _Entry] = field(default_factory=dict)

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent in _MERGED_USR:
                continue  # already a symlink into usr/
            self.entries.setdefault(parent, _Entry("dir"))

    def _place(self, path: str) -> str:
        """Image path with the merged-usr links resolved (bin/sh -> usr/bin/sh)."""
        path = path.strip("/")
        head, _, rest = path.partition("/")
        if head in _MERGED_USR and rest:
            return f"{_MERGED_USR[head]}/{rest}"
        return path

    def dir(self, path: str, mode: int = 0o755) -> None:
        path = self._place(path)
        self._parents(path)
        self.entries[path] = _Entry("dir", mode=mode)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = self._place(path)
        self._parents(path)
        self.entries[path] = _Entry("file", mode=mode, data=data)

    def copy(self, path: str, source: Path) -> None:
        """A regular file of this machine (symlinks followed), keeping mode and mtime."""
        st = source.stat()
        path = self._place(path)
        self._parents(path)
        self.entries[path] = _Entry("file", mode=stat.S_IMODE(st.st_mode), source=source,
                                    mtime=int(st.st_mtime))

    def symlink(self, path: str, target: str) -> None:
        path = self._place(path)
        self._parents(path)
        self.entries[path] = _Entry("symlink", mode=0o777, target=target)

    def fingerprint(self, h: hashlib._Hash) -> None:
        """Feeds the layer's inputs (not the copied bytes: their size and mtime) to h."""
        for path in sorted(self.entries):
            e = self.entries[path]
            h.update(f"{path}\0{e.kind}\0{e.mode}\0{e.target}\0{e.mtime}\0".encode())
            if e.source is not None:
                st = e.source.stat()
                h.update(f"{e.source}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0".encode())
            else:
                h.update(hashlib.sha256(e.data).digest())

    def tar(self) -> bytes:
        """The layer as an uncompressed, deterministic tar."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                e = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mode, info.mtime = e.mode, e.mtime
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                if e.kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif e.kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, e.target
                    tar.addfile(info)
                else:
                    data = e.source.read_bytes() if e.source is not None else e.data
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def _base_layer() -> Layer:
    """Merged-usr skeleton: top-level links, the usual empty folders, /etc basics."""
    layer = Layer()
    for link, target in _MERGED_USR.items():
        layer.symlink(link, target)
    for d in ("usr/bin", "usr/sbin", "usr/lib", "dev", "proc", "sys", "run", "var", "root"):
        layer.dir(d)
    layer.dir("tmp", mode=0o1777)
    layer.file("etc/passwd", _PASSWD.encode())
    layer.file("etc/group", _GROUP.encode())
    layer.file("etc/nsswitch.conf", _NSSWITCH.encode())
    return layer


def _busybox_applets() -> list[str]:
    """Image paths of busybox's applets (usr/bin/wget, sbin/ifconfig, ...)."""
    if not BUSYBOX.is_file():
        raise ImageBuildError(f"{BUSYBOX} not found: install Debian's busybox-static")
    out = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True,
                         text=True).stdout
    return sorted({line.strip() for line in out.splitlines() if line.strip()})


def _add_busybox(layer: Layer) -> None:
    layer.copy("usr/bin/busybox", BUSYBOX)
    for applet in _busybox_applets():
        path = layer._place(applet)
        # linuxrc: busybox as an initrd's init, at the root; meaningless here.
        if path not in ("usr/bin/busybox", "linuxrc") and path not in layer.entries:
            layer.symlink(path, "/usr/bin/busybox")


def _ldd(binary: Path) -> list[Path]:
    """Shared libraries (and the loader) a binary needs, as this machine's paths."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        # "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def _add_python(layer: Layer) -> None:
    binary = PYTHON.resolve()                         # /usr/bin/python3.11
    version = re.fullmatch(r"python(\d+\.\d+)", binary.name)
    if not binary.is_file() or not version:
        raise ImageBuildError(f"{PYTHON} is not a Debian python3 (resolved to {binary})")
    stdlib = Path("/usr/lib") / binary.name           # /usr/lib/python3.11
    layer.copy(str(binary), binary)
    layer.symlink("usr/bin/python3", binary.name)
    layer.symlink("usr/bin/python", binary.name)

    elf_files = [binary]
    for dirpath, dirnames, filenames in os.walk(stdlib):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS
                             and not d.startswith(_STDLIB_SKIP_PREFIXES))
        for name in sorted(filenames):
            if here.name == "__pycache__" and ".opt-" in name:
                continue  # only the plain .pyc is used without -O
            if here.name == "lib-dynload" and _DYNLOAD_SKIP.match(name):
                continue
            source = here / name
            if source.is_symlink() and not source.exists():
                continue
            layer.copy(str(source), source)
            if name.endswith(".so"):
                elf_files.append(source)

    # The loader and the libraries, at the paths ldd found them (through the
    # merged-usr links), so the loader's default search finds them in the image.
    libraries: set[Path] = set()
    for elf in elf_files:
        libraries.update(_ldd(elf))
    for lib in sorted(libraries):
        layer.copy(str(lib), lib)


# --- OCI image layout ---

def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


def _json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _oci_tarball(ref: str, layer: Layer, config: dict) -> bytes:
    """An OCI image layout (oci-layout, index.json, blobs/sha256/...) as a tar."""
    layer_tar = layer.tar()
    gz = io.BytesIO()
    # mtime=0 and no file name in the gzip header keep the blob reproducible.
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=6) as f:
        f.write(layer_tar)
    layer_blob = gz.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()

    arch = _arch()
    image_config = _json({
        "architecture": arch,
        "os": "linux",
        "created": "2020-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2020-01-01T00:00:00Z", "created_by": "kubesmith provision.images"}],
    })
    blobs = {}

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    manifest = _json({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": blob(image_config), "size": len(image_config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": blob(layer_blob), "size": len(layer_blob)}],
    })
    tag = ref.rsplit(":", 1)[1]
    index = _json({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": blob(manifest), "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"},
            # containerd names the imported image by the first annotation.
            "annotations": {"io.containerd.image.name": ref,
                            "org.opencontainers.image.ref.name": tag},
        }],
    })

    files = {"oci-layout": _json({"imageLayoutVersion": "1.0.0"}), "index.json": index}
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest.split(":", 1)[1]] = data
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, _EPOCH
            info.uname = info.gname = "root"
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, _EPOCH
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(files[name]))
    return out.getvalue()


# --- the three images ---

@dataclass(frozen=True)
class _Image:
    ref: str
    filename: str
    build: callable      # () -> (Layer, config dict)


def _pause() -> tuple[Layer, dict]:
    layer = _base_layer()
    layer.copy("usr/bin/busybox", BUSYBOX)
    layer.symlink("usr/bin/sh", "/usr/bin/busybox")
    layer.symlink("usr/bin/sleep", "/usr/bin/busybox")
    return layer, {"Env": [f"PATH={_PATH}"], "Entrypoint": ["/bin/sh", "-c", _PAUSE_SCRIPT],
                   "WorkingDir": "/", "StopSignal": "SIGTERM"}


def _busybox() -> tuple[Layer, dict]:
    layer = _base_layer()
    _add_busybox(layer)
    return layer, {"Env": [f"PATH={_PATH}"], "Cmd": ["sh"], "WorkingDir": "/"}


def _python() -> tuple[Layer, dict]:
    layer = _base_layer()
    _add_busybox(layer)
    _add_python(layer)   # after busybox: python's own files win over any applet name
    return layer, {"Env": [f"PATH={_PATH}", "LANG=C.UTF-8"], "Cmd": ["python3"], "WorkingDir": "/"}


IMAGES = (
    _Image(PAUSE_IMAGE, "pause-latest.tar", _pause),
    _Image(BUSYBOX_IMAGE, "busybox-latest.tar", _busybox),
    _Image(PYTHON_IMAGE, "python-latest.tar", _python),
)


def build_image(ref: str, dest_dir: Path) -> Path:
    """Builds one image's tarball in dest_dir unless an up-to-date one is there."""
    image = next((i for i in IMAGES if i.ref == ref), None)
    if image is None:
        raise ImageBuildError(f"unknown image {ref}; known: {', '.join(i.ref for i in IMAGES)}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tarball = dest_dir / image.filename
    stamp = dest_dir / (image.filename + ".inputs")

    layer, config = image.build()
    h = hashlib.sha256(f"{_BUILDER_VERSION}\0{image.ref}\0{_arch()}\0".encode() + _json(config))
    layer.fingerprint(h)
    fingerprint = h.hexdigest()
    if tarball.is_file() and stamp.is_file() and stamp.read_text().strip() == fingerprint:
        return tarball

    data = _oci_tarball(image.ref, layer, config)
    tmp = tarball.with_name(tarball.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, tarball)  # atomic: a reader never sees half a tarball
    stamp.write_text(fingerprint + "\n")
    return tarball


def build_images(dest_dir: Path) -> dict[str, Path]:
    """Builds (when inputs changed) every image; returns image ref -> tarball path."""
    return {image.ref: build_image(image.ref, dest_dir) for image in IMAGES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m provision.images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the image tarballs into DIR")
    build.add_argument("dir", type=Path)
    build.add_argument("--image", action="append", metavar="REF",
                       help="only this image (repeatable); default: all")
    args = parser.parse_args(argv)
    try:
        refs = args.image or [i.ref for i in IMAGES]
        for ref in refs:
            print(f"{ref}\t{build_image(ref, args.dir)}")
    except (ImageBuildError, OSError, subprocess.CalledProcessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
