"""Continuous batching: one thread owns the target and runs steps; requests join the running
batch between steps (up to `max_batch` at once, the rest wait in a bounded queue) and leave it
when they finish, fail or their client goes away.

A step: every active request adds its rows (a newcomer its prompt, the others their draft tree,
each drafted by the request's own strategy), ONE target forward runs over all of them
(serve/batch.py), and every request verifies its own tree with its own generator. An exception
in one request's drafting or verification fails that request alone; if the shared forward itself
raises, each request's rows are rerun alone so that only the one at fault fails."""
from __future__ import annotations

import collections
import threading
import time
from typing import Sequence

import torch

from compose.composer import Composer
from compose.threads import ThreadPolicy

from .batch import Segment, forward_segments
from .memory import Trimmer
from .slot import Event, RequestError, Slot
from .warmup import WarmUp, report


class QueueFull(RequestError):
    def __init__(self, size: int):
        super().__init__(f"the server's queue is full ({size} requests waiting); retry later", 429, "rate_limit_error")


class ShuttingDown(RequestError):
    def __init__(self):
        super().__init__("the server is shutting down", 503, "server_error")


class StepObserver:
    """What the scheduler reports (serve/metrics.py implements it for Prometheus)."""

    def step(self, batch: int, seconds: float, queued: int) -> None: ...

    def finished(self, slot: Slot) -> None: ...


