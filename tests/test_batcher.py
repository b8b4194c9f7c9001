"""The Batcher contract: results to the right callers, failures to every caller, bounded, closable, timed."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from model_svc.batcher import Batcher, BatcherClosed, DeadlineExpired
from sentiment.errors import Overloaded


class Recorder:
    """A batch function that records its batches and can hold the inference thread until released."""

    def __init__(self, fail: Exception | None = None, wrong_length: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail
        self.wrong_length = wrong_length
        self.release = threading.Event()
        self.release.set()
        self.loop = asyncio.get_running_loop()
        self.started = asyncio.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.loop.call_soon_threadsafe(self.started.set)
        self.release.wait(timeout=10)
        if self.fail is not None:
            raise self.fail
        results = [item * 10 for item in items]
        return results[:-1] if self.wrong_length else results


async def test_results_go_to_the_right_callers() -> None:
    fn = Recorder()
    batcher: Batcher[int, int] = Batcher(fn, max_batch_size=16, max_wait_s=0.01)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(100)))
    many = await batcher.submit_many([1000, 2000, 3000])
    await batcher.aclose()
    assert results == [i * 10 for i in range(100)]
    assert many == [10000, 20000, 30000]
    assert max(len(b) for b in fn.batches) > 1, "concurrent items were gathered into batches"
    assert all(len(b) <= 16 for b in fn.batches)
    assert sorted(i for b in fn.batches for i in b) == [*range(100), 1000, 2000, 3000]


async def test_a_failing_batch_fails_each_of_its_callers() -> None:
    batcher: Batcher[int, int] = Batcher(Recorder(fail=ValueError("model broke")), 8, 0.01)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(o, ValueError) and "model broke" in str(o) for o in outcomes)
    await batcher.aclose()


async def test_a_wrong_number_of_results_fails_the_batch() -> None:
    batcher: Batcher[int, int] = Batcher(Recorder(wrong_length=True), 8, 0.01)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) and "2 results for 3 items" in str(o) for o in outcomes)
    await batcher.aclose()


async def test_close_fails_the_pending_callers_and_refuses_new_ones() -> None:
    fn = Recorder()
    fn.release.clear()
    batcher: Batcher[int, int] = Batcher(fn, max_batch_size=1, max_wait_s=0.0)
    running = asyncio.ensure_future(batcher.submit(1))
    await asyncio.wait_for(fn.started.wait(), 5)  # item 1 holds the inference thread
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3)]
    closing = asyncio.ensure_future(batcher.aclose(drain=False))
    done, _ = await asyncio.wait(queued, timeout=5)
    assert done == set(queued)
    assert all(isinstance(f.exception(), BatcherClosed) for f in queued)
    with pytest.raises(BatcherClosed):
        await batcher.submit(4)
    fn.release.set()
    assert await running == 10, "the batch already running finishes"
    await asyncio.wait_for(closing, 5)
    assert fn.batches == [[1]]


async def test_close_with_drain_runs_what_is_queued() -> None:
    fn = Recorder()
    batcher: Batcher[int, int] = Batcher(fn, max_batch_size=4, max_wait_s=10.0)
    pending = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0)  # let them enqueue; the batch is not full, so it waits for max_wait_s
    await asyncio.wait_for(batcher.aclose(drain=True), 5)
    assert [f.result() for f in pending] == [0, 10, 20]


async def test_max_wait_is_honoured() -> None:
    fn = Recorder()
    batcher: Batcher[int, int] = Batcher(fn, max_batch_size=3, max_wait_s=0.3)
    first = asyncio.ensure_future(batcher.submit(1))
    done, _ = await asyncio.wait([first], timeout=0.1)
    assert not done, "a lone item waits for companions up to max_wait_s"
    second = asyncio.ensure_future(batcher.submit(2))
    started = time.monotonic()
    done, _ = await asyncio.wait([first, second], timeout=5)
    assert done == {first, second}
    assert time.monotonic() - started < 1.0
    assert fn.batches == [[1, 2]], "items submitted within max_wait_s share a batch"

    # A full batch does not wait at all.
    slow: Batcher[int, int] = Batcher(fn, max_batch_size=3, max_wait_s=30.0)
    full = [asyncio.ensure_future(slow.submit(i)) for i in (7, 8, 9)]
    done, _ = await asyncio.wait(full, timeout=5)
    assert done == set(full)
    assert fn.batches[-1] == [7, 8, 9]
    await batcher.aclose()
    await slow.aclose()


async def test_sparse_callers_do_not_wait_for_companions() -> None:
    fn = Recorder()
    batcher: Batcher[int, int] = Batcher(fn, max_batch_size=8, max_wait_s=0.1)
    for i in range(5):  # one caller at a time, twice max_wait_s apart
        done = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, done.set)
        await done.wait()
        await batcher.submit(i)
    started = time.monotonic()
    assert await batcher.submit(99) == 990
    assert time.monotonic() - started < 0.1, "arrivals this sparse gather nobody: no wait"
    assert all(len(b) == 1 for b in fn.batches)
    await batcher.aclose()


async def test_admission_is_bounded() -> None:
    fn = Recorder()
    fn.release.clear()
    batcher: Batcher[int, int] = Batcher(fn, max_batch_size=2, max_wait_s=0.0, max_queued=3)
    admitted = asyncio.ensure_future(batcher.submit_many([1, 2]))
    await asyncio.wait_for(fn.started.wait(), 5)
    with pytest.raises(Overloaded, match="limit of 3"):
        await batcher.submit_many([3, 4])  # 2 in flight + 2 > 3: refused at once, whole
    third = asyncio.ensure_future(batcher.submit(3))  # 2 + 1 fits
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await batcher.submit(5)
    fn.release.set()
    assert await admitted == [10, 20]
    assert await third == 30
    await batcher.aclose()


async def test_an_item_past_its_deadline_is_not_computed() -> None:
    fn = Recorder()
    fn.release.clear()
    batcher: Batcher[int, int] = Batcher(fn, max_batch_size=1, max_wait_s=0.0)
    holder = asyncio.ensure_future(batcher.submit(1))
    await asyncio.wait_for(fn.started.wait(), 5)
    late = asyncio.ensure_future(batcher.submit(2, deadline=time.monotonic() + 0.05))
    on_time = asyncio.ensure_future(batcher.submit(3, deadline=time.monotonic() + 60))
    done, _ = await asyncio.wait([late], timeout=0.2)  # its deadline passes while the thread is busy
    assert not done
    fn.release.set()
    with pytest.raises(DeadlineExpired):
        await late
    assert await holder == 10
    assert await on_time == 30
    assert fn.batches == [[1], [3]]
    await batcher.aclose()


async def test_a_submission_stays_whole_and_a_large_one_runs_in_chunks() -> None:
    fn = Recorder()
    batcher: Batcher[int, int] = Batcher(fn, max_batch_size=4, max_wait_s=0.0)
    small = [asyncio.ensure_future(batcher.submit_many([10 * k + i for i in range(3)])) for k in range(3)]
    large = asyncio.ensure_future(batcher.submit_many(list(range(100, 110))))
    assert [await f for f in small] == [[100 * k + 10 * i for i in range(3)] for k in range(3)]
    assert await large == [10 * i for i in range(100, 110)]
    await batcher.aclose()
    assert [len(b) for b in fn.batches[:3]] == [3, 3, 3], "three items each: two never fit in four"
    assert fn.batches[3:] == [[100, 101, 102, 103], [104, 105, 106, 107], [108, 109]]


async def test_callers_served_together_are_gathered_again_without_waiting_out_max_wait() -> None:
    fn = Recorder()
    batcher: Batcher[int, int] = Batcher(fn, max_batch_size=32, max_wait_s=30.0)
    round_one = [asyncio.ensure_future(batcher.submit_many([i] * 8)) for i in range(4)]  # 32: full, at once
    done, _ = await asyncio.wait(round_one, timeout=5)
    assert done == set(round_one)
    fn.batches.clear()
    # The same four callers come back, short of a full batch: the batch waits for the fourth, not 30 s.
    round_two = [asyncio.ensure_future(batcher.submit_many([i] * 4)) for i in range(3)]
    done, _ = await asyncio.wait(round_two, timeout=0.1)
    assert not done, "three of last round's four callers are back: the batch waits for the fourth"
    round_two.append(asyncio.ensure_future(batcher.submit_many([3] * 4)))
    done, _ = await asyncio.wait(round_two, timeout=5)
    assert done == set(round_two)
    assert fn.batches == [[0] * 4 + [1] * 4 + [2] * 4 + [3] * 4]
    await batcher.aclose()
