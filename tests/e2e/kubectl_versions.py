"""Every real kubectl build on this machine: /usr/bin/kubectl and the versioned builds
(kubectl.1.27 ... kubectl.1.33) kept beside the file it resolves to."""
from __future__ import annotations

import os
import shutil
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
