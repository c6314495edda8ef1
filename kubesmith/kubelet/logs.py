"""Container logs: reading the CRI log files containerd writes, and rotating them by size.

containerd writes every line a container prints to the file named by the container's
ContainerStatus.log_path, in the CRI log format:

    2026-12-04T18:21:28.123456789Z stdout F hello world
    <RFC3339Nano time>             <stream> <tag> <text>

Tag F ends a line; tag P is a fragment of a longer line (containerd splits lines
over 16 KiB), continued by the next record of the same stream. What is read back
(`read_logs`) is the text alone, as upstream's kubelet serves /containerLogs:
timestamps=true puts the record's time (RFC3339Nano with nine fraction digits) in
front of each line, tailLines keeps the last N lines, sinceSeconds/sinceTime drops
older records, limitBytes cuts the output, stream keeps one stream, and follow keeps
reading as the file grows, across a rotation, until the container has exited and
the file is drained.

`LogRotator` is the container log manager: every 10 s each running container's log
over `max_size` bytes is renamed to `<log>.<YYYYMMDD-HHMMSS>`, containerd is asked to
reopen the log (ReopenContainerLog), rotated files but the newest are gzipped, and
the oldest are deleted so at most `max_files` files (the live one included) remain.
"""
from __future__ import annotations

import asyncio
import datetime
import functools
import gzip
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from kubesmith.cri import api

log = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")
# Query values of PodLogOptions.stream (upstream's LogStreamStdout/Stderr/All).
STREAM_CHOICES = {"Stdout": ("stdout",), "Stderr": ("stderr",), "All": STREAMS}
TAG_PARTIAL = b"P"
TAG_FULL = b"F"

ROTATION_PERIOD = 10.0                 # upstream's container log monitor period
ROTATED_SUFFIX_FORMAT = "%Y%m%d-%H%M%S"  # upstream's "20060102-150405"
COMPRESSED_SUFFIX = ".gz"
TMP_SUFFIX = ".tmp"

FOLLOW_POLL_INTERVAL = 0.2     # how often a followed file is checked for growth
RUNNING_CHECK_INTERVAL = 1.0   # how often a followed container is asked if it still runs
READ_CHUNK = 64 * 1024
MAX_HELD_LINE = 1024 * 1024  # longest line held back until its last fragment
OUTPUT_BATCH = 64 * 1024     # output is written in pieces of about this size

