"""Every real kubectl build on this machine: /usr/bin/kubectl and the versioned builds
(kubectl.1.27 ... kubectl.1.33) kept beside the file it resolves to; and `Kubectl`, one
of them run with a kubeconfig as an operator would."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

VERSIONS = [f"1.{minor}" for minor in range(27, 34)]


def kubectl_builds() -> dict[str, str]:
    """version label -> path; absent versions are simply missing."""
    found: dict[str, str] = {}
    default = shutil.which("kubectl")
    if not default:
        return found
    folder = Path(os.path.realpath(default)).parent
    for version in VERSIONS:
        candidate = folder / f"kubectl.{version}"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found[version] = str(candidate)
    found.setdefault("default", default)
    return found


def newest_kubectl() -> str | None:
    builds = kubectl_builds()
    versions = sorted((k for k in builds if k != "default"), key=lambda v: int(v.split(".")[1]))
    return builds[versions[-1]] if versions else builds.get("default")


class Kubectl:
    def __init__(self, binary: str, kubeconfig: Path, home: Path):
        self.binary = binary
        self.env = dict(os.environ, KUBECONFIG=str(kubeconfig), HOME=str(home))

    def __call__(self, *args: str, check: bool = True, input: str | None = None,
                 timeout: float = 90) -> str:
        """stdout; with check=False, stdout and stderr (and no failure on an exit code)."""
        result = subprocess.run([self.binary, *args], capture_output=True, text=True,
                                env=self.env, input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result.stdout + (result.stderr if not check else "")

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "-o", "json"))

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([self.binary, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env)
