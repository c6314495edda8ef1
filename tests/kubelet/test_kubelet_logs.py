"""Container logs: the CRI log format read back as /containerLogs serves it (tail, since,
limitBytes, timestamps, streams, follow across a rotation) and size-based rotation,
on plain files with a fake runtime."""
from __future__ import annotations

import asyncio
import datetime
import gzip
import os
import threading
import time

import pytest

from kubesmith.cri import api
from kubesmith.kubelet import logs
from kubesmith.kubelet.logs import (LogOptions, LogOptionsError, LogRotator, parse_cri_line,
                                    parse_log_options, read_logs, tail_offset)

T0 = 1_700_000_000 * 1_000_000_000     # a fixed epoch in nanoseconds


def line(stream: str, text: str, tag: str = "F", at_ns: int = T0) -> str:
    return f"{logs.format_rfc3339(at_ns)} {stream} {tag} {text}\n"


def write_log(path, *lines: str) -> None:
    with open(path, "a") as out:
        out.write("".join(lines))


def read(path, options: LogOptions, **kwargs) -> bytes:
    out = bytearray()

    async def write(data: bytes) -> None:
        out.extend(data)

    asyncio.run(read_logs(str(path), options, write, **kwargs))
    return bytes(out)


# --- format ---------------------------------------------------------------------------

def test_parse_full_and_partial_lines():
    full = parse_cri_line(b"2026-12-04T18:21:28.123456789Z stdout F hello world\n")
    assert (full.stream, full.partial, full.text) == ("stdout", False, b"hello world\n")
    assert full.time_text == "2026-12-04T18:21:28.123456789Z"
    partial = parse_cri_line(b"2026-12-04T18:21:28.5Z stderr P abc")
    assert (partial.stream, partial.partial, partial.text) == ("stderr", True, b"abc")
    # Fewer fraction digits are padded to nine, as RFC3339NanoFixed prints them.
    assert partial.time_text == "2026-12-04T18:21:28.500000000Z"
    assert partial.time_ns - full.time_ns == 500_000_000 - 123_456_789
    empty = parse_cri_line(b"2026-12-04T18:21:28Z stdout F")
    assert empty.text == b"\n"


def test_parse_keeps_the_zone_and_compares_in_utc():
    record = parse_cri_line(b"2026-12-04T20:21:28.000000001+02:00 stdout F x")
    assert record.time_text == "2026-12-04T20:21:28.000000001+02:00"
    utc = parse_cri_line(b"2026-12-04T18:21:28.000000001Z stdout F x")
    assert record.time_ns == utc.time_ns


@pytest.mark.parametrize("bad", [b"", b"nonsense", b"2026-12-04 stdout F x",
                                 b"2026-12-04T18:21:28Z stdin F x"])
def test_parse_rejects_what_is_not_cri(bad):
    with pytest.raises(logs.LogFormatError):
        parse_cri_line(bad)


# --- options --------------------------------------------------------------------------

def test_options_from_the_query():
    options = parse_log_options({"follow": "true", "timestamps": "1", "tailLines": "5",
                                 "limitBytes": "100", "sinceSeconds": "10"}, now_ns=T0)
    assert options.follow and options.timestamps and not options.previous
    assert (options.tail_lines, options.limit_bytes) == (5, 100)
    assert options.since_ns == T0 - 10 * 1_000_000_000
    assert parse_log_options({"tail": "all", "tailLines": "3"}).tail_lines is None
    assert parse_log_options({"tail": "7"}).tail_lines == 7
    since = parse_log_options({"sinceTime": "2026-12-04T18:21:28Z"})
    assert since.since_ns == logs.parse_timestamp(b"2026-12-04T18:21:28Z")[0]
    assert parse_log_options({"stream": "Stderr"}).streams == ("stderr",)


@pytest.mark.parametrize("query,status", [
    ({"tailLines": "x"}, 400), ({"follow": "maybe"}, 400), ({"sinceTime": "yesterday"}, 400),
    ({"tailLines": "-1"}, 422), ({"limitBytes": "0"}, 422), ({"sinceSeconds": "0"}, 422),
    ({"sinceSeconds": "5", "sinceTime": "2026-12-04T18:21:28Z"}, 422),
    ({"stream": "Stdin"}, 422), ({"stream": "Stdout", "tailLines": "1"}, 422),
])
def test_invalid_options(query, status):
    with pytest.raises(LogOptionsError) as caught:
        parse_log_options(query)
    assert caught.value.status == status


# --- reading --------------------------------------------------------------------------

