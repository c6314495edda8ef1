"""The one registry of resource kinds every component shares.

A `ResourceType` says everything the API server needs to serve a kind: where it lives
in the URL space and in etcd, its discovery entry (verbs, short names, categories),
its subresources, its table columns, its field selectors, and the hooks that default
and validate objects. Objects themselves stay plain dicts, so fields this registry does
not know about survive a round trip. Adding a kind is one `register(...)` call in
kubesmith/api/kinds/.

What the API server calls, in order, for a write:

    create: rt.apply_defaults(obj)            # upstream's defaulting (also on update)
            ... server resets status (rt.has_status), fills uid, creationTimestamp,
                generation, a generated name ...
            rt.prepare_for_create(obj)        # kind-specific create-time fields (pod
                                              # phase/qosClass, job selector from uid)
            errors = rt.validate(obj)         # [] or FieldErrors -> 422
    update: rt.apply_defaults(obj)
            rt.prepare_for_update(obj, old)   # keep server-allocated fields (service IPs)
            errors = rt.validate(obj, old)

Kinds whose objects are stored in another kind's shape (events.k8s.io/v1 Event is kept
as core/v1 Event under /registry/events) convert with `rt.convert_to_storage(obj)` before
writing and `rt.convert_from_storage(stored)` after reading; both are the identity for
every other kind. Field selectors (`rt.field_value`) and table rows (`rt.table_row`) take
an object in the resource type's own shape.

Tables (meta.k8s.io/v1 Table, what `kubectl get` shows): `rt.table_columns()` is the
complete, ordered list of column definitions, including Name and Age, and
`rt.table_row(obj)` the matching cells. Build every row with all columns (as upstream
does, wide ones included); kubectl hides priority-1 columns unless `-o wide`.
How the list is formed from `columns`:
  * Name (NAME_COLUMN) comes first, unless `columns` holds a column with format "name",
    in which case `columns` is the complete table as given (core events: no Age column,
    Name is a wide column at the end);
  * Age goes where `columns` holds AGE_COLUMN (services, nodes, resource quotas put it
    between other columns); otherwise it is inserted after the last priority-0 column,
    i.e. before the first wide column (pods: ... RESTARTS AGE IP NODE ...);
  * `table_age=False` leaves Age out (kinds upstream shows with "Created At").

Create-only kinds (tokenreviews, *subjectaccessreviews, selfsubjectrulesreviews,
bindings) have verbs == ("create",): `rt.create_only` is True; the server answers the
create with the (filled in) object and stores nothing.

Subresources: `rt.subresources` names them; `rt.subresource_details()` gives, for each,
the discovery facts (kind with its group/version, verbs) as upstream lists them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping

Obj = dict[str, Any]

STANDARD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update",
                  "watch")


@dataclass(frozen=True)
class FieldError:
    """One invalid field, reported as a cause in a 422 Status.

    `reason` is upstream's cause type: FieldValueRequired, FieldValueInvalid,
    FieldValueNotSupported, FieldValueDuplicate, FieldValueForbidden, FieldValueTooLong,
    FieldValueTypeInvalid.
    """
    reason: str
    field: str
    message: str


@dataclass(frozen=True)
class Column:
    """A table column as `kubectl get` shows it (meta.k8s.io/v1 TableColumnDefinition)."""
    name: str
    type: str                         # integer, number, string, boolean, date
    value: Callable[[Obj], Any]
    description: str = ""
    format: str = ""                  # "name" for the NAME column
    priority: int = 0                 # 1: shown only with -o wide


@dataclass(frozen=True)
class ResourceType:
    group: str                        # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = STANDARD_VERBS
    # Subresources served besides the object itself ("status", "scale", "binding", ...).
    subresources: tuple[str, ...] = ()
    # Table columns (see the module docstring for where Name and Age go).
    columns: tuple[Column, ...] = ()
    # fieldSelector names beyond metadata.name/metadata.namespace -> value getter.
    field_selectors: Mapping[str, Callable[[Obj], str]] = field(default_factory=dict)
    # Fills defaults in place on create and update.
    defaulter: Callable[[Obj], None] | None = None
    # Returns every problem with the object; `old` is given on update.
    validator: Callable[[Obj, Obj | None], list[FieldError]] | None = None
    # etcd key segment: /registry/<storage_resource>/[<namespace>/]<name>.
    storage_resource: str = ""
    # False: no Age column in the table (see the module docstring for column layout).
    table_age: bool = True
    # Create-time fields derived from the filled-in object (see the module docstring).
    prepare_create: Callable[[Obj], None] | None = None
    # Update-time fields carried over from the stored object (`obj`, `old`), before
    # validation: services keep their allocated cluster IPs and node ports on a replace.
    prepare_update: Callable[[Obj, Obj], None] | None = None
    # This version's shape <-> the stored shape, when another kind's storage is shared.
    to_storage: Callable[[Obj], Obj] | None = None
    from_storage: Callable[[Obj], Obj] | None = None

    def __post_init__(self) -> None:
        if not self.singular:
            object.__setattr__(self, "singular", self.kind.lower())
        if not self.storage_resource:
            object.__setattr__(self, "storage_resource", self.plural)

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def api_version(self) -> str:
        return self.group_version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def create_only(self) -> bool:
        """True for kinds that only answer POST (reviews, bindings): nothing is stored."""
        return tuple(self.verbs) == ("create",)

    @property
    def schema_name(self) -> str:
        """Name of the kind's OpenAPI schema, as upstream names it (io.k8s.api.core.v1.Pod)."""
        return f"io.k8s.api.{api_package(self.group)}.{self.version}.{self.kind}"

    def subresource_details(self) -> list["Subresource"]:
        """Discovery facts of each subresource, in the order of `subresources`."""
        return [subresource_info(self, name) for name in self.subresources]

    def table_columns(self) -> list[Column]:
        """The complete ordered column definitions of this kind's table."""
        columns = list(self.columns)
        if any(c.format == "name" for c in columns):
            return columns
        columns.insert(0, NAME_COLUMN)
        if AGE_COLUMN in columns or not self.table_age:
            return columns
        position = len(columns)
        for index, column in enumerate(columns):
            if column.priority > 0:
                position = index
                break
        columns.insert(position, AGE_COLUMN)
        return columns

    def table_row(self, obj: Obj) -> list[Any]:
        """The cells of one object's table row, matching `table_columns()`."""
        return [column.value(obj) for column in self.table_columns()]

    def prepare_for_create(self, obj: Obj) -> None:
        if self.prepare_create:
            self.prepare_create(obj)

    def prepare_for_update(self, obj: Obj, old: Obj) -> None:
        if self.prepare_update:
            self.prepare_update(obj, old)

    def convert_to_storage(self, obj: Obj) -> Obj:
        return self.to_storage(obj) if self.to_storage else obj

    def convert_from_storage(self, obj: Obj) -> Obj:
        return self.from_storage(obj) if self.from_storage else obj

    def storage_key(self, namespace: str | None, name: str) -> bytes:
        if self.namespaced:
            return f"/registry/{self.storage_resource}/{namespace}/{name}".encode()
        return f"/registry/{self.storage_resource}/{name}".encode()

    def storage_prefix(self, namespace: str | None = None) -> bytes:
        """Prefix of every stored object of this kind (of one namespace when given)."""
        if self.namespaced and namespace:
            return f"/registry/{self.storage_resource}/{namespace}/".encode()
        return f"/registry/{self.storage_resource}/".encode()

    def field_value(self, obj: Obj, name: str) -> str | None:
        """Value of a fieldSelector field, or None when the kind has no such field."""
        meta = obj.get("metadata") or {}
        if name == "metadata.name":
            return meta.get("name", "")
        if name == "metadata.namespace" and self.namespaced:
            return meta.get("namespace", "")
        getter = self.field_selectors.get(name)
        return None if getter is None else str(getter(obj))

    def validate(self, obj: Obj, old: Obj | None = None) -> list[FieldError]:
        return list(self.validator(obj, old)) if self.validator else []

    def apply_defaults(self, obj: Obj) -> None:
        if self.defaulter:
            self.defaulter(obj)


