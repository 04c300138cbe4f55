"""The server's warm-up (serve/warmup.py): after it, serving meets no matmul shape it has not run
(what keeps the server's memory flat: runtime/prepacked.py bucket); warm-up requests are not
traffic (metrics untouched); /health says 503 until it is done; a non-streaming request is sent
no text events."""
from __future__ import annotations

import copy
import threading

import httpx
import pytest
import torch
from torch import nn

from runtime import native_layer, native_linear, prepacked
from serve.scheduler import Scheduler
from serve.slot import new_slot
from serve.warmup import WarmUp
from test_serve_batch import TARGET, Collector, composer


def _native_caches_clear():
    """Forget the loaded linear kernels and the compiled layers built on them: a compiled layer
    looked up while the linears are switched off is remembered as absent (a later test in the
    process then found no float32 layer: 2026-12-06, CI seed 2194276558)."""
    native_linear.linear_kernel.cache_clear()
    native_linear.amx_ready.cache_clear()
    native_layer.layer_kernel.cache_clear()
    native_layer.f32_layer_kernel.cache_clear()


@pytest.fixture
def shapes_run(monkeypatch):
    """Every (packed weight shape, dtype, bias, rows) oneDNN's packed kernel runs from now on:
    single linears, the fast decoder's fused ones (runtime/plan.py) and the warm-up's own. Our
    own linear kernels (runtime/native_linear.py) keep no per-shape state and are switched off
    here, so that every weight packed in the test is oneDNN's."""
    seen: set[tuple] = set()
    kernel = prepacked._kernel

    def spy(rows, packed, bias):
        seen.add((tuple(packed.shape), packed.dtype, bias is not None, rows.shape[0]))
        return kernel(rows, packed, bias)

    monkeypatch.setattr(prepacked, "_kernel", spy)
    # weights other tests packed (on our kernels) are packed afresh, on oneDNN's
    monkeypatch.setattr(prepacked, "_PACKED", {})
    monkeypatch.setattr(prepacked, "_GROUPS", {})
    monkeypatch.setenv(native_linear.SWITCH, "0")
    _native_caches_clear()
    yield seen
    monkeypatch.undo()
    _native_caches_clear()


@pytest.mark.skipif(not prepacked.enabled(), reason="this torch has no oneDNN packed linear")
def test_warm_shapes_runs_every_shape_later_matmuls_meet(shapes_run, monkeypatch):
    # only this test's weights: other tests' models may still be alive in the shared tables
    monkeypatch.setattr(prepacked, "_PACKED", {})
    monkeypatch.setattr(prepacked, "_GROUPS", {})
    torch.manual_seed(0)
    layers = [nn.Linear(24, 40), nn.Linear(40, 24, bias=False), nn.Linear(24, 40)]  # two of one shape
    with torch.inference_mode():
        for layer in layers:
            prepacked.linear(layer, torch.randn(3, layer.in_features))  # packed on first use
        shapes_run.clear()
        assert prepacked.warm_shapes(300) == 2 * len(prepacked.row_sizes(300))  # one weight per shape
        warmed = set(shapes_run)
        assert warmed  # oneDNN's kernel ran
        shapes_run.clear()
        for rows in (1, 2, 5, 17, 64, 65, 81, 127, 129, 200, 300):
            for layer in layers:
                prepacked.linear(layer, torch.randn(rows, layer.in_features))
    assert shapes_run <= warmed
    with torch.inference_mode():
        prepacked.linear(layers[0], torch.randn(1000, 24))  # past max_rows: still whole tiles of ROW_TILE rows
    assert shapes_run <= warmed


