"""Who a request comes from, as every component that serves HTTPS reads it: the user a
verified client certificate names (CN = user, O = groups), and UserInfo, the user as
TokenReview and SubjectAccessReview carry it. kube-apiserver and the kubelet share it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID

AUTHENTICATED = "system:authenticated"


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict:
        info: dict = {"username": self.name}
        if self.uid:
            info["uid"] = self.uid
        if self.groups:
            info["groups"] = list(self.groups)
        if self.extra:
            info["extra"] = {k: list(v) for k, v in self.extra.items()}
        return info


@functools.lru_cache(maxsize=1024)
def user_from_certificate(der: bytes) -> UserInfo | None:
    """The user a verified client certificate names (parsed once per certificate)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    subject = cert.subject
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    orgs = tuple(str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    return UserInfo(str(names[0].value), with_authenticated(orgs))


def with_authenticated(groups: tuple[str, ...]) -> tuple[str, ...]:
    """Every authenticated user is also in system:authenticated."""
    return groups if AUTHENTICATED in groups else groups + (AUTHENTICATED,)
