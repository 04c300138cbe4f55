"""Load benchmark of `specmux serve` on 127.0.0.1: throughput and latency percentiles for 1, 2, 4
and 8 concurrent streaming clients, speculative (the server's default strategy) vs autoregressive,
against `Composer.generate` on the same prompts in this process; then (--load-test) a bounded
mixed load (streaming, stop strings, seeded sampling and malformed requests) that checks every
greedy answer against single-stream plain decoding, every bad request for a 4xx, counts server
errors and reports the server's RSS at start and end. Prints the load average with every table.

    python benchmarks/bench_serve.py                       # throughput table
    python benchmarks/bench_serve.py --load-test           # + 8 clients x 100 mixed requests

Then one stream through the server against `Composer.generate`, request by request in turn
(--one-stream rounds over the prompts), the fairer ratio on a shared machine.

The server runs as its own process (`specmux serve`), the clients here use the official openai
package (the same code works against vLLM or SGLang: docs/serving.md)."""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prompts import PROMPTS, load_average  # noqa: E402

MODEL = "bench"
BAD_BODIES = [  # (body, expected status)
    (b"{not json", 400), ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, 400),
    ({"model": MODEL, "messages": [{"role": "user"}]}, 400), ({"model": MODEL, "messages": []}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "strategy": "fastest"}, 400),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}, 413),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "eval.commands", "serve", "--target", args.target, "--drafters", args.drafters,
           "--port", str(port), "--served-model-name", MODEL, "--max-batch", str(max(args.clients)),
           "--threads", args.threads, "--log-level", "warning", "--temperature", "0"]
    if args.tree:
        cmd += ["--tree", args.tree]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start (exit status {proc.poll()})")
        time.sleep(0.5)


async def stream_chat(client: openai.AsyncOpenAI, prompt: str, max_tokens: int, **extra) -> dict:
    start, first, pieces, usage, finish = time.perf_counter(), None, [], None, None
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, stream=True, **extra)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        usage = chunk.usage or usage
    end = time.perf_counter()
    return {"text": "".join(pieces), "latency": end - start, "ttft": (first or end) - start, "finish": finish,
            "tokens": usage.completion_tokens, "steps": usage.model_extra["steps"]}


async def throughput(url: str, clients: int, per_client: int, max_tokens: int, strategy: str | None) -> dict:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600) as client:
        return await _throughput(client, clients, per_client, max_tokens, strategy)


async def _throughput(client, clients: int, per_client: int, max_tokens: int, strategy: str | None) -> dict:
    prompts = list(PROMPTS.values())
    extra = {"temperature": 0, **({"extra_body": {"strategy": strategy}} if strategy else {})}
    await stream_chat(client, prompts[0], 8, **extra)  # warm-up (tree profile, allocator)

    async def worker(w: int) -> list[dict]:
        return [await stream_chat(client, prompts[(w * per_client + i) % len(prompts)], max_tokens, **extra)
                for i in range(per_client)]

    start = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(worker(w) for w in range(clients))) for r in rs]
    return {"results": results, "wall": time.perf_counter() - start}


def pooled(runs: list[dict]) -> dict:
    """Throughput and latency over every round of one (strategy, clients) phase."""
    results = [r for run in runs for r in run["results"]]
    lat = np.array([r["latency"] for r in results])
    tokens = sum(r["tokens"] for r in results)
    return {"requests": len(results), "tok_s": tokens / sum(run["wall"] for run in runs),
            "tau": tokens / max(1, sum(r["steps"] for r in results)),
            "p50": np.percentile(lat, 50), "p90": np.percentile(lat, 90), "p99": np.percentile(lat, 99),
            "ttft50": np.percentile([r["ttft"] for r in results], 50)}


def load_composer(args):
    from compose import Composer
    from serve.cli import drafter_specs, tree_option

    return Composer(args.target, drafters=drafter_specs(args.drafters, args.target),
                    threads=args.threads if args.threads == "auto" else int(args.threads),
                    **({"tree": tree_option(args.tree)} if args.tree else {}))


def composer_baseline(composer, args, strategy: str | None) -> tuple[int, float]:
    """Composer.generate (tokens, seconds) on the prompts one client sends (same chat template, greedy)."""
    prompts = list(PROMPTS.values())[: args.per_client]
    messages = lambda p: [{"role": "user", "content": p}]  # noqa: E731
    composer.generate(messages(prompts[0]), strategy=strategy, max_new_tokens=8)
    start, tokens = time.perf_counter(), 0
    for p in prompts:
        tokens += len(composer.generate(messages(p), strategy=strategy, max_new_tokens=args.max_tokens).token_ids)
    return tokens, time.perf_counter() - start


