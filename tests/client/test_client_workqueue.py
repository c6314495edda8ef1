"""WorkQueue semantics (client-go's util/workqueue): pure, in-process, milliseconds."""
from __future__ import annotations

import asyncio

import pytest

from kubesmith.client.workqueue import (
    BucketRateLimiter,
    ItemExponentialBackoff,
    MaxOfRateLimiter,
    ShutDown,
    WorkQueue,
    default_rate_limiter,
    run_workers,
)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 5))


def test_dedup_and_order():
    async def main():
        queue = WorkQueue()
        for key in ("a", "b", "a", "c", "b"):
            queue.add(key)
        assert len(queue) == 3
        assert [await queue.get() for _ in range(3)] == ["a", "b", "c"]
    run(main())


def test_item_being_processed_is_queued_again_only_when_done():
    async def main():
        queue = WorkQueue()
        queue.add("a")
        item = await queue.get()
        queue.add("a")
        queue.add("a")
        assert len(queue) == 0       # held back: "a" is being processed
        second = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        assert not second.done()
        queue.done(item)
        assert await second == "a"   # once, though added twice
        queue.done("a")
        assert len(queue) == 0
    run(main())


def test_waiting_getters_are_woken_one_per_item():
    async def main():
        queue = WorkQueue()
        getters = [asyncio.create_task(queue.get()) for _ in range(3)]
        await asyncio.sleep(0)
        queue.add("x")
        queue.add("y")
        await asyncio.sleep(0.001)
        assert sorted(t.result() for t in getters if t.done()) == ["x", "y"]
        queue.shutdown()
        results = await asyncio.gather(*getters, return_exceptions=True)
        assert isinstance(results[2], ShutDown)
    run(main())


def test_add_after_keeps_the_earliest_time():
    async def main():
        queue = WorkQueue()
        queue.add_after("k", 10.0)
        queue.add_after("k", 0.001)       # earlier: replaces the first request
        queue.add_after("k", 20.0)        # later: ignored
        queue.add_after("now", 0)
        assert await queue.get() == "now"
        assert await queue.get() == "k"   # in milliseconds, not seconds
        queue.done("k")
        queue.add("k")                    # the replaced timers left nothing queued twice
        assert len(queue) == 1
        queue.shutdown()
    run(main())


def test_exponential_backoff_per_item_and_forget():
    limiter = ItemExponentialBackoff(0.005, 1000.0)
    delays = [limiter.when("a") for _ in range(5)]
    assert delays == pytest.approx([0.005, 0.01, 0.02, 0.04, 0.08])
    assert limiter.when("b") == pytest.approx(0.005)   # per item
    assert limiter.num_requeues("a") == 5
    for _ in range(100):
        limiter.when("a")
    assert limiter.when("a") == 1000.0
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0 and limiter.when("a") == pytest.approx(0.005)


def test_default_limiter_is_the_larger_of_backoff_and_bucket():
    limiter = default_rate_limiter()
    first = [limiter.when(f"item-{n}") for n in range(100)]
    assert max(first) == pytest.approx(0.005)          # burst of 100: backoff decides
    assert limiter.when("one-more") == pytest.approx(0.1, abs=0.01)   # 10 qps now
    both = MaxOfRateLimiter(ItemExponentialBackoff(0.5, 10), BucketRateLimiter(1000, 1000))
    assert both.when("x") == 0.5 and both.num_requeues("x") == 1


def test_add_rate_limited_and_shutdown():
    async def main():
        queue = WorkQueue(ItemExponentialBackoff(0.001, 0.004))
        queue.add_rate_limited("r")
        assert len(queue) == 0
        assert await asyncio.wait_for(queue.get(), 0.5) == "r"
        assert queue.num_requeues("r") == 1
        queue.forget("r")
        assert queue.num_requeues("r") == 0
        queue.done("r")
        queue.add("left")
        queue.add_after("late", 0.001)
        queue.shutdown()
        queue.add("ignored")
        assert await queue.get() == "left"    # what is queued is still handed out
        with pytest.raises(ShutDown):
            await queue.get()
        await asyncio.sleep(0.003)
        assert len(queue) == 0                # the delayed item was dropped
    run(main())


def test_run_workers_retries_failures_and_never_runs_a_key_twice_at_once():
    async def main():
        queue = WorkQueue(ItemExponentialBackoff(0.001, 0.002), name="test")
        running: set[str] = set()
        overlaps, attempts, finished = [], {}, []

        async def handler(key):
            if key in running:
                overlaps.append(key)
            running.add(key)
            try:
                attempts[key] = attempts.get(key, 0) + 1
                if attempts[key] == 1:
                    queue.add(key)          # re-added while being processed
                await asyncio.sleep(0.001)
                if key == "flaky" and attempts[key] < 3:
                    raise RuntimeError("not yet")
                finished.append(key)
            finally:
                running.discard(key)

        queue.add("flaky")
        queue.add("steady")
        workers = asyncio.create_task(run_workers(queue, handler, workers=4))
        for _ in range(500):
            if "flaky" in finished and attempts.get("steady", 0) >= 2:
                break
            await asyncio.sleep(0.001)
        queue.shutdown()
        await workers
        assert overlaps == []
        assert attempts["flaky"] >= 3 and "flaky" in finished
        assert queue.num_requeues("flaky") == 0      # forgotten after success
    run(main())


def test_run_workers_requeues_after_returned_delay_and_stops_on_cancel():
    async def main():
        queue = WorkQueue()
        calls = []

        def handler(key):     # a plain function works too
            calls.append(key)
            return 0.001 if len(calls) < 3 else None

        queue.add("periodic")
        workers = asyncio.create_task(run_workers(queue, handler, workers=2))
        for _ in range(200):
            if len(calls) >= 3:
                break
            await asyncio.sleep(0.001)
        workers.cancel()
        with pytest.raises(asyncio.CancelledError):
            await workers
        assert calls == ["periodic"] * 3 and queue.shutting_down
    run(main())
