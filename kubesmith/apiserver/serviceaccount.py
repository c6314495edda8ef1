"""Service accounts: their tokens, the TokenRequest subresource and the admission plugin.

Tokens are JWTs signed with --service-account-signing-key-file and verified with every
--service-account-key-file, with upstream's claims:

    iss, sub (system:serviceaccount:<ns>:<name>), aud, exp, iat, nbf, jti, and
    "kubernetes.io": {namespace, serviceaccount: {name, uid}, optional pod / secret /
                      node: {name, uid}, warnafter}

A token is valid only while its service account (and the pod, secret or node it is
bound to) exists with the uid named in the token. Legacy tokens (issuer
"kubernetes/serviceaccount", kept in kubernetes.io/service-account-token secrets) are
accepted while that secret still holds them.

The ServiceAccount admission plugin gives pods the "default" account when they name
none, refuses pods whose account does not exist, and mounts the projected
kube-api-access-<random> volume (token, cluster CA, namespace) into every container.
"""
from __future__ import annotations

import base64
import datetime
import logging
import secrets as random
import time
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kubesmith.api.times import parse_rfc3339
from kubesmith.api import validation
from kubesmith.api.registry import REGISTRY
from kubesmith.apiserver import admission, errors, negotiation, objectmeta, tokens
from kubesmith.apiserver.authn import TokenInvalid, UserInfo
from kubesmith.apiserver.context import Ctx, respond
from kubesmith.apiserver.storage import to_type

if TYPE_CHECKING:
    from kubesmith.apiserver.rest import Target
    from kubesmith.apiserver.server import APIServer

log = logging.getLogger(__name__)

Obj = dict[str, Any]

USER_PREFIX = "system:serviceaccount:"
ALL_GROUP = "system:serviceaccounts"
LEGACY_ISSUER = "kubernetes/serviceaccount"
PRIVATE_CLAIM = "kubernetes.io"
EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
EXTRA_NODE_UID = "authentication.kubernetes.io/node-uid"
EXTRA_CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"

DEFAULT_EXPIRATION = 3600
MIN_EXPIRATION = 600
MAX_EXPIRATION = 1 << 32
# The kubelet asks for 3607 s; such pod-bound tokens are issued for a year and only warn
# after an hour (upstream's --service-account-extend-token-expiration).
WARN_ONLY_EXPIRATION = 3607
EXTENDED_EXPIRATION = 365 * 24 * 3600
LEEWAY = 60                    # seconds of clock skew tolerated, as upstream's jwt
DELETED_GRACE = 60             # a bound object marked deleted longer ago invalidates

MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
VOLUME_PREFIX = "kube-api-access-"
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"   # upstream's random name suffix letters


def username(namespace: str, name: str) -> str:
    return f"{USER_PREFIX}{namespace}:{name}"


def split_username(user: str) -> tuple[str, str] | None:
    if not user.startswith(USER_PREFIX):
        return None
    parts = user[len(USER_PREFIX):].split(":")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def groups_of(namespace: str) -> tuple[str, ...]:
    return (ALL_GROUP, f"{ALL_GROUP}:{namespace}")


def _uid(obj: Obj | None) -> str:
    return ((obj or {}).get("metadata") or {}).get("uid", "")


def _gone(obj: Obj | None, uid: str, now: float) -> bool:
    """The bound object no longer backs a token: absent, replaced, or long deleted."""
    if obj is None or (uid and _uid(obj) != uid):
        return True
    deleted = parse_rfc3339((obj.get("metadata") or {}).get("deletionTimestamp"))
    return deleted is not None and deleted < now - DELETED_GRACE


# --- object lookups ----------------------------------------------------------------------

class Objects:
    """Reads of service accounts, pods, secrets and nodes: the watch cache when it has the
    object, etcd when it does not (an object created a moment ago must count)."""

    def __init__(self, srv: "APIServer"):
        self.srv = srv

    async def get(self, plural: str, namespace: str, name: str, uid: str = "") -> Obj | None:
        rt = REGISTRY.get("", "v1", plural)
        # A cached copy of another uid may be stale: then etcd answers.
        obj = await self.srv.read_object(rt, rt.storage_key(namespace or None, name),
                                         lambda cached: not uid or _uid(cached) == uid)
        return to_type(rt, self.srv.storage.for_type(rt), obj) if obj is not None else None


