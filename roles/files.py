"""Put many files on a host, checking them all with one remote command.

pyinfra's files.put checks each file with its own round trip; a host gets dozens of
certificates, keys, kubeconfigs and wheels, so the deploy reads the checksum, mode and
owner of all of them at once and emits an upload only for a file that differs. A file
tampered with on the host differs too, and is put back.
"""
from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from roles.facts import command_output


@dataclass(frozen=True)
class FileSpec:
    local: Path
    remote: str
    mode: str = "644"
    user: str = "root"
    group: str = "root"


@lru_cache(maxsize=None)
def _local_sha256(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def local_sha256(path: Path) -> str:
    stat = path.stat()
    return _local_sha256(path, stat.st_mtime_ns, stat.st_size)


def remote_states(paths: list[str]) -> dict[str, tuple[str, str, str, str]]:
    """path -> (sha256, octal mode, user, group) for each path that exists on the host."""
    if not paths:
        return {}
    script = ("for f in " + " ".join(shlex.quote(p) for p in paths) + "; do "
              '[ -f "$f" ] && printf "%s %s %s\\n" "$f" '
              '"$(sha256sum < "$f" | cut -d" " -f1)" "$(stat -c "%a %U %G" "$f")"; '
              "done; true")
    states = {}
    for line in command_output(script).splitlines():
        path, digest, mode, user, group = line.split(" ")
        states[path] = (digest, mode, user, group)
    return states


@deploy("Files")
def put_files(specs: list[FileSpec]) -> dict[str, OperationMeta]:
    """Upload the files that differ; returns their operations by remote path."""
    current = remote_states([s.remote for s in specs])
    uploads = {}
    for spec in specs:
        want = (local_sha256(spec.local), spec.mode, spec.user, spec.group)
        if current.get(spec.remote) != want:
            uploads[spec.remote] = files.put(
                name=spec.remote, src=str(spec.local), dest=spec.remote,
                mode=spec.mode, user=spec.user, group=spec.group,
            )
    return uploads


@deploy("Remove stale files")
def remove_files(folder: str, keep: set[str]) -> None:
    """Delete the regular files in `folder` whose names are not in `keep`."""
    listing = command_output(f"find {shlex.quote(folder)} -maxdepth 1 -type f -printf '%f\\n' "
                             "2>/dev/null || true")
    for name in sorted(set(listing.splitlines()) - keep):
        files.file(name=f"{folder}/{name}", path=f"{folder}/{name}", present=False)
