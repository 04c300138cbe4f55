"""`specmux serve`: the OpenAI-compatible server (serve/app.py) on uvicorn.

SIGTERM (or Ctrl-C) stops taking connections; requests in flight finish for up to
--drain-seconds, then the rest are cancelled and the process exits."""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading
import time
from typing import Iterator

API_KEY_ENV = "SPECMUX_API_KEY"


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="specmux serve", description="Serve a target and its drafters over the OpenAI API.")
    p.add_argument("--target", default="smollm2-135m-instruct", help="built-in target name or a transformers folder")
    p.add_argument("--drafters", default="default",
                   help="comma-separated NAME=SPEC drafters (e.g. math=eagle:/ckpt,ee=early-exit:6), "
                        "'default' (the drafters shipped for a built-in target) or 'none'")
    p.add_argument("--strategy", default=None, help="default strategy of requests that name none")
    p.add_argument("--tree", default=None,
                   help="default tree of requests that name none: 'auto' or DEPTH,TOP_K,BUDGET (default: auto)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require 'Authorization: Bearer KEY' on every route but /health (default: ${API_KEY_ENV})")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: the target)")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together in one step")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond the batch before 429")
    p.add_argument("--draft-max-batch", type=int, default=2,
                   help="requests with top-k trees draft only while at most this many share a step "
                        "(past it, batching pays more than speculating)")
    p.add_argument("--row-budget", type=int, default=24,
                   help="verified tree rows per step shared by the drafting requests of a batch")
    p.add_argument("--warmup-rows", type=int, default=1024,
                   help="before serving, meet every kernel shape up to this many rows of a step, so that memory "
                        "stays flat under traffic (serve/warmup.py; 0: no warm-up)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    p.add_argument("--max-tokens", type=int, default=256, help="max_tokens of requests that name none")
    p.add_argument("--temperature", type=float, default=1.0, help="temperature of requests that name none")
    p.add_argument("--threads", default="default", help="torch threads: a number, 'auto', or the Composer default")
    p.add_argument("--drain-seconds", type=float, default=30.0, help="how long SIGTERM waits for requests in flight")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def tree_option(value: str | None):
    if value is None or value == "auto":
        return value
    try:
        depth, top_k, budget = (int(x) for x in value.split(","))
    except ValueError:
        raise ValueError(f"--tree must be 'auto' or DEPTH,TOP_K,BUDGET, got {value!r}") from None
    return {"depth": depth, "top_k": top_k, "budget": budget}


def drafter_specs(value: str, target: str) -> dict[str, str]:
    if value == "none":
        return {}
    if value == "default":
        from compose.defaults import default_drafters

        return default_drafters(target)
    specs = {}
    for item in value.split(","):
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ValueError(f"--drafters: expected NAME=SPEC items, got {item!r}")
        specs[name] = spec
    return specs


def build(args):
    """The Composer and the app, from parsed arguments."""
    from compose import Composer

    from .app import ServerConfig, create_app

    if args.warmup_rows < 0:  # before the model loads
        raise ValueError(f"--warmup-rows must be >= 0, got {args.warmup_rows}")
    threads = args.threads if args.threads in ("default", "auto") else int(args.threads)
    defaults = {} if args.tree is None else {"tree": tree_option(args.tree)}
    composer = Composer(args.target, drafters=drafter_specs(args.drafters, args.target), strategy=args.strategy,
                        threads=threads, **defaults)
    if args.strategy is not None and composer.unavailable(args.strategy):
        raise ValueError(composer.unavailable(args.strategy))
    config = ServerConfig(
        model_name=args.served_model_name or os.path.basename(str(args.target).rstrip("/")),
        api_key=args.api_key or None, max_body_bytes=args.max_body_bytes, max_batch=args.max_batch,
        max_queue=args.max_queue, default_temperature=args.temperature, default_max_tokens=args.max_tokens,
        drain_seconds=args.drain_seconds, draft_max_batch=args.draft_max_batch, row_budget=args.row_budget,
        warmup_rows=args.warmup_rows)
    return composer, create_app(composer, config)


def serial_main_thread() -> None:
    """Keep torch in this (the main) thread to one thread: loading the model here, then the event
    loop. The scheduler thread runs every forward with its own OpenMP team; a second team, made
    by the main thread while loading, puts libgomp past one thread per core, and then no team
    spins between parallel regions: each of the many small ones of a speculative step sleeps and
    wakes its workers (measured, 2 threads on 2 cores, one stream: 32 tok/s against 48 without
    the main thread's team, and Composer.generate in the main thread at 29 against 50 once the
    other team exists)."""
    import torch

    torch.set_num_threads(1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import uvicorn

    from .memory import return_freed_memory

    return_freed_memory()
    serial_main_thread()

    try:
        composer, app = build(args)
    except ValueError as e:
        print(f"specmux serve: error: {e}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"specmux serve: warning: listening on {args.host} without --api-key", file=sys.stderr)
    print(f"specmux serve: {app.state.config.model_name} with drafters {sorted(composer.drafters)} "
          f"on http://{args.host}:{args.port}/v1", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=int(args.drain_seconds))
    return 0


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", drain_seconds: int = 5) -> Iterator[str]:
    """Run `app` on uvicorn in a background thread on a free port of `host` (tests, benchmarks);
    yields the base URL (http://host:port/v1) once the server accepts connections."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=drain_seconds))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