# --- issuing -----------------------------------------------------------------------------

def claims(issuer: str, audiences: list[str], namespace: str, account: Obj, expiration: int,
           now: int | None = None, *, pod: Obj | None = None, secret: Obj | None = None,
           node: Obj | None = None, node_name: str = "", warn_after: int | None = None) -> Obj:
    now = int(time.time()) if now is None else now
    name = (account.get("metadata") or {}).get("name", "")
    private: Obj = {"namespace": namespace,
                    "serviceaccount": {"name": name, "uid": _uid(account)}}
    for field, obj in (("pod", pod), ("secret", secret)):
        if obj is not None:
            private[field] = {"name": obj["metadata"]["name"], "uid": _uid(obj)}
    if node is not None:
        private["node"] = {"name": node["metadata"]["name"], "uid": _uid(node)}
    elif node_name:
        private["node"] = {"name": node_name}
    if warn_after is not None:
        private["warnafter"] = warn_after
    return {"aud": list(audiences), "exp": now + expiration, "iat": now, "iss": issuer,
            "jti": str(uuid.uuid4()), PRIVATE_CLAIM: private, "nbf": now,
            "sub": username(namespace, name)}


class Issuer:
    def __init__(self, key: tokens.PrivateKey, issuer: str):
        self.key = key
        self.issuer = issuer
        self.kid = tokens.key_id(key.public_key())

    def sign(self, token_claims: Obj) -> str:
        return tokens.encode(token_claims, self.key, self.kid)


# --- authenticating ----------------------------------------------------------------------

def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _number(claims_: Obj, name: str) -> float | None:
    value = claims_.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TokenInvalid(f"malformed {name} claim")
    return float(value)


