"""The API server's encryption-at-rest configuration, generated once per cluster.

Secrets are encrypted in etcd with an AES-CBC key made here and kept in the cluster
state folder (0600); like the PKI, an existing file is never replaced, so stored secrets
stay readable. To rotate, add a new key first in the file and re-run the deploy.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path

CONFIG_NAME = "encryption-config.yaml"
REMOTE_PATH = "/etc/kubernetes/encryption-config.yaml"


def ensure_encryption_config(state_dir: Path) -> tuple[Path, bool]:
    """The config's path, and whether it was created now."""
    path = Path(state_dir) / CONFIG_NAME
    if path.exists():
        return path, False
    key = base64.b64encode(os.urandom(32)).decode()
    text = (
        "# Written once by kubesmith's deploy; never replaced. Rotate by adding a new key\n"
        "# first under aescbc.keys and re-running the deploy.\n"
        "apiVersion: apiserver.config.k8s.io/v1\n"
        "kind: EncryptionConfiguration\n"
        "resources:\n"
        "- resources: [secrets]\n"
        "  providers:\n"
        "  - aescbc:\n"
        "      keys:\n"
        "      - name: key1\n"
        f"        secret: {key}\n"
        "  - identity: {}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temp, path)
    return path, True