_TIMESTAMP = re.compile(
    rb"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


class LogFormatError(ValueError):
    """A line that is not in the CRI log format."""


@dataclass(frozen=True)
class LogRecord:
    """One record of a CRI log file."""
    time_ns: int        # nanoseconds since the epoch
    time_text: str      # the time as served with timestamps=true (nine fraction digits)
    stream: str         # "stdout" or "stderr"
    partial: bool       # tag P: the line goes on in the next record of this stream
    text: bytes         # the content, with "\n" appended unless partial


def parse_timestamp(raw: bytes) -> tuple[int, str]:
    """An RFC3339Nano time -> (nanoseconds since the epoch, the time with nine fraction
    digits and its own zone, as upstream's RFC3339NanoFixed prints it)."""
    match = _TIMESTAMP.match(raw)
    if not match:
        raise LogFormatError(f"bad timestamp {raw[:40]!r}")
    fraction = (match.group(7) or b"").decode()
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    zone = match.group(8).decode()
    seconds, date_time = _epoch_seconds(raw[:19], zone)
    return seconds * 1_000_000_000 + nanos, f"{date_time}.{nanos:09d}{zone}"


@functools.lru_cache(maxsize=256)
def _epoch_seconds(date_time: bytes, zone: str) -> tuple[int, str]:
    """Seconds since the epoch of "YYYY-MM-DDTHH:MM:SS" in a zone (cached: the lines of
    one second share it, and building a datetime per line is what reading costs)."""
    if zone == "Z":
        offset = datetime.timedelta(0)
    else:
        sign = 1 if zone[0] == "+" else -1
        offset = sign * datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    text = date_time.decode()
    try:
        moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(
            tzinfo=datetime.timezone(offset))
    except ValueError as exc:
        raise LogFormatError(f"bad timestamp {text!r}: {exc}") from None
    return int(moment.timestamp()), text


def parse_cri_line(line: bytes) -> LogRecord:
    """One line of a CRI log file (with or without its trailing newline)."""
    if line.endswith(b"\n"):
        line = line[:-1]
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        raise LogFormatError(f"not a CRI log line: {line[:80]!r}")
    time_ns, time_text = parse_timestamp(parts[0])
    stream = parts[1].decode("ascii", "replace")
    if stream not in STREAMS:
        raise LogFormatError(f"unknown stream {stream!r}")
    tag = parts[2]
    # A tag may carry more than P/F after a ":" (upstream reserves that); P is what counts.
    partial = tag.split(b":", 1)[0] == TAG_PARTIAL
    text = parts[3] if len(parts) == 4 else b""
    if not partial:
        text += b"\n"
    return LogRecord(time_ns, time_text, stream, partial, text)


def format_rfc3339(epoch_ns: int) -> str:
    """Nanoseconds since the epoch as UTC RFC3339 with nine fraction digits."""
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


# --- options ---------------------------------------------------------------------------

class LogOptionsError(ValueError):
    """Query parameters that are not valid PodLogOptions. `status` is the HTTP code
    upstream's kubelet answers (400: cannot be decoded, 422: decoded but invalid)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class LogOptions:
    """What to read (upstream's PodLogOptions, as the kubelet receives them)."""
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    since_ns: int | None = None        # records older than this are skipped
    limit_bytes: int | None = None
    streams: tuple[str, ...] = STREAMS


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("", "true", "1", "t", "yes"):
        return True
    if lowered in ("false", "0", "f", "no"):
        return False
    raise LogOptionsError(f"{name}: invalid boolean {value!r}")


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise LogOptionsError(f"{name}: invalid integer {value!r}") from None


def parse_log_options(query, now_ns: int | None = None) -> LogOptions:
    """PodLogOptions from the query of a /containerLogs request (a mapping of str to
    str). Raises LogOptionsError as upstream's kubelet answers it."""
    options = LogOptions()
    values = dict(query)
    # The old "tail" parameter still works, "all" meaning no tail.
    tail = values.get("tail")
    if tail:
        if tail == "all":
            values.pop("tailLines", None)
        else:
            values["tailLines"] = tail
    try:
        for name in ("follow", "previous", "timestamps"):
            if name in values:
                setattr(options, name, _bool(name, values[name]))
        if values.get("tailLines") not in (None, ""):
            options.tail_lines = _int("tailLines", values["tailLines"])
        if values.get("limitBytes") not in (None, ""):
            options.limit_bytes = _int("limitBytes", values["limitBytes"])
        since_seconds = None
        if values.get("sinceSeconds") not in (None, ""):
            since_seconds = _int("sinceSeconds", values["sinceSeconds"])
        since_time = None
        if values.get("sinceTime") not in (None, ""):
            try:
                since_time, _ = parse_timestamp(values["sinceTime"].encode())
            except LogFormatError:
                raise LogOptionsError(f"sinceTime: invalid time {values['sinceTime']!r}"
                                      ) from None
    except LogOptionsError as exc:
        raise LogOptionsError(f"Unable to decode query: {exc}", 400) from None
    stream = values.get("stream")
    # Validation, as upstream's ValidatePodLogOptions.
    if options.tail_lines is not None and options.tail_lines < 0:
        raise LogOptionsError("tailLines: must be greater than or equal to 0", 422)
    if options.limit_bytes is not None and options.limit_bytes < 1:
        raise LogOptionsError("limitBytes: must be greater than 0", 422)
    if since_seconds is not None and since_time is not None:
        raise LogOptionsError("at most one of sinceTime or sinceSeconds may be specified", 422)
    if since_seconds is not None:
        if since_seconds < 1:
            raise LogOptionsError("sinceSeconds: must be greater than 0", 422)
        now_ns = time.time_ns() if now_ns is None else now_ns
        options.since_ns = now_ns - since_seconds * 1_000_000_000
    elif since_time is not None:
        options.since_ns = since_time
    if stream not in (None, ""):
        if stream not in STREAM_CHOICES:
            raise LogOptionsError(f"stream: unsupported value {stream!r} (Stdout, Stderr "
                                  "or All)", 422)
        if stream != "All" and options.tail_lines is not None:
            # Upstream forbids tailLines with one stream; so does this kubelet.
            raise LogOptionsError("tailLines and a stream other than All cannot be "
                                  "used together", 422)
        options.streams = STREAM_CHOICES[stream]
    return options


# --- reading ---------------------------------------------------------------------------

class _LimitReached(Exception):
    pass


class _Output:
    """Output gathered into writes of up to OUTPUT_BATCH bytes: one write (one HTTP
    chunk) per line would cost more than the line itself."""

    def __init__(self, write: Callable[[bytes], Awaitable[None]]):
        self.write = write
        self.parts: list[bytes] = []
        self.size = 0

    async def add(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size >= OUTPUT_BATCH:
            await self.flush()

    async def flush(self) -> None:
        if self.parts:
            data = b"".join(self.parts)
            self.parts, self.size = [], 0
            await self.write(data)


class _Writer:
    """Turns records into output: stream filter, since, timestamps, limitBytes.

    The fragments of a long line (P records) are held per stream until the line ends,
    so a line of stdout cut by stderr output between its fragments still comes out
    whole (up to MAX_HELD_LINE bytes, past which the fragments go out as they are)."""

    def __init__(self, options: LogOptions, write: Callable[[bytes], Awaitable[None]]):
        self.options = options
        self.write = write
        self.remaining = options.limit_bytes
        # Per stream, a line begun by P records: [its first record, the fragments held,
        # their size, whether part of the line already went out].
        self.held: dict[str, list] = {}

    async def record(self, record: LogRecord) -> None:
        if record.stream not in self.options.streams:
            return
        entry = self.held.pop(record.stream, None) or [record, [], 0, False]
        entry[1].append(record.text)
        entry[2] += len(record.text)
        if record.partial and entry[2] < MAX_HELD_LINE:
            self.held[record.stream] = entry
            return
        first, parts, _, went_out = entry
        await self._line(first, b"".join(parts), prefix=not went_out)
        if record.partial:
            # Too long to hold whole: the rest follows as it comes, without a timestamp.
            self.held[record.stream] = [first, [], 0, True]

    async def _line(self, first: LogRecord, data: bytes, prefix: bool) -> None:
        if self.options.since_ns is not None and first.time_ns < self.options.since_ns:
            return
        if self.options.timestamps and prefix:
            data = first.time_text.encode() + b" " + data
        if self.remaining is not None:
            if len(data) >= self.remaining:
                await self.write(data[:self.remaining])
                self.remaining = 0
                raise _LimitReached
            self.remaining -= len(data)
        await self.write(data)

    async def flush(self) -> None:
        """Whatever unfinished lines are held (the end of a non-follow read)."""
        held, self.held = self.held, {}
        for first, parts, _, went_out in held.values():
            if parts:
                await self._line(first, b"".join(parts), prefix=not went_out)


def tail_offset(path: str, lines: int, streams: tuple[str, ...] = STREAMS) -> int:
    """The file offset where the last `lines` lines (of the given streams) start. A
    line is a run of P records ended by an F record; it is read backwards in chunks,
    so a long log is not read whole."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if lines <= 0:
            return size
        position = size
        carry = b""
        found = 0
        while position > 0:
            step = min(READ_CHUNK, position)
            position -= step
            handle.seek(position)
            block = handle.read(step) + carry
            # Every complete raw line in the block but the first (which may be cut).
            pieces = block.split(b"\n")
            carry = pieces[0]
            offset = position + len(pieces[0]) + 1
            line_starts = []
            for piece in pieces[1:]:
                line_starts.append((offset, piece))
                offset += len(piece) + 1
            for start, piece in reversed(line_starts):
                if _ends_line(piece, streams):
                    found += 1
                    if found > lines:
                        # This F record ends the line before the wanted ones.
                        return start + len(piece) + 1
        if carry and _ends_line(carry, streams):
            found += 1
            if found > lines:
                return len(carry) + 1
        return 0


def _ends_line(raw: bytes, streams: tuple[str, ...]) -> bool:
    if not raw:
        return False
    try:
        record = parse_cri_line(raw)
    except LogFormatError:
        return False
    return not record.partial and record.stream in streams


async def read_logs(path: str, options: LogOptions,
                    write: Callable[[bytes], Awaitable[None]], *,
                    is_running: Callable[[], Awaitable[bool]] | None = None,
                    should_stop: Callable[[], bool] | None = None,
                    poll_interval: float = FOLLOW_POLL_INTERVAL,
                    running_check_interval: float = RUNNING_CHECK_INTERVAL) -> None:
    """Writes the container log at `path` as `options` ask, through `write`.

    With follow, the file is read as it grows until `is_running()` says the container
    has stopped and everything is read, `should_stop()` is true (client gone, server
    stopping), or limitBytes is reached. A rotation (the path now names a new file)
    is followed: the old file is drained first, then the new one is read from its
    start. Records that are not CRI lines are skipped."""
    output = _Output(write)
    writer = _Writer(options, output.add)
    handle = open(path, "rb")
    try:
        if options.tail_lines is not None:
            handle.seek(tail_offset(path, options.tail_lines, options.streams))
        pending = b""        # an incomplete last line, completed by a later read
        last_running_check = 0.0
        container_done = False
        while True:
            chunk = handle.read(READ_CHUNK)
            if chunk:
                pending += chunk
                lines = pending.split(b"\n")
                pending = lines.pop()
                for raw in lines:
                    await _emit(writer, raw)
                continue
            # End of the file as it is now.
            if not options.follow or container_done:
                if pending and not options.follow:
                    await _emit(writer, pending)   # a last line with no newline yet
                await writer.flush()
                await output.flush()
                return
            # What was read goes out before waiting for more.
            await output.flush()
            if should_stop is not None and should_stop():
                return
            rotated = _replaced(handle, path)
            if rotated is not None:
                # Drained the old file above: go on with the new one from its start.
                handle.close()
                handle = rotated
                pending = b""
                continue
            now = time.monotonic()
            if is_running is not None and now - last_running_check >= running_check_interval:
                last_running_check = now
                if not await is_running():
                    # One more pass: what was written before it exited is still read.
                    container_done = True
                    continue
            await asyncio.sleep(poll_interval)
    except _LimitReached:
        await output.flush()
    finally:
        handle.close()


async def _emit(writer: _Writer, raw: bytes) -> None:
    if not raw:
        return
    try:
        record = parse_cri_line(raw)
    except LogFormatError as exc:
        log.debug("skipping a log line: %s", exc)
        return
    await writer.record(record)


def _replaced(handle, path: str):
    """A newly opened file when `path` no longer names the open file (rotated)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return None          # renamed, not reopened yet: the old file still grows
    opened = os.fstat(handle.fileno())
    if (current.st_ino, current.st_dev) == (opened.st_ino, opened.st_dev):
        return None
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


# --- rotation --------------------------------------------------------------------------

def rotated_logs(path: str) -> list[str]:
    """The rotated files of the live log `path` (plain and gzipped), oldest first."""
    folder, base = os.path.split(path)
    prefix = base + "."
    try:
        names = os.listdir(folder or ".")
    except FileNotFoundError:
        return []
    found = [os.path.join(folder, name) for name in names
             if name.startswith(prefix) and not name.endswith(TMP_SUFFIX)]
    # The suffix is a timestamp, so names sort in time order.
    return sorted(found)


def compress_file(path: str) -> str:
    """gzips `path` to `path`.gz (through a .tmp file, so a crash leaves no half file
    under the final name) and removes the original."""
    target = path + COMPRESSED_SUFFIX
    tmp = target + TMP_SUFFIX
    with open(path, "rb") as source, gzip.open(tmp, "wb") as out:
        shutil.copyfileobj(source, out)
    os.rename(tmp, target)
    os.unlink(path)
    return target


class LogRotator:
    """Rotates the logs of running containers by size, as upstream's container log
    manager (containerLogMaxSize / containerLogMaxFiles)."""

    def __init__(self, runtime, max_size: int, max_files: int, *,
                 period: float = ROTATION_PERIOD,
                 clock: Callable[[], datetime.datetime] | None = None):
        if max_files < 2:
            raise ValueError("max_files must be at least 2 (the live log and one rotated)")
        self.runtime = runtime
        self.max_size = max_size
        self.max_files = max_files
        self.period = period
        self.clock = clock or (lambda: datetime.datetime.now())

    async def run(self) -> None:
        """Checks every `period` seconds until cancelled."""
        while True:
            try:
                await self.rotate_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("container log rotation failed")
            await asyncio.sleep(self.period)

    async def rotate_all(self) -> None:
        """One pass over the running containers."""
        state = api.ContainerStateValue(state=api.CONTAINER_RUNNING)
        containers = await self.runtime.list_containers(api.ContainerFilter(state=state))
        for container in containers:
            try:
                await self.rotate_container(container.id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("log rotation of container %s failed: %s", container.id, exc)

    async def rotate_container(self, container_id: str) -> bool:
        """Rotates one container's log when it is over the size. True if rotated."""
        status = await self.runtime.container_status(container_id)
        if status is None or not status.log_path:
            return False
        path = status.log_path
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            # Rotated but not reopened (a failed reopen last time): ask again.
            await self.runtime.reopen_container_log(container_id)
            return False
        # Files rotated before still count against max_files even below the size.
        await asyncio.to_thread(self._cleanup, path)
        if size < self.max_size:
            return False
        target = f"{path}.{self.clock().strftime(ROTATED_SUFFIX_FORMAT)}"
        if os.path.exists(target) or os.path.exists(target + COMPRESSED_SUFFIX):
            return False     # rotated this very second already: next pass
        # Room for the file about to be rotated.
        await asyncio.to_thread(self._remove_excess, path, self.max_files - 2)
        os.rename(path, target)
        try:
            await self.runtime.reopen_container_log(container_id)
        except Exception:
            # containerd still writes the renamed file: put it back.
            try:
                os.rename(target, path)
            except OSError:
                pass
            raise
        await asyncio.to_thread(self._compress_older, path)
        log.info("rotated the log of container %s (%d bytes) to %s", container_id, size,
                 target)
        return True

    def _cleanup(self, path: str) -> None:
        folder, base = os.path.split(path)
        for name in os.listdir(folder or "."):
            if name.startswith(base + ".") and name.endswith(TMP_SUFFIX):
                try:
                    os.unlink(os.path.join(folder, name))
                except FileNotFoundError:
                    pass
        self._remove_excess(path, self.max_files - 1)

    @staticmethod
    def _remove_excess(path: str, keep: int) -> None:
        rotated = rotated_logs(path)
        for old in rotated[:max(0, len(rotated) - keep)]:
            try:
                os.unlink(old)
            except FileNotFoundError:
                pass

    @staticmethod
    def _compress_older(path: str) -> None:
        # The newest rotated file stays plain: containerd may still be flushing into it.
        rotated = [p for p in rotated_logs(path) if not p.endswith(COMPRESSED_SUFFIX)]
        for older in rotated[:-1]:
            try:
                compress_file(older)
            except OSError as exc:
                log.warning("could not compress %s: %s", older, exc)