async def one_stream(url: str, composer, args, strategy: str | None) -> dict:
    """One stream through the server vs `Composer.generate` in this process, request by request in
    turn (each prompt once per round, the server idle while Composer runs): both sides see the same
    moment's load, so the ratio holds on a busy machine where whole phases do not."""
    extra = {"temperature": 0, **({"extra_body": {"strategy": strategy}} if strategy else {})}
    messages = lambda p: [{"role": "user", "content": p}]  # noqa: E731
    tally = {"http": [0, 0.0], "generate": [0, 0.0]}
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600) as client:
        await stream_chat(client, PROMPTS["math"], 8, **extra)
        composer.generate(messages(PROMPTS["math"]), strategy=strategy, max_new_tokens=8)
        for _ in range(args.one_stream):
            for prompt in PROMPTS.values():
                start = time.perf_counter()
                n = len(composer.generate(messages(prompt), strategy=strategy, max_new_tokens=args.max_tokens).token_ids)
                tally["generate"][0] += n
                tally["generate"][1] += time.perf_counter() - start
                r = await stream_chat(client, prompt, args.max_tokens, **extra)
                tally["http"][0] += r["tokens"]
                tally["http"][1] += r["latency"]
    return {k: n / sec for k, (n, sec) in tally.items()} | {"requests": args.one_stream * len(PROMPTS)}


async def load_test(url: str, args, reference) -> dict:
    """8 clients x N requests: greedy chat / streaming completion / stop strings / seeded sampling /
    malformed bodies, in turn."""
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600) as client, \
            httpx.AsyncClient(timeout=600) as raw:
        return await _load_test(client, raw, url, args, reference)