class Authenticator:
    """The service-account token authenticator (bound and legacy tokens)."""

    def __init__(self, keys: list[tokens.PublicKey], issuers: list[str],
                 api_audiences: list[str], objects: Objects):
        self.keys = [tokens.verify_key(k) for k in keys]
        self.issuers = list(issuers)
        self.api_audiences = list(api_audiences)
        self.objects = objects

    async def authenticate_token(self, token: str, audiences: list[str] | None = None
                                 ) -> tuple[UserInfo, list[str]] | None:
        """(user, audiences the token is good for) or None when the token is not a
        service-account token; TokenInvalid when it is one and does not check out."""
        try:
            _, unverified = tokens.peek(token)
        except tokens.TokenError:
            return None
        issuer = unverified.get("iss")
        if issuer == LEGACY_ISSUER:
            return await self._legacy(token, audiences)
        if issuer not in self.issuers:
            return None
        try:
            token_claims = tokens.decode(token, self.keys)
        except tokens.TokenError as exc:
            raise TokenInvalid(str(exc)) from None
        wanted = list(audiences) if audiences else self.api_audiences
        token_audiences = _as_list(token_claims.get("aud"))
        matching = [a for a in wanted if a in token_audiences]
        if not matching:
            raise TokenInvalid(f"token audiences {token_audiences!r} is invalid for the "
                               f"target audiences {wanted!r}")
        now = time.time()
        exp, nbf, iat = (_number(token_claims, n) for n in ("exp", "nbf", "iat"))
        if exp is None:
            raise TokenInvalid("service account token has no expiry")
        if now > exp + LEEWAY:
            raise TokenInvalid("service account token has expired")
        if nbf is not None and now < nbf - LEEWAY:
            raise TokenInvalid("service account token is not valid yet")
        if iat is not None and now < iat - LEEWAY:
            raise TokenInvalid("service account token is issued in the future")
        private = token_claims.get(PRIVATE_CLAIM)
        if not isinstance(private, dict):
            raise TokenInvalid("service account token has no kubernetes.io claim")
        namespace = private.get("namespace")
        account_ref = private.get("serviceaccount") or {}
        name = account_ref.get("name") if isinstance(account_ref, dict) else None
        if not isinstance(namespace, str) or not namespace or not isinstance(name, str) \
                or not name:
            raise TokenInvalid("service account token names no service account")
        if token_claims.get("sub") != username(namespace, name):
            raise TokenInvalid("service account token subject does not match its account")
        invalidated = TokenInvalid("service account token has been invalidated")
        account = await self.objects.get("serviceaccounts", namespace, name,
                                         account_ref.get("uid", ""))
        if _gone(account, account_ref.get("uid", ""), now):
            raise invalidated
        extra: dict[str, list[str]] = {}
        for field, plural in (("secret", "secrets"), ("pod", "pods")):
            ref = private.get(field)
            if ref is None:
                continue
            if not isinstance(ref, dict) or not ref.get("name"):
                raise invalidated
            bound = await self.objects.get(plural, namespace, ref["name"], ref.get("uid", ""))
            if _gone(bound, ref.get("uid", ""), now):
                raise invalidated
            if field == "pod":
                extra[EXTRA_POD_NAME] = [ref["name"]]
                extra[EXTRA_POD_UID] = [ref.get("uid", "")]
        node_ref = private.get("node")
        if isinstance(node_ref, dict) and node_ref.get("name"):
            if "pod" not in private:
                # A token bound to the node itself lives only as long as the node.
                node = await self.objects.get("nodes", "", node_ref["name"],
                                              node_ref.get("uid", ""))
                if _gone(node, node_ref.get("uid", ""), now):
                    raise invalidated
            extra[EXTRA_NODE_NAME] = [node_ref["name"]]
            if node_ref.get("uid"):
                extra[EXTRA_NODE_UID] = [node_ref["uid"]]
        if isinstance(token_claims.get("jti"), str) and token_claims["jti"]:
            extra[EXTRA_CREDENTIAL_ID] = [f"JTI={token_claims['jti']}"]
        user = UserInfo(username(namespace, name), groups_of(namespace), _uid(account), extra)
        return user, matching

    async def _legacy(self, token: str, audiences: list[str] | None
                      ) -> tuple[UserInfo, list[str]] | None:
        try:
            token_claims = tokens.decode(token, self.keys)
        except tokens.TokenError as exc:
            raise TokenInvalid(str(exc)) from None
        wanted = list(audiences) if audiences else self.api_audiences
        matching = [a for a in wanted if a in self.api_audiences]
        if not matching:
            raise TokenInvalid("legacy service account tokens are valid only for the API")
        prefix = "kubernetes.io/serviceaccount/"
        namespace = token_claims.get(prefix + "namespace")
        secret_name = token_claims.get(prefix + "secret.name")
        name = token_claims.get(prefix + "service-account.name")
        uid = token_claims.get(prefix + "service-account.uid") or ""
        if not all(isinstance(v, str) and v for v in (namespace, secret_name, name)):
            raise TokenInvalid("legacy service account token is missing claims")
        invalidated = TokenInvalid("service account token has been invalidated")
        now = time.time()
        account = await self.objects.get("serviceaccounts", namespace, name, uid)
        if _gone(account, uid, now):
            raise invalidated
        secret = await self.objects.get("secrets", namespace, secret_name)
        if secret is None or (secret.get("metadata") or {}).get("deletionTimestamp"):
            raise invalidated
        stored = (secret.get("data") or {}).get("token") or ""
        try:
            if base64.b64decode(stored).decode() != token:
                raise invalidated
        except (ValueError, UnicodeDecodeError):
            raise invalidated from None
        return UserInfo(username(namespace, name), groups_of(namespace), _uid(account)), \
            matching


def legacy_claims(namespace: str, account: Obj, secret_name: str) -> Obj:
    """The claims of a legacy secret-held token (what the token controller signs)."""
    prefix = "kubernetes.io/serviceaccount/"
    return {"iss": LEGACY_ISSUER, prefix + "namespace": namespace,
            prefix + "secret.name": secret_name,
            prefix + "service-account.name": account["metadata"]["name"],
            prefix + "service-account.uid": _uid(account),
            "sub": username(namespace, account["metadata"]["name"])}


