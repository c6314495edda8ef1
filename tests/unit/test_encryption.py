"""Encryption at rest: upstream's EncryptionConfiguration and stored-value layout."""
import base64
import os

import pytest

from kubesmith.store import encryption

KEY1 = base64.b64encode(os.urandom(32)).decode()
KEY2 = base64.b64encode(os.urandom(32)).decode()


def config(providers: str, resources: str = "[secrets]") -> encryption.EncryptionConfig:
    return encryption.parse(f"""
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: {resources}
  providers:
{providers}
""")


AESCBC = f"""  - aescbc:
      keys:
      - name: key1
        secret: {KEY1}
  - identity: {{}}"""


def test_aescbc_round_trip_and_layout():
    t = config(AESCBC).transformer_for("secrets")
    stored = t.encrypt(b'{"data":{"password":"hunter2"}}')
    assert stored.startswith(b"k8s:enc:aescbc:v1:key1:")
    assert b"hunter2" not in stored
    assert t.decrypt(stored) == b'{"data":{"password":"hunter2"}}'
    # Plaintext written before encryption was enabled is still readable.
    assert t.decrypt(b'{"plain":true}') == b'{"plain":true}'


def test_rotation_new_key_first_still_reads_old():
    old = config(AESCBC).transformer_for("secrets")
    stored = old.encrypt(b"value")
    rotated = config(f"""  - aescbc:
      keys:
      - name: key2
        secret: {KEY2}
      - name: key1
        secret: {KEY1}""").transformer_for("secrets")
    assert rotated.decrypt(stored) == b"value"
    assert rotated.encrypt(b"value").startswith(b"k8s:enc:aescbc:v1:key2:")


def test_aesgcm_and_unknown_key_is_an_error():
    gcm = config(f"""  - aesgcm:
      keys:
      - name: g1
        secret: {KEY1}""").transformer_for("secrets")
    stored = gcm.encrypt(b"v")
    assert stored.startswith(b"k8s:enc:aesgcm:v1:g1:") and gcm.decrypt(stored) == b"v"
    identity_only = config("  - identity: {}").transformer_for("secrets")
    with pytest.raises(encryption.DecryptionError):
        identity_only.decrypt(stored)


def test_resource_matching():
    c = config(AESCBC, resources="[secrets, deployments.apps, '*.batch']")
    assert c.transformer_for("secrets").providers[0].prefix.startswith(b"k8s:enc:aescbc")
    assert c.transformer_for("deployments", "apps") is c.transformer_for("secrets")
    assert c.transformer_for("jobs", "batch") is c.transformer_for("secrets")
    assert c.transformer_for("configmaps") is encryption.PLAINTEXT
    assert config(AESCBC, resources="['*.*']").transformer_for("pods").encrypt(b"x") != b"x"


@pytest.mark.parametrize("providers, message", [
    ("  - aescbc:\n      keys: []", "needs at least one key"),
    ("  - aescbc:\n      keys:\n      - name: k\n        secret: c2hvcnQ=", "must be 16, 24 or 32 bytes"),
    ("  - kms: {}", "unsupported provider"),
])
def test_bad_configs_are_clear_errors(providers, message):
    with pytest.raises(encryption.EncryptionConfigError, match=message):
        config(providers)


def test_operator_side_config_is_made_once_and_private(tmp_path):
    from provision.encryption import ensure_encryption_config
    path, created = ensure_encryption_config(tmp_path)
    assert created and (path.stat().st_mode & 0o777) == 0o600
    first = path.read_bytes()
    again, created_again = ensure_encryption_config(tmp_path)
    assert again == path and not created_again and path.read_bytes() == first
    secret = encryption.load(path).transformer_for("secrets")
    assert secret.encrypt(b"x").startswith(b"k8s:enc:aescbc:v1:key1:")
