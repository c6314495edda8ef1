"""Upstream command-line syntax (Go's pflag) shared by kube-apiserver,
kube-controller-manager and kube-scheduler.

Accepted forms: --name=value, --name value, and a bare --name for booleans
(--name=false turns one off). Values use Go's syntax: strconv.ParseBool for booleans,
time.ParseDuration for durations ("1m30s", "250ms"). Every value parser raises
argparse.ArgumentTypeError, so a bad value is reported with the flag's name.
"""
from __future__ import annotations

import argparse
import ipaddress
import re
from typing import Any, Callable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}")


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration ("5m", "1m30s", "250ms", "0"), in seconds."""
    value = text.strip()
    sign = -1.0 if value.startswith("-") else 1.0
    value = value.lstrip("+-")
    if value == "0":
        return 0.0
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(value) or not value:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}")
    return sign * total


def ip(text: str) -> str:
    """One IPv4 or IPv6 address, in its canonical spelling."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def cidrs(text: str, *, allow_empty: bool = False) -> list[IPNetwork]:
    """One CIDR or a dual-stack pair, comma separated. An empty value is an error unless
    allow_empty (kube-controller-manager's --cluster-cidr defaults to "")."""
    try:
        nets = [ipaddress.ip_network(part.strip(), strict=True)
                for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if (not nets and not allow_empty) or len(nets) > 2:
        raise argparse.ArgumentTypeError("expected one CIDR or a dual-stack pair")
    return nets


def cidrs_or_empty(text: str) -> list[IPNetwork]:
    return cidrs(text, allow_empty=True)


def comma_list(text: str) -> list[str]:
    """pflag's StringSlice: comma separated, blanks dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def port(text: str, *, allow_zero: bool = False) -> int:
    """A TCP port; 0 only with allow_zero (the components' "0 turns the listener off")."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port value: {text!r}") from None
    if not (0 if allow_zero else 1) <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a valid port")
    return number


def port_or_zero(text: str) -> int:
    return port(text, allow_zero=True)


def port_range(text: str) -> tuple[int, int]:
    """LOW-HIGH (or a single port), both ends included."""
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid port range {text!r} (expected LOW-HIGH)")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if not 0 < low <= high < 65536:
        raise argparse.ArgumentTypeError(f"invalid port range {text!r}")
    return low, high


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser with pflag's conventions: no abbreviations, no defaults in the
    namespace (an absent flag keeps the options dataclass's default), and optionally a
    bad command line raised as `error` instead of argparse's usage-and-exit."""

    def __init__(self, prog: str, description: str,
                 error: type[Exception] | None = None) -> None:
        super().__init__(prog=prog, description=description, allow_abbrev=False)
        self._error = error

    def error(self, message: str):  # type: ignore[override]
        if self._error is None:
            super().error(message)
        raise self._error(message)

    def flag(self, name: str, type_: Callable[[str], Any] = str, help_: str = "", *,
             boolean: bool = False, dest: str | None = None) -> None:
        kwargs: dict[str, Any] = dict(dest=dest or name.lstrip("-").replace("-", "_"),
                                      help=help_, default=argparse.SUPPRESS)
        if boolean:
            # pflag: a bare --flag means true; --flag=false turns it off.
            self.add_argument(name, nargs="?", const=True, type=parse_bool, **kwargs)
        else:
            self.add_argument(name, type=type_, **kwargs)

    def verbosity_flag(self) -> None:
        """klog's -v / --v."""
        self.add_argument("-v", "--v", type=int, dest="v", default=argparse.SUPPRESS,
                          help="log verbosity")