@pytest.mark.skipif(not prepacked.enabled(), reason="this torch has no oneDNN packed linear")
def test_serving_after_the_warm_up_meets_no_new_matmul_shape(shapes_run):
    c = composer(copy.deepcopy(TARGET))  # a target whose fast decoder is planned here, on oneDNN's weights
    scheduler = Scheduler(c, max_batch=4, max_queue=16, warm_up=WarmUp(max_rows=128, new_tokens=4))
    report = scheduler.warm_up.run(scheduler)
    assert "2 requests" in report  # the default strategy and autoregressive
    warmed = set(shapes_run)
    shapes_run.clear()
    for i in range(8):  # strategies, prompt lengths and batches the warm-up never ran
        strategy = ("autoregressive", "merged_tree", "confidence", "single")[i % 4]
        options = dict(max_new_tokens=6, tree=dict(depth=3, top_k=2, budget=5))
        if strategy == "single":
            options["drafter"] = "lm"
        scheduler.submit(new_slot(c, list(range(1, 3 + 3 * i)), strategy, Collector(), options))
    scheduler.run_until_idle()
    assert shapes_run and shapes_run <= warmed


def test_warm_up_requests_are_not_traffic_and_health_waits_for_them(monkeypatch):
    from serve.app import ServerConfig, create_app
    from serve.cli import serve_in_thread

    gate, original = threading.Event(), WarmUp.run
    monkeypatch.setattr(WarmUp, "run", lambda self, scheduler: gate.wait(60) and original(self, scheduler))
    app = create_app(composer(), ServerConfig(model_name="tiny", warmup_rows=32))
    with serve_in_thread(app) as url:
        root = url.removesuffix("/v1")
        waiting = httpx.get(root + "/health")
        assert waiting.status_code == 503 and waiting.json()["status"] == "warming up"
        gate.set()
        assert app.state.scheduler.ready.wait(60)
        assert httpx.get(root + "/health").json()["status"] == "ok"
        metrics = httpx.get(root + "/metrics").text
    finished = [line for line in metrics.splitlines() if line.startswith("specmux_finished_requests_total")]
    assert finished == []  # two warm-up requests ran, none of them counted


def test_a_failing_warm_up_is_reported_and_the_server_still_serves(monkeypatch, capsys):
    def broken(self, scheduler):
        raise RuntimeError("no kernels today")

    monkeypatch.setattr(WarmUp, "run", broken)
    c = composer()
    scheduler = Scheduler(c, warm_up=WarmUp(16))
    scheduler.start()
    try:
        assert scheduler.ready.wait(60)
        sink = Collector()
        scheduler.submit(new_slot(c, [1, 2, 3], "autoregressive", sink, dict(max_new_tokens=3)))
        for _ in range(600):
            if sink.events and sink.events[-1].kind in ("done", "error"):
                break
            threading.Event().wait(0.05)
        assert sink.events[-1].kind == "done"
    finally:
        scheduler.stop(drain_seconds=1)
    assert "warning: warm-up failed (RuntimeError: no kernels today)" in capsys.readouterr().err


def test_a_non_streaming_request_is_sent_only_its_end(tmp_path):
    from compose import Composer
    from eval_helpers import tiny_target_folder

    c = Composer(tiny_target_folder(tmp_path), threads=1)  # with a tokenizer: the requests have text
    scheduler = Scheduler(c)
    slots, sinks = [], (Collector(), Collector())
    for sink, stream in zip(sinks, (True, False)):
        slots.append(new_slot(c, "Name three colours.", "autoregressive", sink, dict(max_new_tokens=8), stream=stream))
        scheduler.submit(slots[-1])
    scheduler.run_until_idle()
    streamed, whole = sinks
    assert slots[0].text == slots[1].text != ""
    assert [e.kind for e in whole.events] == ["done"]
    assert "".join(e.text for e in streamed.events if e.kind == "text") == slots[0].text
    assert streamed.events[-1].kind == "done"


def test_the_warm_up_fills_the_cache_pool_for_a_full_batch():
    c = composer()
    scheduler = Scheduler(c, max_batch=3, warm_up=WarmUp(max_rows=8, new_tokens=2, cache_positions=300))
    scheduler.warm_up.run(scheduler)
    pool = scheduler.caches._free
    assert len(pool) == 3 and all(cache.capacity >= 300 for cache in pool)
    kept = {id(cache) for cache in pool}
    slot = new_slot(c, [1, 2, 3], "autoregressive", Collector(), dict(max_new_tokens=4))
    scheduler.submit(slot)
    scheduler.run_until_idle()
    assert {id(cache) for cache in scheduler.caches._free} == kept  # served from the pool, given back
