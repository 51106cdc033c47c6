"""Dynamic batching: one asyncio worker per model merges concurrent requests into one forward pass.

A request is ``Work(payload, size, key)``. The worker takes the oldest request, then keeps taking
requests with the same ``key`` (compatible settings: same sampler and steps, say) until the batch
holds ``max_batch_size`` items or ``max_wait_ms`` has passed since the oldest one arrived, and runs
``run_batch(payloads) -> results`` in a thread so the event loop keeps answering. A ``key`` of None
means "never merge". Requests of other keys wait in arrival order for the next batch.

The wait is counted from the oldest request's arrival (as Triton's ``max_queue_delay``), not from
when the worker got free: requests that queued up behind a running batch have already waited, so
under load the next batch starts the moment the model is free, and ``max_wait_ms`` only delays a
request that arrived at an idle model. ``max_wait_ms=0`` is greedy batching: never wait, merge
whatever queued while the model was busy.

The wait is also bounded by ``wait_fraction`` of the model's recent forward time (a running
average, measured once the first batch has run): a request never waits longer for company than a
quarter (by default) of what serving it costs. A fixed 10 ms is nothing to a 150 ms diffusion
sampler but would quadruple the latency of a 4 ms GAN forward pass (the README's serving section
has the measured effect on both). ``wait_fraction=None`` turns the bound off.

The queue is bounded: past ``queue_size`` waiting requests, ``submit`` raises ``QueueFull`` at once
(the server answers 503 with Retry-After) instead of letting latency grow without limit.

A cancelled ``submit`` (its client hung up) leaves the queue at once; if its batch is already
running, ``run_batch`` may raise ``Cancelled`` to stop early, which ends that batch like any error.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional, Sequence

log = logging.getLogger("genforge.serve")


class Cancelled(Exception):
    """Raised inside ``run_batch`` (from a per-step callback) when every caller of the batch left."""


class QueueFull(Exception):
    def __init__(self, model: str, depth: int, retry_after: float):
        super().__init__(f"model {model!r} has {depth} requests waiting; try again shortly")
        self.retry_after = retry_after


@dataclass
class Work:
    payload: Any
    size: int
    key: Optional[Hashable]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, name: str, run_batch: Callable[[Sequence[Any]], Sequence[Any]], *,
                 max_batch_size: int = 16, max_wait_ms: float = 10.0, wait_fraction: Optional[float] = 0.25,
                 queue_size: int = 64, executor: Optional[Executor] = None, metrics: Any = None):
        self.name, self.run_batch = name, run_batch
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
        self.wait_fraction = wait_fraction
        self.queue_size, self.executor, self.metrics = queue_size, executor, metrics
        self._waiting: collections.deque[Work] = collections.deque()
        self._wakeup: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._avg_batch_s: Optional[float] = None  # running average of forward time; None until measured

    @property
    def wait_s(self) -> float:
        """How long a lone request waits for company now (see the module docstring)."""
        if self.wait_fraction is None or self._avg_batch_s is None:
            return self.max_wait
        return min(self.max_wait, self.wait_fraction * self._avg_batch_s)

    @property
    def depth(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for w in self._waiting:
            if not w.future.done():
                w.future.set_exception(RuntimeError("server shutting down"))
        self._waiting.clear()

    async def submit(self, payload: Any, size: int = 1, key: Optional[Hashable] = None,
                     force: bool = False) -> Any:
        """Queue one request and wait for its result. ``force`` skips the bound (background jobs,
        which must not be refused after they were accepted)."""
        if self._task is None or self._wakeup is None:
            raise RuntimeError("batcher not started")
        if not force and self.depth >= self.queue_size:
            if self.metrics is not None:
                self.metrics.rejected.labels(self.name).inc()
            avg = 0.5 if self._avg_batch_s is None else self._avg_batch_s
            raise QueueFull(self.name, self.depth, avg * (1 + self.depth / self.max_batch_size))
        work = Work(payload, size, key, asyncio.get_running_loop().create_future())
        self._waiting.append(work)
        self._gauge()
        self._wakeup.set()
        try:
            return await work.future
        except asyncio.CancelledError:  # the caller left: its place in the queue goes to the next one
            try:
                self._waiting.remove(work)
            except ValueError:
                pass  # already taken into a batch, which skips it or stops at its next step
            self._gauge()
            raise

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.name).set(self.depth)

    def _take_compatible(self, batch: list[Work], total: int) -> int:
        """Move waiting requests that fit the batch from the queue into it, in arrival order."""
        head = batch[0]
        if head.key is None:
            return total
        keep: collections.deque[Work] = collections.deque()
        while self._waiting:
            w = self._waiting.popleft()
            if w.future.cancelled():
                continue
            if w.key == head.key and total + w.size <= self.max_batch_size:
                batch.append(w)
                total += w.size
            else:
                keep.append(w)
        self._waiting = keep
        return total

    async def _next_batch(self) -> list[Work]:
        assert self._wakeup is not None
        while True:
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            head = self._waiting.popleft()
            if not head.future.cancelled():
                break
        batch, total = [head], head.size
        total = self._take_compatible(batch, total)
        deadline = head.enqueued + self.wait_s
        while head.key is not None and total < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
            total = self._take_compatible(batch, total)
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            self._gauge()
            batch = [w for w in batch if not w.future.cancelled()]
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch,
                                                     [w.payload for w in batch])
            except Exception as e:  # the whole batch failed: every caller sees the error
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(e)
                continue
            elapsed = time.perf_counter() - start
            self._avg_batch_s = elapsed if self._avg_batch_s is None else 0.8 * self._avg_batch_s + 0.2 * elapsed
            if self.metrics is not None:
                self.metrics.batch_images.labels(self.name).observe(sum(w.size for w in batch))
                self.metrics.batch_requests.labels(self.name).observe(len(batch))
                self.metrics.inference.labels(self.name).observe(elapsed)
            for w, r in zip(batch, results):
                if not w.future.done():
                    w.future.set_result(r)
