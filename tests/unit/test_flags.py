"""kubesmith.flags: Go's value syntax and pflag's conventions, without a component."""
from __future__ import annotations

import argparse
import ipaddress

import pytest

from kubesmith import flags


@pytest.mark.parametrize("text,value", [("true", True), ("1", True), ("T", True),
                                        ("False", False), ("0", False), ("f", False)])
def test_parse_bool_is_go_strconv(text, value):
    assert flags.parse_bool(text) is value


@pytest.mark.parametrize("text", ["yes", "on", "", "tRUE"])
def test_parse_bool_rejects_what_go_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="invalid boolean"):
        flags.parse_bool(text)


@pytest.mark.parametrize("text,seconds", [("5m", 300), ("1h2m3s", 3723), ("250ms", 0.25),
                                          ("0", 0), ("1.5s", 1.5), ("-2s", -2),
                                          ("1us", 1e-6), ("1µs", 1e-6)])
def test_parse_duration_is_go_time(text, seconds):
    assert flags.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["40", "", "1d", "5 m", "m5", "1h 2m"])
def test_parse_duration_needs_units(text):
    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration"):
        flags.parse_duration(text)


def test_ip_and_lists():
    assert flags.ip("::0001") == "::1"
    with pytest.raises(argparse.ArgumentTypeError, match="is not an IP address"):
        flags.ip("10.0.0.256")
    assert flags.comma_list(" a, ,b,") == ["a", "b"]


def test_cidrs_single_or_dual_stack():
    assert flags.cidrs("10.96.0.0/12, fd00::/108") == [
        ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd00::/108")]
    for bad in ("", "10.0.0.0/8,10.1.0.0/16,fd00::/64"):
        with pytest.raises(argparse.ArgumentTypeError, match="dual-stack pair"):
            flags.cidrs(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="host bits set"):
        flags.cidrs("10.0.0.1/8")
    assert flags.cidrs_or_empty("") == []


def test_ports():
    assert flags.port("6443") == 6443 and flags.port_or_zero("0") == 0
    for bad in ("0", "65536", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a valid port"):
            flags.port(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="invalid port value: 'http'"):
        flags.port_or_zero("http")
    assert flags.port_range("30000-32767") == (30000, 32767)
    assert flags.port_range("8080") == (8080, 8080)
    for bad in ("32767-30000", "0-10", "1-65536"):
        with pytest.raises(argparse.ArgumentTypeError, match="invalid port range"):
            flags.port_range(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="expected LOW-HIGH"):
        flags.port_range("a-b")


class BadFlags(ValueError):
    pass


def _parser(error: type[Exception] | None = BadFlags) -> flags.FlagParser:
    parser = flags.FlagParser("component", "a test component", error)
    parser.flag("--leader-elect", boolean=True)
    parser.flag("--lease", flags.parse_duration)
    parser.flag("--port", flags.port, dest="serving_port")
    parser.verbosity_flag()
    return parser


def test_flag_parser_follows_pflag():
    parser = _parser()
    assert vars(parser.parse_args([])) == {}     # absent flags keep the caller's defaults
    assert vars(parser.parse_args(["--leader-elect", "--lease", "1m", "--port=80", "-v=3"])) == {
        "leader_elect": True, "lease": 60.0, "serving_port": 80, "v": 3}
    assert parser.parse_args(["--leader-elect=false"]).leader_elect is False
    with pytest.raises(BadFlags, match="unrecognized arguments: --leader"):
        parser.parse_args(["--leader"])          # no abbreviations
    with pytest.raises(BadFlags, match="argument --lease: invalid duration '40'"):
        parser.parse_args(["--lease=40"])
    with pytest.raises(BadFlags, match="argument --leader-elect: invalid boolean 'maybe'"):
        parser.parse_args(["--leader-elect=maybe"])


def test_flag_parser_without_error_class_exits_as_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser(None).parse_args(["--port=0"])
    assert exit_info.value.code == 2
    assert "component: error: argument --port: 0 is not a valid port" in capsys.readouterr().err
