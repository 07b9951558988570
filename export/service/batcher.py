"""Micro-batching of concurrent requests (asyncio, standard library only).

Concurrent callers :meth:`MicroBatcher.submit` one item each; a single worker task takes the
first waiting item, then collects more until ``max_batch`` are in hand or ``max_wait_s`` has
passed since the first, and runs ``process(items)`` on them in a thread, so that the event loop
keeps accepting requests meanwhile. While a batch runs, new items wait in the queue: under load
the next batch is taken at once and is as large as the load makes it (up to ``max_batch``), so one
model call serves many callers. This is the adaptive batching of Clipper (Crankshaw et al., "Clipper:
A Low-Latency Online Prediction Serving System", NSDI 2017) with a fixed batch bound.

Bounds, so that no caller waits without limit:

- the queue holds at most ``queue_size`` items: a caller arriving at a full queue gets
  :class:`QueueFullError` at once;
- each item has a deadline (``timeout_s`` of :meth:`MicroBatcher.submit`): :class:`DeadlineError`
  when its answer is not ready by then; an item whose deadline passed while it was queued is
  dropped unprocessed;
- :meth:`MicroBatcher.stop` answers every queued and running item with :class:`ClosedError`.

``process`` returns one result per item, in order; a result that is an ``Exception`` instance is
raised to that item's caller only. An exception raised by ``process`` itself goes to every caller
of the batch.
"""

import asyncio
import contextlib
import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor


class BatcherError(Exception):
    """The batcher could not answer in time: the service is overloaded or stopping (HTTP 503)."""


class QueueFullError(BatcherError):
    """``queue_size`` items are waiting already."""


class DeadlineError(BatcherError):
    """The item's answer was not ready by its deadline."""


class ClosedError(BatcherError):
    """The batcher is not running (not started yet, or stopped)."""


def check_number(name, value, minimum, above=False, integer=False):
    """``ValueError`` naming ``name`` unless ``value`` is a finite number (an int with ``integer``)
    >= ``minimum`` (> with ``above``)."""
    kinds = int if integer else (int, float)
    number = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < minimum or (above and value == minimum):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind} {'>' if above else '>='} {minimum}, got {value!r}")


@dataclasses.dataclass
class BatchStats:
    """Counters since start; read by the event loop, written by the worker (plain ints)."""

    submitted: int = 0  # items accepted into the queue
    processed: int = 0  # items handed to ``process``
    batches: int = 0  # calls of ``process``
    largest_batch: int = 0
    rejected: int = 0  # refused: the queue was full
    deadline_exceeded: int = 0  # callers answered with DeadlineError
    dropped: int = 0  # items whose deadline passed while queued (never processed)

    def to_dict(self):
        mean = self.processed / self.batches if self.batches else 0.0
        return {**dataclasses.asdict(self), "mean_batch": round(mean, 3)}


@dataclasses.dataclass
class _Waiting:
    item: object
    future: asyncio.Future
    deadline: float  # loop.time() after which nobody waits for the answer


class MicroBatcher:
    """Collects concurrent :meth:`submit` calls into batches for ``process`` (see the module doc).

    Args:
        process: ``items -> results``, one result per item (an ``Exception`` instance fails that
            item alone); runs in the batcher's own thread, one batch at a time.
        max_batch: most items per batch.
        max_wait_s: longest wait, after the first item of a batch, for more (0: take only what
            is queued already).
        queue_size: most items waiting; more are refused with :class:`QueueFullError`.
    """

    def __init__(self, process, max_batch=64, max_wait_s=0.002, queue_size=1024):
        check_number("max_batch", max_batch, minimum=1, integer=True)
        check_number("max_wait_s", max_wait_s, minimum=0)
        check_number("queue_size", queue_size, minimum=1, integer=True)
        self.process = process
        self.max_batch, self.max_wait_s, self.queue_size = max_batch, float(max_wait_s), queue_size
        self.stats = BatchStats()
        self._queue = None
        self._worker = None
        self._running = []  # the batch ``process`` is working on
        self._executor = None

    @property
    def running(self):
        return self._worker is not None and not self._worker.done()

    @property
    def queued(self):
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self):
        """Start the worker task on the running event loop."""
        if self.running:
            raise RuntimeError("the batcher is running already")
        self._queue = asyncio.Queue(self.queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="micro-batch")
        self._worker = asyncio.create_task(self._work(), name="micro-batcher")

    async def stop(self):
        """Stop the worker; every queued or running item's caller gets :class:`ClosedError`."""
        if self._worker is None:
            return
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        waiting = list(self._running)
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for entry in waiting:
            if not entry.future.done():
                entry.future.set_exception(ClosedError("the service is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)  # a running batch ends on its own
        self._worker, self._running = None, []

    async def submit(self, item, timeout_s):
        """``process``'s result for ``item``, batched with concurrent calls.

        Raises :class:`QueueFullError`, :class:`DeadlineError` (no result within ``timeout_s``
        seconds), :class:`ClosedError`, or the exception ``process`` gave for this item.
        """
        if not self.running:
            raise ClosedError("the service is not running")
        loop = asyncio.get_running_loop()
        entry = _Waiting(item, loop.create_future(), loop.time() + timeout_s)
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.stats.rejected += 1
            raise QueueFullError(f"{self.queue_size} requests are waiting already; retry later") from None
        self.stats.submitted += 1
        try:
            return await asyncio.wait_for(entry.future, timeout_s)  # cancels the future on timeout
        except asyncio.TimeoutError:
            self.stats.deadline_exceeded += 1
            raise DeadlineError(f"no answer within the deadline of {timeout_s * 1000:g} ms") from None

    async def _collect(self, loop):
        """The next batch: the first queued item, then up to ``max_batch`` within ``max_wait_s``."""
        batch = [await self._queue.get()]
        collect_until = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            with contextlib.suppress(asyncio.QueueEmpty):
                batch.append(self._queue.get_nowait())  # what is queued already costs no wait
                continue
            remaining = collect_until - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
                break
        return batch

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(loop)
            now = loop.time()
            live = [entry for entry in batch if not entry.future.done() and entry.deadline > now]
            self.stats.dropped += len(batch) - len(live)
            if not live:
                continue
            self._running = live  # stop() answers these if it cancels the wait below
            try:
                results = await loop.run_in_executor(self._executor, self.process, [entry.item for entry in live])
                if len(results) != len(live):
                    raise RuntimeError(f"process returned {len(results)} results for {len(live)} items")
            except Exception as error:  # noqa: BLE001 - the batch failed as a whole: each caller is told
                results = [error] * len(live)
            self._running = []
            self.stats.batches += 1
            self.stats.processed += len(live)
            self.stats.largest_batch = max(self.stats.largest_batch, len(live))
            for entry, result in zip(live, results):
                if entry.future.done():  # its caller gave up (deadline) meanwhile
                    continue
                if isinstance(result, Exception):
                    entry.future.set_exception(result)
                else:
                    entry.future.set_result(result)