class Setup:
    """What the server's flags say about service-account tokens."""

    def __init__(self, srv: "APIServer"):
        options = srv.options
        self.objects = Objects(srv)
        self.issuer: Issuer | None = None
        issuers = list(options.service_account_issuer)
        if options.service_account_signing_key_file and issuers:
            self.issuer = Issuer(tokens.load_private_key(
                options.service_account_signing_key_file), issuers[0])
        key_files = list(options.service_account_key_file)
        if not key_files and options.service_account_signing_key_file:
            key_files = [options.service_account_signing_key_file]
        self.api_audiences = list(getattr(options, "api_audiences", None) or issuers[:1])
        self.max_expiration = int(getattr(options, "service_account_max_token_expiration",
                                          0) or 0)
        self.extend_expiration = bool(getattr(
            options, "service_account_extend_token_expiration", True))
        self.authenticator: Authenticator | None = None
        keys = [k for path in key_files for k in tokens.load_public_keys(path)]
        if keys:
            self.authenticator = Authenticator(keys, issuers, self.api_audiences, self.objects)


def setup(srv: "APIServer") -> Setup:
    """The server's Setup, made once."""
    found = getattr(srv, "_service_accounts", None)
    if found is None:
        found = Setup(srv)
        srv._service_accounts = found
    return found


def token_authenticators(srv: "APIServer") -> list:
    authenticator = setup(srv).authenticator
    return [authenticator] if authenticator is not None else []


# --- TokenRequest ------------------------------------------------------------------------

_BOUND_KINDS = {"Pod": "pods", "Secret": "secrets", "Node": "nodes"}


def _invalid(name: str, problems: list) -> errors.APIError:
    return errors.invalid("TokenRequest", "authentication.k8s.io", name, problems)


