"""`specmux serve` over HTTP, with the official openai client against a server the test starts on
127.0.0.1 (a free port), and raw httpx requests for malformed input: chat and completions,
streaming and not, stop strings, concurrent clients (greedy output equals plain decoding), seeds,
per-request acceptance in usage, auth, limits, disconnects and metrics."""
from __future__ import annotations

import concurrent.futures
import copy
import time

import httpx
import openai
import pytest

from compose import Composer
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from eval_helpers import tiny_target_folder
from serve.app import ServerConfig, create_app
from serve.cli import serve_in_thread

MODEL = "tiny"
KEY = "sk-test-key"
TREE = dict(depth=3, top_k=2, budget=6)


@pytest.fixture(scope="module")
def composer(tmp_path_factory):
    folder = tiny_target_folder(tmp_path_factory.mktemp("target"))
    c = Composer(folder, threads=1, tree=TREE)
    target = c.target.model
    c.add_drafter("ee", EarlyExitDrafter(target, 1))
    c.add_drafter("self", CausalLMDrafter(copy.deepcopy(target), target.config.vocab_size, name="self"))
    return c


def start(composer, **config):
    return serve_in_thread(create_app(composer, ServerConfig(model_name=MODEL, **config)))


@pytest.fixture(scope="module")
def base_url(composer):
    with start(composer, max_body_bytes=64 * 1024) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)


def plain(composer, prompt, n, chat=True, **options):
    """Single-stream plain decoding: what every greedy request must return."""
    return composer.generate(prompt, strategy="autoregressive", max_new_tokens=n, chat=chat, **options).text


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}]


def test_models_and_health(client, base_url):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(base_url.removesuffix("/v1") + "/health").json()["status"] == "ok"


@pytest.mark.parametrize("strategy, extra", [("autoregressive", {}), ("single", {"drafter": "self"}),
                                             ("merged_tree", {}), ("single", {"drafter": "ee", "tree": "auto"})])
def test_chat_greedy_equals_plain_decoding_and_reports_acceptance(client, composer, strategy, extra):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0,
                                       extra_body={"strategy": strategy, **extra})
    assert r.choices[0].message.content == plain(composer, CHAT, 24)
    assert r.choices[0].finish_reason == "length"
    usage = r.usage.model_extra
    assert r.usage.completion_tokens == 24 and usage["steps"] >= 1
    assert usage["tau"] == pytest.approx((usage["accepted"] + usage["steps"]) / usage["steps"], abs=1e-3)
    if strategy == "single" and extra["drafter"] == "self":  # a perfect drafter is accepted every step
        assert usage["accepted"] > 0 and usage["tau"] > 1
    if strategy == "autoregressive":
        assert usage["drafted"] == 0 and usage["tau"] == 1


def test_completion_with_stop_string(client, composer):
    full = plain(composer, "Once upon", 30, chat=False)
    stop = full[5:7]
    cut = full[: full.index(stop)]
    r = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=30, temperature=0, stop=[stop, "\x00"])
    assert r.choices[0].text == cut
    assert r.choices[0].finish_reason == "stop"


def test_streaming_chat_and_completion(client, composer):
    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=20, temperature=0, stream=True,
                                                extra_body={"strategy": "single", "drafter": "self"}):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(pieces) == plain(composer, CHAT, 20)
    assert finish == "length" and usage.completion_tokens == 20 and usage.model_extra["accepted"] > 0
    text = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=15, temperature=0, stream=True))
    assert text == plain(composer, "Once upon", 15, chat=False)


def test_concurrent_clients_each_get_plain_decoding(client, composer):
    jobs = [(f"Question {i}: what is {i} + {i}?", 10 + 3 * i, s)
            for i, s in enumerate(["autoregressive", "merged_tree", "single", "confidence"] * 2)]

    def ask(job):
        prompt, n, strategy = job
        extra = {"strategy": strategy, **({"drafter": "self"} if strategy == "single" else {})}
        if n % 2:
            r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=n, temperature=0, extra_body=extra)
            return r.choices[0].text
        return "".join(c.choices[0].text for c in client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=n, temperature=0, stream=True, extra_body=extra))

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(ask, jobs))
    for (prompt, n, _), answer in zip(jobs, answers):
        assert answer == plain(composer, prompt, n, chat=False)