def test_partial_lines_are_joined_and_streams_kept_apart(tmp_path):
    path = tmp_path / "0.log"
    write_log(path, line("stdout", "hel", "P"), line("stderr", "oops"),
              line("stdout", "lo", "P"), line("stdout", " world"), line("stderr", "again"))
    assert read(path, LogOptions()) == b"oops\nhello world\nagain\n"
    assert read(path, LogOptions(streams=("stdout",))) == b"hello world\n"
    assert read(path, LogOptions(streams=("stderr",))) == b"oops\nagain\n"


def test_timestamps_prefix_each_line_once(tmp_path):
    path = tmp_path / "0.log"
    write_log(path, line("stdout", "a", "P", T0), line("stdout", "b", "F", T0 + 5),
              line("stdout", "c", "F", T0 + 7))
    stamp = logs.format_rfc3339
    assert read(path, LogOptions(timestamps=True)) == (
        f"{stamp(T0)} ab\n{stamp(T0 + 7)} c\n".encode())


def test_tail_counts_whole_lines(tmp_path):
    path = tmp_path / "0.log"
    write_log(path, *(line("stdout", f"line {i}") for i in range(5)),
              line("stdout", "long ", "P"), line("stdout", "tail"))
    assert read(path, LogOptions(tail_lines=2)) == b"line 4\nlong tail\n"
    assert read(path, LogOptions(tail_lines=0)) == b""
    assert read(path, LogOptions(tail_lines=100)).count(b"\n") == 6


def test_tail_of_a_file_larger_than_one_read(tmp_path):
    path = tmp_path / "0.log"
    write_log(path, *(line("stdout", f"{i:06d}" + "x" * 200) for i in range(2000)))
    out = read(path, LogOptions(tail_lines=3))
    assert [chunk[:6] for chunk in out.splitlines()] == [b"001997", b"001998", b"001999"]
    assert tail_offset(str(path), 2000) == 0
    assert tail_offset(str(path), 1999) == len(line("stdout", "000000" + "x" * 200))


def test_since_drops_older_records(tmp_path):
    path = tmp_path / "0.log"
    second = 1_000_000_000
    write_log(path, line("stdout", "old", at_ns=T0), line("stdout", "new", at_ns=T0 + 10 * second))
    assert read(path, LogOptions(since_ns=T0 + 5 * second)) == b"new\n"


def test_limit_bytes_cuts_the_output(tmp_path):
    path = tmp_path / "0.log"
    write_log(path, line("stdout", "abcdef"), line("stdout", "ghijkl"))
    assert read(path, LogOptions(limit_bytes=9)) == b"abcdef\ngh"
    assert read(path, LogOptions(limit_bytes=7)) == b"abcdef\n"


def test_lines_that_are_not_cri_are_skipped(tmp_path):
    path = tmp_path / "0.log"
    write_log(path, "garbage\n", line("stdout", "ok"))
    assert read(path, LogOptions()) == b"ok\n"


def test_follow_reads_growth_and_stops_when_the_container_exits(tmp_path):
    path = tmp_path / "0.log"
    write_log(path, line("stdout", "first"))
    running = threading.Event()
    running.set()

    def writer():
        time.sleep(0.3)
        write_log(path, line("stdout", "second"))
        time.sleep(0.3)
        write_log(path, line("stdout", "third"))
        running.clear()

    async def is_running() -> bool:
        return running.is_set()

    thread = threading.Thread(target=writer)
    thread.start()
    started = time.monotonic()
    try:
        out = read(path, LogOptions(follow=True), is_running=is_running,
                   poll_interval=0.02, running_check_interval=0.05)
    finally:
        thread.join()
    assert out == b"first\nsecond\nthird\n"
    assert time.monotonic() - started < 5


def test_follow_goes_on_across_a_rotation(tmp_path):
    path = tmp_path / "0.log"
    write_log(path, line("stdout", "before"))
    running = threading.Event()
    running.set()

    def rotate():
        time.sleep(0.2)
        write_log(path, line("stdout", "last of old"))
        os.rename(path, f"{path}.20261204-182128")
        time.sleep(0.2)
        write_log(path, line("stdout", "in new"))   # the runtime reopened the log
        time.sleep(0.2)
        running.clear()

    async def is_running() -> bool:
        return running.is_set()

    thread = threading.Thread(target=rotate)
    thread.start()
    try:
        out = read(path, LogOptions(follow=True), is_running=is_running,
                   poll_interval=0.02, running_check_interval=0.05)
    finally:
        thread.join()
    assert out == b"before\nlast of old\nin new\n"


def test_follow_stops_when_asked_and_at_the_limit(tmp_path):
    path = tmp_path / "0.log"
    write_log(path, line("stdout", "x"))

    async def is_running() -> bool:
        return True

    stop_at = time.monotonic() + 0.3
    out = read(path, LogOptions(follow=True), is_running=is_running,
               should_stop=lambda: time.monotonic() > stop_at, poll_interval=0.02)
    assert out == b"x\n"
    out = read(path, LogOptions(follow=True, limit_bytes=1), is_running=is_running)
    assert out == b"x"