async def token_request(srv: "APIServer", ctx: Ctx, target: "Target", method: str
                        ) -> web.Response:
    """POST serviceaccounts/{name}/token: a signed token for the account."""
    from kubesmith.apiserver import rest
    if method != "POST":
        raise errors.method_not_allowed(method, "serviceaccounts/token")
    state = setup(srv)
    if state.issuer is None:
        raise errors.APIError(404, "NotFound", "the server does not issue service account "
                              "tokens (no --service-account-signing-key-file or "
                              "--service-account-issuer)")
    body = negotiation.decode_body(await rest.read_body(ctx),
                                   ctx.request.headers.get("Content-Type"))
    if not isinstance(body, dict):
        raise errors.bad_request("the body must be a TokenRequest object")
    if body.get("apiVersion") not in (None, "authentication.k8s.io/v1") or \
            body.get("kind") not in (None, "TokenRequest"):
        raise errors.bad_request("the body must be an authentication.k8s.io/v1 TokenRequest")
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
    name, namespace = target.name, target.namespace
    expiration = spec.get("expirationSeconds")
    if expiration is None:
        expiration = DEFAULT_EXPIRATION
    problems = []
    if not isinstance(expiration, int) or isinstance(expiration, bool):
        problems.append(validation.invalid("spec.expirationSeconds", expiration,
                                           "must be an integer"))
    elif expiration < MIN_EXPIRATION:
        problems.append(validation.invalid("spec.expirationSeconds", expiration,
                                           "may not specify a duration less than 10 minutes"))
    elif expiration > MAX_EXPIRATION:
        problems.append(validation.invalid("spec.expirationSeconds", expiration,
                                           "may not specify a duration larger than 2^32 "
                                           "seconds"))
    audiences = spec.get("audiences")
    if audiences is None:
        audiences = []
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        problems.append(validation.invalid("spec.audiences", audiences,
                                           "must be a list of strings"))
    ref = spec.get("boundObjectRef")
    if ref is not None and not isinstance(ref, dict):
        problems.append(validation.invalid("spec.boundObjectRef", ref, "must be an object"))
    if problems:
        raise _invalid(name, problems)
    audiences = list(audiences) or list(state.api_audiences)
    if state.max_expiration and expiration > state.max_expiration:
        expiration = state.max_expiration
    account = await state.objects.get("serviceaccounts", namespace, name)
    if account is None:
        raise errors.not_found("serviceaccounts", "", name)
    out: Obj = {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {**{k: v for k, v in meta.items()
                                if k not in ("name", "namespace")},
                             "name": name, "namespace": namespace,
                             "creationTimestamp": objectmeta.timestamp()},
                "spec": {"audiences": audiences, "expirationSeconds": expiration}}
    if ref:
        out["spec"]["boundObjectRef"] = ref
    dry = rest.dry_run(ctx)
    sa_rt = REGISTRY.get("", "v1", "serviceaccounts")
    await srv.admission.run(admission.Request(admission.CREATE, sa_rt, "token", namespace,
                                              name, out, None, ctx.user, dry))
    bound: dict[str, Obj | None] = {"pod": None, "secret": None, "node": None}
    node_name = ""
    if ref:
        kind, ref_name = ref.get("kind"), ref.get("name")
        api_version = ref.get("apiVersion") or "v1"
        plural = _BOUND_KINDS.get(kind or "")
        if plural is None or api_version != "v1":
            raise errors.bad_request(f"cannot bind token for serviceaccount \"{name}\" to "
                                     f"object of kind {kind!r} ({api_version}); only Pod, "
                                     "Secret and Node (v1) are supported")
        if not ref_name:
            raise _invalid(name, [validation.required("spec.boundObjectRef.name")])
        obj = await state.objects.get(plural, "" if kind == "Node" else namespace, ref_name)
        if obj is None:
            raise errors.not_found(plural, "", ref_name)
        if ref.get("uid") and ref["uid"] != _uid(obj):
            raise errors.conflict(plural, "", ref_name,
                                  f"the UID in the bound object reference ({ref['uid']}) does "
                                  "not match the UID in record. The object might have been "
                                  "deleted and then recreated")
        if kind == "Pod":
            pod_account = (obj.get("spec") or {}).get("serviceAccountName") or "default"
            if pod_account != name:
                raise errors.bad_request(f"cannot bind token for serviceaccount \"{name}\" to "
                                         f"pod \"{ref_name}\" which runs as serviceaccount "
                                         f"\"{pod_account}\"")
            node_name = (obj.get("spec") or {}).get("nodeName") or ""
            if node_name:
                bound["node"] = await state.objects.get("nodes", "", node_name)
        bound[kind.lower()] = obj
        out["spec"]["boundObjectRef"] = {"kind": kind, "apiVersion": "v1", "name": ref_name,
                                         "uid": _uid(obj)}
    now = int(time.time())
    lifetime, warn_after = expiration, None
    if state.extend_expiration and bound["pod"] is not None and \
            expiration == WARN_ONLY_EXPIRATION:
        lifetime, warn_after = EXTENDED_EXPIRATION, now + expiration
    status: Obj = {"token": "",
                   "expirationTimestamp": objectmeta.timestamp(
                       datetime.datetime.fromtimestamp(now + expiration,
                                                       datetime.timezone.utc))}
    if not dry:
        token_claims = claims(state.issuer.issuer, audiences, namespace, account, lifetime, now,
                              pod=bound["pod"], secret=bound["secret"],
                              node=bound["node"],
                              node_name=node_name if bound["node"] is None else "",
                              warn_after=warn_after)
        status["token"] = state.issuer.sign(token_claims)
    out["status"] = status
    return respond(ctx, out, 201)


# --- admission ---------------------------------------------------------------------------

def is_mirror_pod(pod: Obj | None) -> bool:
    annotations = ((pod or {}).get("metadata") or {}).get("annotations") or {}
    return isinstance(annotations, dict) and MIRROR_ANNOTATION in annotations


def random_suffix(length: int = 5) -> str:
    return "".join(random.choice(_NAME_ALPHABET) for _ in range(length))