async def _load_test(client, raw, url: str, args, reference) -> dict:
    prompts, n = list(PROMPTS.values()), args.load_max_tokens
    tally = {"good": 0, "good_ok": 0, "bad": 0, "bad_4xx": 0, "server_errors": 0, "wrong": []}

    async def one(w: int, i: int) -> None:
        kind, prompt = (w + i) % 5, prompts[(w * 7 + i) % len(prompts)]
        try:
            if kind == 4:
                body, status = BAD_BODIES[(w + i) % len(BAD_BODIES)]
                r = await raw.post(url + "/v1/chat/completions", content=body if isinstance(body, bytes) else None,
                                   json=None if isinstance(body, bytes) else body)
                tally["bad"] += 1
                tally["bad_4xx"] += r.status_code == status and "error" in r.json()
                tally["server_errors"] += r.status_code >= 500
                return
            tally["good"] += 1
            expected = reference(prompt, n)
            if kind == 0:
                r = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                         max_tokens=n, temperature=0)
                got = r.choices[0].message.content
            elif kind == 1:
                got = (await stream_chat(client, prompt, n, temperature=0))["text"]
            elif kind == 2:  # a stop string from the middle of the expected answer
                stop = expected[len(expected) // 2: len(expected) // 2 + 3] or "\x00"
                expected = expected[: expected.find(stop)] if stop in expected else expected
                got = (await stream_chat(client, prompt, n, temperature=0, stop=[stop]))["text"]
            else:  # seeded sampling: the same seed twice gives the same text whatever runs beside it
                ask = dict(model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=n,
                           temperature=0.8, seed=1000 + i)
                a, b = [(await client.chat.completions.create(**ask)).choices[0].message.content for _ in range(2)]
                got, expected = a, b
            tally["good_ok"] += got == expected
            if got != expected:
                tally["wrong"].append((kind, prompt[:30], got[:40], expected[:40]))
        except openai.APIStatusError as e:
            tally["server_errors"] += e.status_code >= 500
            tally["wrong"].append(("status", e.status_code, str(e)[:80]))

    async def worker(w: int) -> None:
        for i in range(args.load_requests):
            await one(w, i)

    await asyncio.gather(*(worker(w) for w in range(8)))
    return tally


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--drafters", default="default")
    p.add_argument("--tree", default=None, help="server default tree: auto or DEPTH,TOP_K,BUDGET")
    p.add_argument("--threads", default="auto")
    p.add_argument("--clients", default="1,2,4,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--per-client", type=int, default=2, help="requests each client sends, one after another")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=2, help="every phase runs once per round, rounds interleaved")
    p.add_argument("--one-stream", type=int, default=2,
                   help="rounds of the one-stream comparison (every prompt through HTTP and Composer.generate in turn)")
    p.add_argument("--load-test", action="store_true")
    p.add_argument("--load-requests", type=int, default=100, help="requests per client in the load test (8 clients)")
    p.add_argument("--load-max-tokens", type=int, default=24)
    args = p.parse_args()

    print(f"load average before: {load_average()}")
    composer = load_composer(args)
    proc, url = start_server(args)
    server = psutil.Process(proc.pid)
    try:
        # rounds interleave every phase, so that a shared machine's changing load falls on all alike
        strategies = (None, "autoregressive")
        runs = {(st, c): [] for st in strategies for c in args.clients}
        generate = {st: [] for st in strategies}
        for rnd in range(args.rounds):
            for st in strategies:
                generate[st].append(composer_baseline(composer, args, st))  # the server idle meanwhile
                for c in args.clients:
                    runs[(st, c)].append(asyncio.run(throughput(url, c, args.per_client, args.max_tokens, st)))
            print(f"round {rnd + 1}/{args.rounds} done   load {load_average()}", flush=True)
        for st in strategies if args.rounds else ():
            baseline = sum(t for t, _ in generate[st]) / sum(sec for _, sec in generate[st])
            print(f"\n{st or 'speculative (server default strategy)'}: Composer.generate {baseline:.1f} tok/s "
                  f"(one stream, same prompts)   load {load_average()}")
            print(f"{'clients':>7} {'reqs':>4} {'tok/s':>7} {'x1':>5} {'vs gen':>6} {'tau':>5} "
                  f"{'p50 s':>6} {'p90 s':>6} {'p99 s':>6} {'ttft50':>6}")
            one = None
            for c in args.clients:
                r = pooled(runs[(st, c)])
                one = one or r["tok_s"]
                print(f"{c:>7} {r['requests']:>4} {r['tok_s']:>7.1f} {r['tok_s'] / one:>5.2f} "
                      f"{r['tok_s'] / baseline:>6.2f} {r['tau']:>5.2f} {r['p50']:>6.2f} {r['p90']:>6.2f} "
                      f"{r['p99']:>6.2f} {r['ttft50']:>6.2f}")
        for st in strategies if args.one_stream else ():
            r = asyncio.run(one_stream(url, composer, args, st))
            print(f"\none stream, {st or 'speculative'}: HTTP {r['http']:.1f} tok/s, Composer.generate "
                  f"{r['generate']:.1f} tok/s: {r['http'] / r['generate']:.2f} ({r['requests']} requests each, "
                  f"in turn)   load {load_average()}", flush=True)
        if args.load_test:
            print(f"server RSS after the throughput phases: {server.memory_info().rss / 2**20:.0f} MiB")
            cache: dict = {}

            def reference(prompt: str, n: int) -> str:
                if (prompt, n) not in cache:
                    cache[(prompt, n)] = composer.generate([{"role": "user", "content": prompt}], strategy="autoregressive",
                                                        max_new_tokens=n).text
                return cache[(prompt, n)]

            for prompt in PROMPTS.values():
                reference(prompt, args.load_max_tokens)
            rss = [server.memory_info().rss]
            done = threading.Event()

            def sample_rss() -> None:  # every 5 s while the load runs
                while not done.wait(5.0):
                    rss.append(server.memory_info().rss)

            sampler = threading.Thread(target=sample_rss, daemon=True)
            sampler.start()
            start = time.perf_counter()
            tally = asyncio.run(load_test(url, args, reference))
            wall = time.perf_counter() - start
            done.set()
            sampler.join()
            rss.append(server.memory_info().rss)
            rss0, rss1 = rss[0], rss[-1]
            print(f"\nload test: 8 clients x {args.load_requests} requests in {wall:.0f} s   load {load_average()}")
            print(f"good requests answered correctly: {tally['good_ok']}/{tally['good']}   "
                  f"bad requests with their 4xx: {tally['bad_4xx']}/{tally['bad']}   "
                  f"server errors (5xx): {tally['server_errors']}")
            quarters = [rss[min(len(rss) - 1, k * (len(rss) - 1) // 4)] / 2**20 for k in range(5)]
            print(f"server RSS: start {rss0 / 2**20:.0f} MiB, end {rss1 / 2**20:.0f} MiB, max {max(rss) / 2**20:.0f} MiB; "
                  f"at 0/25/50/75/100% of the run: {' '.join(f'{q:.0f}' for q in quarters)} MiB")
            for w in tally["wrong"][:10]:
                print("  mismatch:", w)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