def api_package(group: str) -> str:
    """The Go package segment of a group in upstream's schema names (core, apps, rbac...)."""
    return group.split(".")[0] if group else "core"


# --- tables ---------------------------------------------------------------------------

def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp (metav1.Time / MicroTime) as an aware datetime, or None."""
    if not value or not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith("Z") or text.endswith("z"):
        text = text[:-1] + "+00:00"
    # Python before 3.11 takes at most 6 fractional digits.
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if match and match.group(2):
        text = match.group(1) + match.group(2)[:7] + match.group(3)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def human_duration(seconds: float) -> str:
    """A duration the way kubectl prints ages: 45s, 3m20s, 5h, 2d3h, 1y30d."""
    secs = int(seconds)
    if secs < -1:
        return "<invalid>"
    if secs < 0:
        return "0s"
    if secs < 120:
        return f"{secs}s"
    minutes = secs // 60
    if minutes < 10:
        rest = secs % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = secs // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        years = hours // 24 // 365
        return f"{years}y" if days == 0 else f"{years}y{days}d"
    return f"{hours // 24 // 365}y"


def since(timestamp: Any, now: datetime | None = None) -> str:
    """Age of a timestamp as kubectl prints it; "<unknown>" when there is none."""
    parsed = parse_time(timestamp)
    if parsed is None:
        return "<unknown>"
    now = now or datetime.now(timezone.utc)
    return human_duration((now - parsed).total_seconds())


def _name_cell(obj: Obj) -> str:
    return (obj.get("metadata") or {}).get("name", "")


def _age_cell(obj: Obj) -> str:
    return since((obj.get("metadata") or {}).get("creationTimestamp"))


def _created_at_cell(obj: Obj) -> str:
    parsed = parse_time((obj.get("metadata") or {}).get("creationTimestamp"))
    if parsed is None:
        return "<unknown>"
    return parsed.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


NAME_COLUMN = Column("Name", "string", _name_cell,
                     "Name of the object, unique in its namespace", format="name")
AGE_COLUMN = Column("Age", "string", _age_cell,
                    "Time since the object was created (metadata.creationTimestamp)")
# Upstream's default table (kinds without a printer of their own) and a few kinds show
# the creation time itself instead of Age; use with table_age=False.
CREATED_AT_COLUMN = Column("Created At", "date", _created_at_cell,
                           "When the object was created (metadata.creationTimestamp)")


# --- subresources ---------------------------------------------------------------------

@dataclass(frozen=True)
class Subresource:
    """One subresource as discovery lists it ("pods/status")."""
    name: str
    kind: str
    group: str
    version: str
    verbs: tuple[str, ...]


_PROXY_VERBS = ("create", "delete", "get", "patch", "update")
_STATUS_VERBS = ("get", "patch", "update")

# name -> (kind, or "" for the parent's kind; group, version, or None for the parent's; verbs)
_SUBRESOURCES: dict[str, tuple[str, str | None, str | None, tuple[str, ...]]] = {
    "status": ("", None, None, _STATUS_VERBS),
    "scale": ("Scale", "autoscaling", "v1", _STATUS_VERBS),
    "binding": ("Binding", "", "v1", ("create",)),
    "eviction": ("Eviction", "policy", "v1", ("create",)),
    "log": ("Pod", "", "v1", ("get",)),
    "exec": ("PodExecOptions", "", "v1", ("create", "get")),
    "attach": ("PodAttachOptions", "", "v1", ("create", "get")),
    "portforward": ("PodPortForwardOptions", "", "v1", ("create", "get")),
    "token": ("TokenRequest", "authentication.k8s.io", "v1", ("create",)),
    "finalize": ("", None, None, ("update",)),
    "ephemeralcontainers": ("", None, None, _STATUS_VERBS),
    "resize": ("", None, None, _STATUS_VERBS),
    "approval": ("", None, None, _STATUS_VERBS),
}
_PROXY_KINDS = {"Pod": "PodProxyOptions", "Node": "NodeProxyOptions",
                "Service": "ServiceProxyOptions"}


def subresource_info(resource: "ResourceType", name: str) -> Subresource:
    if name == "proxy":
        return Subresource(name, _PROXY_KINDS.get(resource.kind, resource.kind),
                           resource.group, resource.version, _PROXY_VERBS)
    kind, group, version, verbs = _SUBRESOURCES.get(name, ("", None, None, _STATUS_VERBS))
    return Subresource(name, kind or resource.kind,
                       resource.group if group is None else group,
                       resource.version if version is None else version, verbs)


class Registry:
    def __init__(self) -> None:
        self._by_path: dict[tuple[str, str, str], ResourceType] = {}
        self._by_kind: dict[tuple[str, str, str], ResourceType] = {}
        self._order: list[ResourceType] = []

    def register(self, resource: ResourceType) -> ResourceType:
        key = (resource.group, resource.version, resource.plural)
        if key in self._by_path:
            raise ValueError(f"{resource.group_version} {resource.plural} registered twice")
        self._by_path[key] = resource
        self._by_kind[(resource.group, resource.version, resource.kind)] = resource
        self._order.append(resource)
        return resource

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_path.get((group, version, plural))

    def by_kind(self, group: str, version: str, kind: str) -> ResourceType | None:
        return self._by_kind.get((group, version, kind))

    def by_api_version(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        return self.by_kind(group, version, kind)

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(self._order)

    def group_versions(self) -> dict[str, list[str]]:
        """group -> versions in registration order (the core group is "")."""
        groups: dict[str, list[str]] = {}
        for resource in self._order:
            versions = groups.setdefault(resource.group, [])
            if resource.version not in versions:
                versions.append(resource.version)
        return groups

    def resources_in(self, group: str, version: str) -> Iterable[ResourceType]:
        return [r for r in self._order if r.group == group and r.version == version]


REGISTRY = Registry()


def register(resource: ResourceType) -> ResourceType:
    return REGISTRY.register(resource)


def dig(obj: Any, *path: str, default: Any = None) -> Any:
    """obj[path[0]][path[1]]..., or `default` where a step is missing or not a mapping."""
    for key in path:
        if not isinstance(obj, dict):
            return default
        obj = obj.get(key)
    return default if obj is None else obj