def test_seed_reproduces_sampled_output_whatever_runs_beside_it(client, composer):
    ask = dict(model=MODEL, messages=CHAT, max_tokens=20, temperature=1.0, top_p=0.9, seed=42,
               extra_body={"strategy": "single", "drafter": "ee"})
    alone = client.chat.completions.create(**ask).choices[0].message.content
    expected = composer.generate(CHAT, strategy="single", drafter="ee", max_new_tokens=20, temperature=1.0,
                                 top_p=0.9, seed=42, chat=True).text
    assert alone == expected
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        noise = [pool.submit(client.completions.create, model=MODEL, prompt=f"noise {i}", max_tokens=25,
                             temperature=1.0) for i in range(3)]
        again = pool.submit(client.chat.completions.create, **ask)
        assert again.result().choices[0].message.content == alone
        [f.result() for f in noise]


def raw(base_url, body, path="/chat/completions", **kw):
    return httpx.post(base_url + path, content=body if isinstance(body, (bytes, str)) else None,
                      json=None if isinstance(body, (bytes, str)) else body, timeout=60, **kw)


GOOD = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
BAD = [
    (b"{not json", 400, "not valid JSON"),
    ({**GOOD, "model": "gpt-9"}, 404, "does not exist"),
    ({**GOOD, "strategy": "fastest"}, 400, "unknown strategy"),
    ({**GOOD, "strategy": "single", "drafter": "nobody"}, 400, "unknown drafter"),
    ({**GOOD, "messages": []}, 400, "messages"),
    ({**GOOD, "messages": [{"role": "user"}]}, 400, "content"),
    ({**GOOD, "messages": [{"role": "robot", "content": "beep"}]}, 400, "role"),
    ({**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    ({**GOOD, "max_tokens": -3}, 400, "max_tokens"),
    ({**GOOD, "max_tokens": 10_000}, 400, "context"),
    ({**GOOD, "messages": [{"role": "user", "content": "x" * 5000}]}, 400, "context"),
    ({**GOOD, "temperature": "hot"}, 400, "temperature"),
    ({**GOOD, "temperature": "0.5"}, 400, "temperature"),
    ({**GOOD, "top_p": 0}, 400, "top_p"),
    ({**GOOD, "seed": 1.5}, 400, "seed"),
    ({**GOOD, "n": 3}, 400, "n"),
    ({**GOOD, "presence_penalty": 0.5}, 400, "presence_penalty"),
    ({**GOOD, "tree": {"depth": 0}}, 400, "depth"),
    ({**GOOD, "stop": 7}, 400, "stop"),
    ([1, 2, 3], 400, "object"),
]


@pytest.mark.parametrize("body, status, words", BAD)
def test_malformed_requests_get_openai_errors(base_url, body, status, words):
    r = raw(base_url, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words.lower() in error["message"].lower() and error["type"]


def test_completion_refusals_and_body_limit(base_url):
    assert raw(base_url, {"model": MODEL, "prompt": ""}, "/completions").status_code == 400
    assert raw(base_url, {"model": MODEL, "prompt": ["a", "b"]}, "/completions").status_code == 400
    assert raw(base_url, {"model": MODEL}, "/completions").status_code == 400
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * 70_000}]}
    r = raw(base_url, big)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert httpx.get(base_url + "/nowhere").status_code == 404


