"""Create-only review kinds: questions answered by the server's own authn and authz.

SelfSubjectAccessReview / SubjectAccessReview / LocalSubjectAccessReview run the
authorizer chain (kubectl auth can-i), SelfSubjectRulesReview lists the RBAC rules
(kubectl auth can-i --list), SelfSubjectReview tells who you are (kubectl auth whoami),
TokenReview runs the token authenticators.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubesmith.apiserver.authn import MASTERS, UserInfo
from kubesmith.apiserver.authz import Attributes, Decision
from kubesmith.apiserver.context import Ctx

if TYPE_CHECKING:
    from kubesmith.apiserver.server import APIServer

Obj = dict[str, Any]


def _attributes(user: UserInfo, spec: Obj, namespace: str | None = None) -> Attributes:
    resource = spec.get("resourceAttributes")
    if isinstance(resource, dict):
        return Attributes(user=user, verb=resource.get("verb", ""), is_resource=True,
                          namespace=namespace if namespace is not None
                          else resource.get("namespace", ""),
                          group=resource.get("group", ""), version=resource.get("version", ""),
                          resource=resource.get("resource", ""),
                          subresource=resource.get("subresource", ""),
                          name=resource.get("name", ""))
    other = spec.get("nonResourceAttributes") or {}
    return Attributes(user=user, verb=other.get("verb", ""), is_resource=False,
                      path=other.get("path", ""))


def _decide(srv: "APIServer", attrs: Attributes) -> Obj:
    decision, reason = srv.authorizer.authorize(attrs)
    status: Obj = {"allowed": decision is Decision.ALLOW}
    if decision is Decision.DENY and reason:
        status["denied"] = True
    if reason:
        status["reason"] = reason
    return status


def _spec_user(spec: Obj) -> UserInfo:
    extra = spec.get("extra") or {}
    return UserInfo(spec.get("user", ""), tuple(spec.get("groups") or ()), spec.get("uid", ""),
                    extra if isinstance(extra, dict) else {})


async def self_subject_access_review(srv: "APIServer", ctx: Ctx, obj: Obj) -> None:
    obj["status"] = _decide(srv, _attributes(ctx.user, obj.get("spec") or {}))


async def subject_access_review(srv: "APIServer", ctx: Ctx, obj: Obj) -> None:
    spec = obj.get("spec") or {}
    obj["status"] = _decide(srv, _attributes(_spec_user(spec), spec))


async def local_subject_access_review(srv: "APIServer", ctx: Ctx, obj: Obj) -> None:
    spec = obj.get("spec") or {}
    namespace = (obj.get("metadata") or {}).get("namespace", "")
    obj["status"] = _decide(srv, _attributes(_spec_user(spec), spec, namespace))


async def self_subject_rules_review(srv: "APIServer", ctx: Ctx, obj: Obj) -> None:
    namespace = (obj.get("spec") or {}).get("namespace", "")
    user = ctx.user
    resource_rules, non_resource_rules = [], []
    incomplete = False
    if MASTERS in user.groups:
        resource_rules.append({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})
        non_resource_rules.append({"verbs": ["*"], "nonResourceURLs": ["*"]})
    if srv.rbac is not None:
        for rule in srv.rbac.rules_for(user, namespace):
            if rule.get("nonResourceURLs"):
                non_resource_rules.append({"verbs": list(rule.get("verbs") or []),
                                           "nonResourceURLs": list(rule["nonResourceURLs"])})
            else:
                entry = {"verbs": list(rule.get("verbs") or []),
                         "apiGroups": list(rule.get("apiGroups") or []),
                         "resources": list(rule.get("resources") or [])}
                if rule.get("resourceNames"):
                    entry["resourceNames"] = list(rule["resourceNames"])
                resource_rules.append(entry)
    if "Node" in srv.options.authorization_mode and "system:nodes" in user.groups:
        incomplete = True   # the Node authorizer cannot list what it would allow
    obj["status"] = {"resourceRules": resource_rules, "nonResourceRules": non_resource_rules,
                     "incomplete": incomplete}


async def self_subject_review(srv: "APIServer", ctx: Ctx, obj: Obj) -> None:
    obj["status"] = {"userInfo": ctx.user.to_dict()}


async def token_review(srv: "APIServer", ctx: Ctx, obj: Obj) -> None:
    spec = obj.get("spec") or {}
    token = spec.get("token") or ""
    wanted = spec.get("audiences")
    wanted = [a for a in wanted if isinstance(a, str)] if isinstance(wanted, list) else []
    if not token:
        obj["status"] = {"user": {}, "authenticated": False}
        return
    user, audiences, problem = await srv.authenticator.review_token(token, wanted or None)
    if user is None:
        obj["status"] = {"user": {}, "authenticated": False, "error": problem}
        return
    obj["status"] = {"authenticated": True, "user": user.to_dict(), "audiences": audiences}


HANDLERS = {
    ("authorization.k8s.io", "selfsubjectaccessreviews"): self_subject_access_review,
    ("authorization.k8s.io", "subjectaccessreviews"): subject_access_review,
    ("authorization.k8s.io", "localsubjectaccessreviews"): local_subject_access_review,
    ("authorization.k8s.io", "selfsubjectrulesreviews"): self_subject_rules_review,
    ("authentication.k8s.io", "selfsubjectreviews"): self_subject_review,
    ("authentication.k8s.io", "tokenreviews"): token_review,
}
