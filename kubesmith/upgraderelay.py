"""An upgraded HTTP connection (SPDY/3.1 and the like) relayed byte for byte to a
backend that answered the same upgrade with 101: the API server's pods/exec, attach and
portforward to the kubelet, and the kubelet's to the container runtime's streaming
server. Each side opens the backend connection itself; this is what follows.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from aiohttp import web

CHUNK = 65536
# Headers of the backend's 101 that do not describe the client's connection.
UNRELAYED_ANSWER_HEADERS = ("content-length", "transfer-encoding", "date", "server")


class ByteRelay:
    """Takes the place of aiohttp's HTTP parser after an upgrade: the client's bytes go
    to the backend's connection as they arrive."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer

    def feed_data(self, data: bytes):
        if not self.writer.is_closing():
            self.writer.write(data)
        return False, b""

    def feed_eof(self) -> None:
        if not self.writer.is_closing():
            try:
                self.writer.write_eof()
            except (OSError, RuntimeError):
                self.writer.close()


async def read_response_head(reader: asyncio.StreamReader
                             ) -> tuple[int, list[tuple[str, str]]]:
    """The status code and headers of the backend's answer, up to the blank line."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"bad status line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers.append((name.strip(), value.strip()))
    return int(parts[1]), headers


async def relay_upgraded(request: web.Request, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, answer_headers: list[tuple[str, str]],
                         stopping: Callable[[], bool] = lambda: False) -> web.StreamResponse:
    """Answer `request` 101 with the backend's headers, then carry the bytes both ways
    untouched until either side closes (or `stopping()` is true before a read); both
    connections are closed at the end."""
    response = web.StreamResponse(status=101)
    for name, value in answer_headers:
        if name.lower() not in UNRELAYED_ANSWER_HEADERS:
            response.headers.add(name, value)
    protocol = request.protocol
    protocol.keep_alive(False)
    # From here on the client's bytes go to the backend untouched.
    protocol.set_parser(ByteRelay(writer))
    await response.prepare(request)
    await response.write(b"")     # the 101 now: both sides wait for it before speaking
    transport = request.transport
    try:
        while not stopping():
            chunk = await reader.read(CHUNK)
            if not chunk or transport is None or transport.is_closing():
                break
            await response.write(chunk)
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        if transport is not None:
            transport.close()
    return response
