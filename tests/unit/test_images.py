"""provision.images: the local OCI images are valid image layouts, byte-identical when
rebuilt from the same inputs, and only rebuilt when their inputs change."""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from provision import images
from provision.images import BUSYBOX_IMAGE, PAUSE_IMAGE, PYTHON_IMAGE, build_images

pytestmark = pytest.mark.skipif(
    not (os.path.exists("/bin/busybox") and os.path.realpath("/usr/bin/python3").startswith("/usr/bin/python3.")),
    reason="needs Debian's busybox-static and python3")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return build_images(tmp_path_factory.mktemp("images"))


@functools.lru_cache(maxsize=None)
def read_layout(tarball: Path) -> dict:
    """Checks the OCI image layout in tarball; returns its parsed parts."""
    with tarfile.open(tarball) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}

    def blob(descriptor: dict) -> bytes:
        algorithm, digest = descriptor["digest"].split(":")
        data = files[f"blobs/{algorithm}/{digest}"]
        assert hashlib.sha256(data).hexdigest() == digest and len(data) == descriptor["size"]
        return data

    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2
    [descriptor] = index["manifests"]
    assert descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    manifest = json.loads(blob(descriptor))
    config = json.loads(blob(manifest["config"]))
    [layer_descriptor] = manifest["layers"]
    assert layer_descriptor["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    layer = gzip.decompress(blob(layer_descriptor))
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}
    assert config["os"] == "linux" and config["architecture"] == images._arch()
    with tarfile.open(fileobj=io.BytesIO(layer)) as layer_tar:
        members = layer_tar.getmembers()
        contents = {m.name: layer_tar.extractfile(m).read() for m in members
                    if m.isfile() and m.name.startswith("etc/")}
    return {"annotations": descriptor["annotations"], "config": config["config"],
            "members": {m.name: m for m in members}, "order": [m.name for m in members],
            "etc": contents}


def test_every_image_is_a_valid_oci_layout_named_for_containerd(built):
    assert set(built) == {PAUSE_IMAGE, BUSYBOX_IMAGE, PYTHON_IMAGE}
    for ref, tarball in built.items():
        layout = read_layout(tarball)
        assert layout["annotations"]["io.containerd.image.name"] == ref
        assert layout["annotations"]["org.opencontainers.image.ref.name"] == "latest"
        assert layout["order"] == sorted(layout["order"])
        assert all(m.uid == 0 and m.gid == 0 for m in layout["members"].values())


def test_busybox_image_contents(built):
    layout = read_layout(built[BUSYBOX_IMAGE])
    members = layout["members"]
    assert members["bin"].issym() and members["bin"].linkname == "usr/bin"
    assert members["usr/bin/busybox"].isfile() and members["usr/bin/busybox"].mode == 0o755
    for applet in ("sh", "ls", "cat", "hostname", "wget", "nslookup", "sleep", "env"):
        assert members[f"usr/bin/{applet}"].linkname == "/usr/bin/busybox", applet
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    assert "linuxrc" not in members
    assert layout["etc"]["etc/passwd"].startswith(b"root:x:0:0:")
    assert b"\nnobody:x:65534:65534:" in layout["etc"]["etc/passwd"]
    assert b"nobody:x:65534:" in layout["etc"]["etc/group"]
    assert layout["config"]["Cmd"] == ["sh"]


def test_pause_image_traps_term(built):
    layout = read_layout(built[PAUSE_IMAGE])
    entrypoint = layout["config"]["Entrypoint"]
    assert entrypoint[:2] == ["/bin/sh", "-c"] and "trap" in entrypoint[2] and "TERM" in entrypoint[2]
    assert layout["members"]["usr/bin/sh"].linkname == "/usr/bin/busybox"


def test_python_image_contents(built):
    members = read_layout(built[PYTHON_IMAGE])["members"]
    binary = os.path.realpath("/usr/bin/python3").lstrip("/")      # usr/bin/python3.11
    stdlib = "usr/lib/" + os.path.basename(binary)
    assert members[binary].isfile() and members["usr/bin/python3"].issym()
    assert f"{stdlib}/os.py" in members and f"{stdlib}/http/server.py" in members
    assert any(name.startswith(f"{stdlib}/lib-dynload/_ssl.") for name in members)
    assert any(name.startswith("usr/lib64/ld-linux") for name in members)   # the loader
    assert any("/libc.so" in name for name in members)
    assert not any(name.startswith((f"{stdlib}/test/", f"{stdlib}/idlelib/", f"{stdlib}/tkinter/",
                                    f"{stdlib}/lib2to3/", f"{stdlib}/config-")) for name in members)
    assert not any(".opt-1.pyc" in name or ".opt-2.pyc" in name for name in members)
    assert members["usr/bin/wget"].linkname == "/usr/bin/busybox"
    # A .pyc is only used when its source keeps the mtime the .pyc recorded.
    assert members[f"{stdlib}/os.py"].mtime == int(os.stat(f"/{stdlib}/os.py").st_mtime)


def test_same_inputs_give_identical_bytes(built, tmp_path):
    again = build_images(tmp_path)
    for ref in built:
        assert again[ref].read_bytes() == built[ref].read_bytes(), ref


def test_rebuilt_only_when_inputs_change(tmp_path):
    first = images.build_image(BUSYBOX_IMAGE, tmp_path)
    stamp = first.stat()
    assert images.build_image(BUSYBOX_IMAGE, tmp_path) == first
    assert first.stat().st_mtime_ns == stamp.st_mtime_ns and first.stat().st_ino == stamp.st_ino

    content = first.read_bytes()
    (tmp_path / (first.name + ".inputs")).write_text("something else\n")   # as if an input changed
    images.build_image(BUSYBOX_IMAGE, tmp_path)
    assert first.stat().st_ino != stamp.st_ino                             # written anew ...
    assert first.read_bytes() == content                                   # ... with the same bytes


def test_cli(tmp_path, capsys):
    assert images.main(["build", str(tmp_path), "--image", PAUSE_IMAGE]) == 0
    assert capsys.readouterr().out == f"{PAUSE_IMAGE}\t{tmp_path / 'pause-latest.tar'}\n"
    assert images.main(["build", str(tmp_path), "--image", "kubesmith.local/nope:latest"]) == 1
