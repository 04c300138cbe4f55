"""Prometheus metrics of one server (its own registry, so several servers in one process, as in
the tests, do not collide). Updated from the HTTP side (requests, status codes, latency) and from
the scheduler thread (steps, batch size, queue, per-request acceptance); prometheus_client's
metrics are thread-safe."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .scheduler import StepObserver
from .slot import Slot

TAU_BUCKETS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 5.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0, 120.0)


class ServeMetrics(StepObserver):
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("specmux_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("specmux_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.completion_tokens = Counter("specmux_completion_tokens", "tokens generated", registry=r)
        self.drafted = Counter("specmux_drafted_tokens", "draft tokens sent to verification", registry=r)
        self.accepted = Counter("specmux_accepted_tokens", "draft tokens accepted by verification", registry=r)
        self.tau = Histogram("specmux_request_tau", "per request: tokens emitted per target forward (bonus counted)",
                             buckets=TAU_BUCKETS, registry=r)
        self.finished_requests = Counter("specmux_finished_requests", "requests leaving the batch", ["reason"],
                                         registry=r)
        self.queue = Gauge("specmux_queue_length", "requests waiting for a place in the batch", registry=r)
        self.batch = Gauge("specmux_batch_size", "requests in the last step's forward", registry=r)
        self.step_seconds = Histogram("specmux_step_seconds", "one step: drafting, the shared forward, verification",
                                      buckets=STEP_BUCKETS, registry=r)
        self.latency = Histogram("specmux_request_seconds", "request latency, arrival to last byte",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)

    # --- scheduler thread -------------------------------------------------------------------------
    def step(self, batch: int, seconds: float, queued: int) -> None:
        self.batch.set(batch)
        self.queue.set(queued)
        self.step_seconds.observe(seconds)

    def finished(self, slot: Slot) -> None:
        reason = "error" if getattr(slot, "failed", False) else slot.finish or "unknown"
        self.finished_requests.labels(reason).inc()
        stats = getattr(slot, "stats", None)
        if stats is None:  # never admitted
            return
        usage = slot.usage()
        self.prompt_tokens.inc(usage["prompt_tokens"])
        self.completion_tokens.inc(usage["completion_tokens"])
        self.drafted.inc(usage["drafted"])
        self.accepted.inc(usage["accepted"])
        if usage["steps"]:
            self.tau.observe(usage["tau"])

    # --- HTTP side --------------------------------------------------------------------------------
    def answered(self, endpoint: str, status: int, seconds: float | None = None) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if seconds is not None:
            self.latency.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