class BatchTrees:
    """How big each request's top-k tree may be when B requests share a step. Drafting runs per
    request and every drafted node is a row of the shared forward, while plain decoding of B
    requests costs about one forward: past a few requests, batching pays more than speculating
    (vLLM's `speculative_disable_by_batch_size` makes the same call). So: a lone request drafts
    as it asks; up to `draft_max_batch` requests share `row_budget` verified rows per step; past
    that, requests verify their root alone (no drafting). Sampled trees are never cut (see
    serve/slot.py cap_tree), so seeded outputs never depend on the batch."""

    def __init__(self, draft_max_batch: int = 2, row_budget: int = 24):
        if draft_max_batch < 1 or row_budget < 1:
            raise ValueError(f"draft_max_batch and row_budget must be >= 1, got {draft_max_batch}, {row_budget}")
        self.draft_max_batch, self.row_budget = draft_max_batch, row_budget

    def node_cap(self, batch: int) -> int | None:
        """Draft nodes allowed per request (None: no cap; 0: no drafting)."""
        if batch <= 1:
            return None
        if batch > self.draft_max_batch:
            return 0
        return max(0, self.row_budget // batch - 1)


class CachePool:
    """Target KV caches kept for reuse when their request leaves: capacities are rounded up to
    `QUANTUM` positions, so that requests of any length reuse the same few buffer sizes instead
    of allocating (and zero-filling) a new one each, which also keeps the allocator from
    fragmenting the heap under a long run of requests (the server's RSS stays flat)."""

    QUANTUM = 256

    def __init__(self, decoder, keep: int):
        self.decoder, self.keep = decoder, keep
        self._free: list = []

    def _rounded(self, capacity: int) -> int:
        return -(-capacity // self.QUANTUM) * self.QUANTUM

    def get(self, capacity: int):
        capacity = self._rounded(capacity)
        fits = [c for c in self._free if c.capacity >= capacity]
        if fits:
            cache = min(fits, key=lambda c: c.capacity)
            self._free.remove(cache)
            cache.crop(0)
            return cache
        return self.decoder.new_cache(capacity)

    def put(self, cache) -> None:
        if cache is not None and len(self._free) < self.keep:
            self._free.append(cache)

    def fill(self, capacity: int) -> None:
        """Allocate the caches a full batch of requests of up to `capacity` positions needs now,
        not under traffic (serve/warmup.py)."""
        capacity = self._rounded(capacity)
        self._free = [c for c in self._free if c.capacity >= capacity]
        while len(self._free) < self.keep:
            self._free.append(self.decoder.new_cache(capacity))


class Scheduler:
    def __init__(self, composer: Composer, max_batch: int = 8, max_queue: int = 64,
                 observer: StepObserver | None = None, trees: BatchTrees | None = None,
                 warm_up: WarmUp | None = None):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.composer = composer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.observer = observer or StepObserver()
        self.trees = trees or BatchTrees()
        self.threads = ThreadPolicy(composer.threads)
        self.caches = CachePool(composer.target.decoder, keep=max_batch)
        self.trimmer = Trimmer()
        self._waiting: collections.deque[Slot] = collections.deque()
        self._active: list[Slot] = []
        self._wake = threading.Condition()
        self._accepting = True
        self._stop = False
        self.warm_up = warm_up
        self.ready = threading.Event()  # set once the warm-up (if any) is done: /health says so
        self._thread = threading.Thread(target=self._run, name="specmux-scheduler", daemon=True)

    # --- the HTTP side ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.warm_up is None:
            self.ready.set()
        self._thread.start()

    def submit(self, slot: Slot) -> None:
        with self._wake:
            if not self._accepting:
                raise ShuttingDown()
            # in flight: the running batch plus `max_queue` waiting behind it
            if len(self._waiting) + len(self._active) >= self.max_batch + self.max_queue:
                raise QueueFull(len(self._waiting))
            self._waiting.append(slot)
            self._wake.notify()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._active)

    def wake(self) -> None:
        """Let the loop see a cancellation now (an idle loop sleeps until something changes)."""
        with self._wake:
            self._wake.notify()

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Take no more requests; let those in flight finish for up to `drain_seconds`, then
        cancel the rest (their clients get a 503 error) and end the thread."""
        deadline = time.monotonic() + drain_seconds
        with self._wake:
            self._accepting = False
            self._wake.notify()
        while (self._waiting or self._active) and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        for slot in list(self._waiting) + self._active:
            slot.emit(Event("error", error=ShuttingDown()))
        self._waiting.clear()
        self._active.clear()

    def run_until_idle(self) -> None:
        """Serve everything submitted so far in the calling thread (tests and benchmarks drive
        the same loop without the thread; do not mix with `start`)."""
        while self._waiting or self._active:
            self._serve(self._take_waiting())

    def serve_alone(self, slot: Slot) -> None:
        """Run one request to its end in the calling thread, nothing else in the batch, its
        steps and end unreported (the warm-up's requests)."""
        observer, self.observer = self.observer, StepObserver()
        try:
            self._admit(slot)
            while self._active:
                self._serve([])
        finally:
            self.observer = observer

    # --- the scheduler thread ---------------------------------------------------------------------
    def _run(self) -> None:
        if self.warm_up is not None:  # requests that come meanwhile wait in the queue
            try:
                report(self.warm_up.run(self))
            except Exception as e:  # noqa: BLE001 - a failed warm-up costs memory, not correctness
                report(f"warning: warm-up failed ({type(e).__name__}: {e}); serving without it")
            self.ready.set()
        while True:
            with self._wake:
                while not self._stop and not self._waiting and not self._active:
                    self._wake.wait()
                if self._stop:
                    return
                admitted = self._take_waiting()
            self._serve(admitted)

    def _take_waiting(self) -> list[Slot]:
        """Waiting requests that fit the batch, in arrival order (the caller holds the lock where
        one is needed)."""
        admitted = []
        while self._waiting and len(self._active) + len(admitted) < self.max_batch:
            admitted.append(self._waiting.popleft())
        return admitted

    def _serve(self, admitted: list[Slot]) -> None:
        """Admit the newcomers, drop finished or abandoned requests, run one step for the rest."""
        for slot in admitted:
            self._admit(slot)
        self._active = [s for s in self._active if not self._dropped(s)]
        if self._active:
            self.step()

    def _admit(self, slot: Slot) -> None:
        if slot.cancelled:
            slot.finish = "cancelled"
            return
        try:
            with torch.inference_mode():
                slot.setup(self.composer, self.caches.get)
        except Exception as e:  # noqa: BLE001 - a bad request must not stop the loop
            self._fail(slot, e)
            return
        self._active.append(slot)

    def _dropped(self, slot: Slot) -> bool:
        """A request leaves the batch when it finished or its client went away (its cache goes
        back to the pool)."""
        if slot.cancelled and slot.finish is None and not getattr(slot, "failed", False):
            slot.finish = "cancelled"
            self.observer.finished(slot)
        if slot.finish is not None or getattr(slot, "failed", False):
            self.caches.put(getattr(slot, "cache", None))
            slot.cache = None
            self.trimmer.maybe_trim()
            return True
        return False

    def step(self) -> None:
        t0 = time.perf_counter()
        if self.threads.step == 0:
            self.threads.apply()
        slots, segments = [], []
        batch = len(self._active)
        cap = self.trees.node_cap(batch)
        with torch.inference_mode():
            for slot in self._active:
                slot.node_cap, slot.batched = cap, batch
                try:
                    segments.append(slot.segment())
                    slots.append(slot)
                except Exception as e:  # noqa: BLE001
                    self._fail(slot, e)
            t1 = time.perf_counter()
            outputs = self._forward(slots, segments)
            t_forward = time.perf_counter() - t1
            # "auto" threads count the cores others are using. Read them here, after the forward
            # and before this step's text goes out: at a step's start the previous step's text
            # is still being sent (the event loop) and read (a local client), and the reading
            # would take a core from torch for the next RECHECK_STEPS steps for nothing
            self.threads.apply()
            for slot, out in zip(slots, outputs):
                if out is None:
                    continue
                try:
                    slot.consume(out, t_forward)
                except Exception as e:  # noqa: BLE001
                    self._fail(slot, e)
                    continue
                if slot.finish is not None:
                    self.observer.finished(slot)
        self._active = [s for s in self._active if not self._dropped(s)]
        self.observer.step(len(slots), time.perf_counter() - t0, len(self._waiting))

    def _forward(self, slots: list[Slot], segments: list[Segment]) -> Sequence:
        """The shared forward; if it raises, each request's rows alone (caches rolled back first),
        so that only the request at fault fails."""
        if not segments:
            return []
        lengths = [s.cache.length for s in segments]
        try:
            return forward_segments(self.composer.target.decoder, segments)
        except Exception:  # noqa: BLE001
            outputs = []
            for slot, seg, length in zip(slots, segments, lengths):
                seg.cache.crop(min(length, seg.cache.length))
                try:
                    outputs.append(forward_segments(self.composer.target.decoder, [seg])[0])
                except Exception as e:  # noqa: BLE001
                    self._fail(slot, e)
                    outputs.append(None)
            return outputs

    def _fail(self, slot: Slot, error: Exception) -> None:
        slot.failed = True
        if isinstance(error, RequestError):
            err = error
        elif isinstance(error, ValueError) and not slot.prefilled:  # refused before decoding began
            err = RequestError(str(error), 400)
        else:
            err = RequestError(f"decoding failed: {type(error).__name__}: {error}", 500, "server_error")
        slot.error = err
        self.observer.finished(slot)
        slot.emit(Event("error", error=err))