def test_api_key_guards_every_route_but_health(composer):
    with start(composer, api_key=KEY) as url:
        root = url.removesuffix("/v1")
        no_key = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            no_key.models.list()
        with pytest.raises(openai.AuthenticationError):
            no_key.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
        for path in ("/v1/models", "/metrics", "/v1/nowhere"):
            assert httpx.get(root + path).status_code == 401
        assert httpx.post(url + "/completions", json={"model": MODEL, "prompt": "a"}).status_code == 401
        assert httpx.get(root + "/health").status_code == 200
        good = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        assert good.completions.create(model=MODEL, prompt="a", max_tokens=2, temperature=0).usage.completion_tokens == 2
        assert httpx.get(root + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def wait_idle(root: str, seconds: float = 20) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        health = httpx.get(root + "/health").json()
        if health["active"] == 0 and health["queued"] == 0 or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def test_disconnect_frees_the_slot_and_full_queue_answers_429(composer):
    with start(composer, max_batch=1, max_queue=0) as url:
        root = url.removesuffix("/v1")
        with httpx.stream("POST", url + "/completions", timeout=60,
                          json={"model": MODEL, "prompt": "long", "max_tokens": 3000, "stream": True}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            busy = raw(url, {"model": MODEL, "prompt": "x", "max_tokens": 2}, "/completions")
            assert busy.status_code == 429 and busy.json()["error"]["type"] == "rate_limit_error"
        assert wait_idle(root) == {"status": "ok", "active": 0, "queued": 0}  # well before 3000 tokens
        with pytest.raises(httpx.ReadTimeout):  # a client waiting for a whole answer gives up
            httpx.post(url + "/completions", json={"model": MODEL, "prompt": "long", "max_tokens": 4000}, timeout=1.0)
        assert wait_idle(root, seconds=4) == {"status": "ok", "active": 0, "queued": 0}  # freed, not finished
        ok = raw(url, {"model": MODEL, "prompt": "x", "max_tokens": 2, "temperature": 0}, "/completions")
        assert ok.status_code == 200
        metrics = httpx.get(root + "/metrics").text
        assert 'specmux_finished_requests_total{reason="cancelled"} 2.0' in metrics
        assert 'specmux_requests_total{endpoint="/v1/completions",status="429"} 1.0' in metrics
        for name in ("specmux_request_tau_bucket", "specmux_step_seconds_count", "specmux_queue_length",
                     "specmux_drafted_tokens_total", "specmux_accepted_tokens_total", "specmux_completion_tokens_total"):
            assert name in metrics


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_finishes_requests_in_flight_then_exits(tmp_path):
    """`specmux serve` as its own process: SIGTERM while a stream is running lets it finish."""
    import os
    import signal
    import subprocess
    import sys

    folder = tiny_target_folder(tmp_path / "target")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SPECMUX_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "eval.commands", "serve", "--target", str(folder), "--drafters",
                             "ee=early-exit:1", "--port", str(port), "--tree", "3,2,6", "--served-model-name", MODEL,
                             "--log-level", "warning"], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.2)
        with httpx.stream("POST", url + "/v1/completions", timeout=60,
                          json={"model": MODEL, "prompt": "count", "max_tokens": 400, "temperature": 0,
                                "stream": True}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and '"finish_reason":"length"' in rest[-2]
        # uvicorn re-raises the captured SIGTERM after its graceful shutdown, so the exit status is
        # the signal's (as for any process SIGTERM ends), reached only after the stream completed
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.TransportError):  # no longer listening
            httpx.get(url + "/health")
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("strategy, extra", [("single", {"drafter": "self"}), ("autoregressive", {})])
def test_a_stream_never_sends_part_of_a_stop_string(composer, strategy, extra):
    """Stops that begin in one step's text and end in a later one's (the perfect drafter emits
    several tokens per step): the streamed pieces add up to the cut text, never past it."""
    from serve.scheduler import Scheduler
    from serve.slot import new_slot

    full = plain(composer, "Once upon", 40, chat=False)
    scheduler = Scheduler(composer, max_batch=40, max_queue=40)
    cases = []
    for i in range(4, 32, 2):
        stop = full[i : i + 3]
        pieces: list[str] = []
        slot = new_slot(composer, "Once upon", strategy,
                        lambda ev, pieces=pieces: pieces.append(ev.text) if ev.kind == "text" else None,
                        dict(max_new_tokens=40, temperature=0, stop=[stop], **extra))
        scheduler.submit(slot)
        cases.append((full[: full.index(stop)], slot, pieces))
    scheduler.run_until_idle()
    for expected, slot, pieces in cases:
        assert slot.text == expected and "".join(pieces) == expected and slot.finish == "stop"


def test_streamed_stop_over_http(client, composer):
    full = plain(composer, "Once upon", 40, chat=False)
    stop = full[9:13]
    text = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=40, temperature=0, stop=stop, stream=True,
        extra_body={"strategy": "single", "drafter": "self"}))
    assert text == full[: full.index(stop)]
