"""The host commands kube-proxy and the pod-network agent run: iptables, iptables-save,
iptables-restore, conntrack, ip, sysctl.

Everything goes through a CommandRunner, whose `prefix` lets a test run the very same
code inside a network namespace it made (prefix ["ip", "netns", "exec", NAME]) and lets
unit tests record commands instead of running them.
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Iterable, NamedTuple, Sequence

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 60.0


class CommandError(RuntimeError):
    def __init__(self, argv: Sequence[str], code: int, stderr: str):
        self.argv, self.code, self.stderr = list(argv), code, stderr
        super().__init__(f"{' '.join(argv)}: exit {code}: {stderr.strip()}")


class Result(NamedTuple):
    code: int
    stdout: str
    stderr: str


class CommandRunner:
    def __init__(self, prefix: Sequence[str] = ()):
        self.prefix = list(prefix)

    async def run(self, argv: Sequence[str], *, input: str | None = None,
                  check: bool = True) -> Result:
        full = [*self.prefix, *argv]
        process = await asyncio.create_subprocess_exec(
            *full, stdin=asyncio.subprocess.PIPE if input is not None else
            asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(
                process.communicate(input.encode() if input is not None else None),
                COMMAND_TIMEOUT)
        except BaseException:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        result = Result(process.returncode or 0, out.decode(errors="replace"),
                        err.decode(errors="replace"))
        if check and result.code != 0:
            raise CommandError(full, result.code, result.stderr)
        return result


_CHAIN_LINE = re.compile(r"^:(\S+) ", re.M)


def chains_in(save_output: str) -> list[str]:
    """The chain names of one table's iptables-save output."""
    return _CHAIN_LINE.findall(save_output)


class Iptables:
    """iptables (IPv4) of one host or network namespace."""

    def __init__(self, runner: CommandRunner | None = None):
        self.runner = runner or CommandRunner()

    async def restore(self, text: str) -> None:
        """One atomic transaction; --noflush leaves chains not named in `text` alone."""
        await self.runner.run(["iptables-restore", "-w", "--noflush", "--counters"],
                              input=text)

    async def save(self, table: str) -> str:
        return (await self.runner.run(["iptables-save", "-t", table])).stdout

    async def chains(self, table: str) -> list[str]:
        return chains_in(await self.save(table))

    async def ensure_chain(self, table: str, chain: str) -> None:
        result = await self.runner.run(["iptables", "-w", "-t", table, "-N", chain],
                                       check=False)
        if result.code != 0 and "exists" not in result.stderr:
            raise CommandError(["iptables", "-t", table, "-N", chain], result.code,
                               result.stderr)

    async def has_rule(self, table: str, chain: str, args: Iterable[str]) -> bool:
        result = await self.runner.run(["iptables", "-w", "-t", table, "-C", chain, *args],
                                       check=False)
        return result.code == 0

    async def ensure_rule(self, table: str, chain: str, args: Sequence[str], *,
                          prepend: bool = True) -> bool:
        """Add the rule unless it is there; True when it was added."""
        if await self.has_rule(table, chain, args):
            return False
        where = ["-I", chain, "1"] if prepend else ["-A", chain]
        await self.runner.run(["iptables", "-w", "-t", table, *where, *args])
        return True

    async def delete_rule(self, table: str, chain: str, args: Sequence[str]) -> bool:
        result = await self.runner.run(["iptables", "-w", "-t", table, "-D", chain, *args],
                                       check=False)
        return result.code == 0


class Conntrack:
    """Deletes conntrack entries that would keep UDP flows on gone endpoints
    (upstream's pkg/proxy/conntrack, through the conntrack tool)."""

    def __init__(self, runner: CommandRunner | None = None):
        self.runner = runner or CommandRunner()

    async def _delete(self, args: list[str]) -> None:
        try:
            result = await self.runner.run(["conntrack", "-D", *args], check=False)
        except OSError as exc:      # no conntrack tool: stale UDP flows age out instead
            log.warning("conntrack -D %s: %s", " ".join(args), exc)
            return
        # conntrack exits 1 when nothing matched: not a failure.
        if result.code != 0 and "0 flow entries" not in result.stderr:
            log.warning("conntrack -D %s: %s", " ".join(args), result.stderr.strip())

    async def clear_ip(self, ip: str, protocol: str = "udp") -> None:
        await self._delete(["--orig-dst", ip, "-p", protocol])

    async def clear_port(self, port: int, protocol: str = "udp") -> None:
        await self._delete(["-p", protocol, "--dport", str(port)])

    async def clear_nat(self, origin: str, dest: str, protocol: str = "udp") -> None:
        await self._delete(["--orig-dst", origin, "--dst-nat", dest, "-p", protocol])

    async def clear_port_nat(self, port: int, dest: str, protocol: str = "udp") -> None:
        await self._delete(["-p", protocol, "--dport", str(port), "--dst-nat", dest])


async def set_sysctl(runner: CommandRunner, name: str, value: str) -> bool:
    """Set a sysctl (dotted name) unless it has the value already; True when changed."""
    current = await runner.run(["sysctl", "-n", name], check=False)
    if current.code == 0 and current.stdout.strip() == value:
        return False
    await runner.run(["sysctl", "-q", "-w", f"{name}={value}"])
    return True


async def get_sysctl(runner: CommandRunner, name: str) -> str | None:
    result = await runner.run(["sysctl", "-n", name], check=False)
    return result.stdout.strip() if result.code == 0 else None