def token_volume(name: str) -> Obj:
    """The projected volume upstream adds (with the defaults it gets on the way in)."""
    return {"name": name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": WARN_ONLY_EXPIRATION, "path": "token"}},
        {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt",
                                                              "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
            "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}}


def should_automount(account: Obj, pod: Obj) -> bool:
    wanted = (pod.get("spec") or {}).get("automountServiceAccountToken")
    if isinstance(wanted, bool):
        return wanted
    wanted = account.get("automountServiceAccountToken")
    if isinstance(wanted, bool):
        return wanted
    return True


def mount_token(pod: Obj) -> None:
    spec = pod.setdefault("spec", {})
    volumes = spec.get("volumes")
    if not isinstance(volumes, list):
        volumes = []
    volume_name = ""
    for volume in volumes:
        if isinstance(volume, dict) and str(volume.get("name", "")).startswith(VOLUME_PREFIX):
            volume_name = volume["name"]
            break
    has_volume = bool(volume_name)
    if not volume_name:
        taken = {v.get("name") for v in volumes if isinstance(v, dict)}
        volume_name = VOLUME_PREFIX + random_suffix()
        while volume_name in taken:
            volume_name = VOLUME_PREFIX + random_suffix()
    needed = False
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            if not isinstance(container, dict):
                continue
            mounts = container.get("volumeMounts")
            if not isinstance(mounts, list):
                mounts = []
            if any(isinstance(m, dict) and m.get("mountPath") == MOUNT_PATH for m in mounts):
                continue    # the pod mounts something of its own there
            mounts.append({"name": volume_name, "readOnly": True, "mountPath": MOUNT_PATH})
            container["volumeMounts"] = mounts
            needed = True
    if needed and not has_volume:
        volumes.append(token_volume(volume_name))
        spec["volumes"] = volumes


def _references_secrets(pod: Obj) -> bool:
    from kubesmith.apiserver.nodegraph import SECRET, pod_references
    return any(kind == SECRET for kind, _, _ in pod_references(pod))


class ServiceAccountAdmission(admission.Plugin):
    name = "ServiceAccount"

    def __init__(self, srv: "APIServer"):
        self.objects = setup(srv).objects

    @staticmethod
    def _applies(request: admission.Request) -> bool:
        return (request.rt.group == "" and request.rt.plural == "pods" and
                request.operation == admission.CREATE and not request.subresource and
                isinstance(request.obj, dict))

    def _forbidden(self, request: admission.Request, message: str) -> errors.APIError:
        return errors.forbidden("pods", "", request.name, message)

    async def admit(self, request: admission.Request) -> None:
        if not self._applies(request) or is_mirror_pod(request.obj):
            return
        pod = request.obj
        spec = pod.setdefault("spec", {})
        name = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        spec["serviceAccountName"] = name
        spec["serviceAccount"] = name
        account = await self.objects.get("serviceaccounts", request.namespace, name)
        if account is None:
            raise self._forbidden(request, f"error looking up service account "
                                           f"{request.namespace}/{name}: serviceaccount "
                                           f"\"{name}\" not found")
        if should_automount(account, pod):
            mount_token(pod)

    async def validate(self, request: admission.Request) -> None:
        if not self._applies(request):
            return
        pod = request.obj
        spec = pod.get("spec") or {}
        if is_mirror_pod(pod):
            if spec.get("serviceAccountName") or spec.get("serviceAccount"):
                raise self._forbidden(request, "a mirror pod may not reference service "
                                               "accounts")
            if _references_secrets(pod):
                raise self._forbidden(request, "a mirror pod may not reference secrets")
            for volume in spec.get("volumes") or []:
                for source in ((volume or {}).get("projected") or {}).get("sources") or []:
                    if isinstance(source, dict) and source.get("serviceAccountToken"):
                        raise self._forbidden(request, "a mirror pod may not use "
                                                       "ServiceAccountToken volume projections")
            return
        name = spec.get("serviceAccountName")
        if not name:
            raise self._forbidden(request, "no service account specified for pod "
                                           f"{request.namespace}/{request.name}")
        if await self.objects.get("serviceaccounts", request.namespace, name) is None:
            raise self._forbidden(request, f"error looking up service account "
                                           f"{request.namespace}/{name}: serviceaccount "
                                           f"\"{name}\" not found")