def test_without_follow_an_unfinished_last_line_is_served(tmp_path):
    path = tmp_path / "0.log"
    write_log(path, line("stdout", "done"), line("stdout", "half").rstrip("\n"))
    assert read(path, LogOptions()) == b"done\nhalf\n"


# --- rotation -------------------------------------------------------------------------

class FakeRuntime:
    """The CRI calls the rotator makes; reopen makes a new empty log, as containerd."""

    def __init__(self, containers: dict[str, str]):
        self.paths = containers
        self.reopened: list[str] = []
        self.fail_reopen = False

    async def list_containers(self, filter=None):
        assert filter.state.state == api.CONTAINER_RUNNING
        return [api.Container(id=cid) for cid in self.paths]

    async def container_status(self, container_id):
        return api.ContainerStatus(id=container_id, log_path=self.paths[container_id])

    async def reopen_container_log(self, container_id):
        if self.fail_reopen:
            raise RuntimeError("reopen failed")
        self.reopened.append(container_id)
        open(self.paths[container_id], "a").close()


class Clock:
    def __init__(self):
        self.now = datetime.datetime(2026, 12, 4, 18, 0, 0)

    def __call__(self):
        self.now += datetime.timedelta(seconds=1)
        return self.now


def test_rotation_by_size_keeps_max_files(tmp_path):
    folder = tmp_path / "default_web_uid" / "web"
    folder.mkdir(parents=True)
    path = folder / "0.log"
    small = tmp_path / "small.log"
    small.write_bytes(b"x" * 10)
    runtime = FakeRuntime({"big": str(path), "small": str(small)})
    rotator = LogRotator(runtime, max_size=100, max_files=3, clock=Clock())
    for round_ in range(5):
        path.write_bytes(f"{round_}".encode() * 150)
        asyncio.run(rotator.rotate_all())
    assert runtime.reopened == ["big"] * 5
    rotated = logs.rotated_logs(str(path))
    # The live log plus max_files - 1 rotated ones; all but the newest compressed.
    assert len(rotated) == 2
    assert rotated[0].endswith(".gz") and not rotated[1].endswith(".gz")
    assert os.path.basename(rotated[1]) == "0.log.20261204-180005"
    assert open(rotated[1], "rb").read() == b"4" * 150
    assert gzip.open(rotated[0]).read() == b"3" * 150
    assert path.stat().st_size == 0
    assert small.stat().st_size == 10 and logs.rotated_logs(str(small)) == []


def test_a_failed_reopen_puts_the_log_back(tmp_path):
    path = tmp_path / "0.log"
    path.write_bytes(b"y" * 200)
    runtime = FakeRuntime({"c": str(path)})
    runtime.fail_reopen = True
    rotator = LogRotator(runtime, max_size=100, max_files=2, clock=Clock())
    with pytest.raises(RuntimeError):
        asyncio.run(rotator.rotate_container("c"))
    assert path.stat().st_size == 200 and logs.rotated_logs(str(path)) == []


def test_a_missing_log_is_reopened(tmp_path):
    runtime = FakeRuntime({"c": str(tmp_path / "0.log")})
    rotator = LogRotator(runtime, max_size=100, max_files=2)
    assert asyncio.run(rotator.rotate_container("c")) is False
    assert runtime.reopened == ["c"]


def test_run_survives_failures_and_stops_on_cancel(tmp_path):
    class Broken(FakeRuntime):
        calls = 0

        async def list_containers(self, filter=None):
            Broken.calls += 1
            raise RuntimeError("runtime down")

    rotator = LogRotator(Broken({}), max_size=1, max_files=2, period=0.01)

    async def main():
        task = asyncio.create_task(rotator.run())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert Broken.calls >= 2


def test_a_line_too_long_to_hold_goes_out_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "MAX_HELD_LINE", 8)
    path = tmp_path / "0.log"
    write_log(path, line("stdout", "aaaaa", "P", T0), line("stdout", "bbbbb", "P", T0 + 1),
              line("stdout", "cc", "P", T0 + 2), line("stdout", "d", "F", T0 + 3))
    assert read(path, LogOptions(timestamps=True)) == (
        f"{logs.format_rfc3339(T0)} aaaaabbbbbccd\n".encode())


def test_output_goes_out_in_batches(tmp_path):
    path = tmp_path / "0.log"
    write_log(path, *(line("stdout", f"{i:05d}" + "y" * 100) for i in range(3000)))
    writes: list[int] = []

    async def write(data: bytes) -> None:
        writes.append(len(data))

    asyncio.run(read_logs(str(path), LogOptions(), write))
    assert sum(writes) == 3000 * 106
    assert len(writes) < 10       # not one write per line
