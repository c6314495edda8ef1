"""discovery.k8s.io/v1 kinds: endpoint slices."""
from __future__ import annotations

from kubesmith.api.registry import Column, FieldError, ResourceType, register
from kubesmith.api.validation import (
    invalid, port_number_problems, required, validate_enum, with_meta,
)
from kubesmith.api.podspec import PROTOCOLS

ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")


def _more(shown: list[str], count: int, limit: int = 3) -> str:
    text = ",".join(shown)
    if count > limit:
        return f"{text} + {count - limit} more..."
    return text or "<unset>"


def _slice_ports(obj: dict) -> str:
    ports = obj.get("ports") or []
    shown = []
    for port in ports[:3]:
        if port.get("port") is not None:
            shown.append(str(port["port"]))
        elif port.get("name"):
            shown.append(port["name"])
        else:
            shown.append("*")
    return _more(shown, len(ports))


def _slice_endpoints(obj: dict) -> str:
    addresses = [a for e in obj.get("endpoints") or [] for a in (e or {}).get("addresses") or []]
    return _more(addresses[:3], len(addresses))


def _default_slice(obj: dict) -> None:
    for port in obj.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            port.setdefault("name", "")


@with_meta(namespaced=True)
def _validate_slice(obj: dict, old: dict | None) -> list[FieldError]:
    errors = validate_enum(obj.get("addressType"), "addressType", ADDRESS_TYPES, True)
    endpoints = obj.get("endpoints") or []
    if len(endpoints) > 1000:
        errors.append(invalid("endpoints", len(endpoints), "must have at most 1000 items"))
    for index, endpoint in enumerate(endpoints):
        addresses = (endpoint or {}).get("addresses") or []
        if not addresses:
            errors.append(required(f"endpoints[{index}].addresses", "must contain at least 1 "
                                   "address"))
        elif len(addresses) > 100:
            errors.append(invalid(f"endpoints[{index}].addresses", len(addresses),
                                  "must have at most 100 items"))
    names: set[str] = set()
    for index, port in enumerate(obj.get("ports") or []):
        path = f"ports[{index}]"
        if not isinstance(port, dict):
            errors.append(invalid(path, port, "must be an object"))
            continue
        if port.get("port") is not None:
            errors.extend(invalid(f"{path}.port", port["port"], p)
                          for p in port_number_problems(port["port"]))
        errors.extend(validate_enum(port.get("protocol"), f"{path}.protocol", PROTOCOLS))
        name = port.get("name") or ""
        if name in names:
            errors.append(invalid(f"{path}.name", name, "must be unique"))
        names.add(name)
    if old is not None and obj.get("addressType") != old.get("addressType"):
        errors.append(invalid("addressType", obj.get("addressType"), "field is immutable"))
    return errors


ENDPOINT_SLICES = register(ResourceType(
    group="discovery.k8s.io", version="v1", kind="EndpointSlice", plural="endpointslices",
    namespaced=True,
    columns=(
        Column("AddressType", "string", lambda o: o.get("addressType", ""),
               "Type of the addresses in the slice"),
        Column("Ports", "string", _slice_ports, "Ports of the slice"),
        Column("Endpoints", "string", _slice_endpoints, "Addresses of the slice's endpoints"),
    ),
    defaulter=_default_slice, validator=_validate_slice,
))
