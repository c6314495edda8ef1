"""The component wheel and its dependency wheels, built on the operator's machine.

Hosts have no network (the lab) or no route to PyPI (air-gapped sites), so everything a
host installs is prepared here and installed there with `pip --no-index`. One wheelhouse
per host platform (Python version + CPU architecture). Builds are skipped when the
sources are unchanged, so an unchanged tree gives byte-identical wheels and the deploy
uploads and installs nothing.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE_FILE = ".source-sha256"
MANIFEST = "MANIFEST.sha256"

# Oldest glibc a host may have for the dependency wheels: Debian 11 has 2.31.
_MANYLINUX_MIN, _MANYLINUX_MAX = 17, 40


class WheelhouseError(RuntimeError):
    pass


@dataclass(frozen=True)
class Platform:
    python: str   # "3.11"
    machine: str  # uname -m: "x86_64", "aarch64"

    @property
    def tag(self) -> str:
        return f"cp{self.python.replace('.', '')}-{self.machine}"


@dataclass(frozen=True)
class Wheelhouse:
    directory: Path
    wheels: tuple[str, ...]
    digest: str          # sha256 over every wheel's name and content

    @property
    def component_wheel(self) -> str:
        return next(w for w in self.wheels if w.startswith("kubesmith-"))


def source_digest(repo: Path = REPO) -> str:
    """Hash of everything that goes into the component wheel."""
    h = hashlib.sha256()
    paths = [repo / "pyproject.toml", repo / "README.md"]
    paths += sorted(p for p in (repo / "kubesmith").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts)
    for path in paths:
        h.update(str(path.relative_to(repo)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise WheelhouseError(f"{' '.join(argv)} failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}")


def _platform_flags(platform: Platform) -> list[str]:
    flags = ["--only-binary=:all:", "--implementation", "cp",
             "--python-version", platform.python]
    for minor in range(_MANYLINUX_MAX, _MANYLINUX_MIN - 1, -1):
        flags += ["--platform", f"manylinux_2_{minor}_{platform.machine}"]
    flags += ["--platform", f"manylinux2014_{platform.machine}"]
    return flags


def manifest_digest(directory: Path) -> tuple[tuple[str, ...], str]:
    wheels = tuple(sorted(p.name for p in directory.glob("*.whl")))
    h = hashlib.sha256()
    for name in wheels:
        h.update(name.encode() + b"\0")
        h.update(hashlib.sha256((directory / name).read_bytes()).digest())
    return wheels, h.hexdigest()


def ensure_wheelhouse(state_dir: Path, platform: Platform, repo: Path = REPO) -> Wheelhouse:
    """Build (only if the sources changed) the wheelhouse for one host platform."""
    directory = state_dir / "wheelhouse" / platform.tag
    directory.mkdir(parents=True, exist_ok=True)
    digest = source_digest(repo)
    stamp = directory / SOURCE_FILE
    built = list(directory.glob("kubesmith-*.whl"))
    if not (stamp.exists() and stamp.read_text().strip() == digest and len(built) == 1):
        # Build into a fresh folder and swap it in whole, so dependency wheels a
        # previous version needed do not linger (pip's cache keeps re-downloads cheap).
        staging = directory.with_name(directory.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                  "--wheel-dir", str(staging), str(repo)])
            _run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(staging),
                  *_platform_flags(platform), *[str(p) for p in staging.glob("*.whl")]])
        finally:
            # setuptools leaves build/ and an egg-info in the tree; they are not sources.
            shutil.rmtree(repo / "build", ignore_errors=True)
            for egg in repo.glob("*.egg-info"):
                shutil.rmtree(egg, ignore_errors=True)
        (staging / SOURCE_FILE).write_text(digest + "\n")
        shutil.rmtree(directory)
        staging.rename(directory)
    wheels, manifest = manifest_digest(directory)
    (directory / MANIFEST).write_text(manifest + "\n")
    return Wheelhouse(directory=directory, wheels=wheels, digest=manifest)
