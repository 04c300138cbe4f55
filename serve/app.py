"""The OpenAI-compatible HTTP face (FastAPI on uvicorn): /v1/chat/completions, /v1/completions
(server-sent events or one JSON body), /v1/models, /health and /metrics, in front of one
Scheduler that batches every request's tree into one target forward per step.

Every refusal is an OpenAI-style error body ({"error": {"message", "type", "param", "code"}}):
400 for a malformed request, 401 without the API key (every route but /health), 404 for an
unknown model or route, 413 for a body over the limit, 429 when the queue is full, 503 while
shutting down, 500 for a request that failed inside decoding (the batch goes on)."""
from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from compose.composer import Composer
from compose.options import validation_message

from .metrics import ServeMetrics
from .scheduler import BatchTrees, Scheduler
from .schemas import ChatRequest, CompletionRequest, error_body
from .slot import Event, RequestError, Slot, new_slot
from .warmup import WarmUp

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # specmux's -> OpenAI's
POLL_SECONDS = 0.5  # how often a waiting non-streaming handler checks that its client is still there


@dataclass
class ServerConfig:
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_batch: int = 8
    max_queue: int = 64
    default_temperature: float = 1.0  # the OpenAI API's default
    default_max_tokens: int = 256  # cut to what the context leaves when a request names none
    drain_seconds: float = 30.0
    draft_max_batch: int = 2  # serve/scheduler.py BatchTrees
    row_budget: int = 24
    warmup_rows: int = 0  # > 0: meet the kernels' shapes up to this many rows at startup (serve/warmup.py)


def create_app(composer: Composer, config: ServerConfig) -> FastAPI:
    metrics = ServeMetrics()
    scheduler = Scheduler(composer, config.max_batch, config.max_queue, metrics,
                          BatchTrees(config.draft_max_batch, config.row_budget),
                          WarmUp(config.warmup_rows) if config.warmup_rows > 0 else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:  # uvicorn has let in-flight requests finish (or timed out): end the loop
            await asyncio.to_thread(scheduler.stop, config.drain_seconds)

    app = FastAPI(title="specmux", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.metrics, app.state.config = scheduler, metrics, config
    app.add_middleware(BearerAuth, api_key=config.api_key)
    app.add_middleware(RecordRequests, metrics=metrics)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError):
        return JSONResponse(error_body(str(e), e.kind, e.param), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse(error_body(str(e.detail), "invalid_request_error"), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        return JSONResponse(error_body(str(e.errors())), status_code=400)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):
        return JSONResponse(error_body(f"{type(e).__name__}: {e}", "server_error"), status_code=500)

    @app.get("/health")
    async def health():
        if not scheduler.ready.is_set():  # requests are taken, but wait for the warm-up
            return JSONResponse({"status": "warming up", "active": 0, "queued": scheduler.queued}, status_code=503)
        return {"status": "ok", "active": scheduler.active, "queued": scheduler.queued}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                            "owned_by": "specmux"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = parse(ChatRequest, await read_json(request, config.max_body_bytes), config)
        return await serve(request, "chat", req, req.chat_messages())

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse(CompletionRequest, await read_json(request, config.max_body_bytes), config)
        try:
            prompt = req.prompt_value()
        except ValueError as e:
            raise RequestError(str(e), param="prompt") from None
        return await serve(request, "completion", req, prompt)

    async def serve(request: Request, kind: str, req, prompt) -> Response:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        try:
            options = req.generate_options(config.default_temperature)
            fit = "max_new_tokens" not in options
            options.setdefault("max_new_tokens", config.default_max_tokens)
            slot = new_slot(composer, prompt, req.strategy, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
                            options, fit_context=fit, stream=bool(req.stream))
        except ValueError as e:
            message, param = validation_message(e) if isinstance(e, ValidationError) else (str(e), None)
            raise RequestError(message, param=param) from None
        scheduler.submit(slot)  # 429 / 503 raise from here
        reply = Reply(kind, config.model_name, slot)
        if req.stream:
            return StreamingResponse(stream(reply, events), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await collect(request, reply, events)

    async def stream(reply: "Reply", events: asyncio.Queue) -> AsyncIterator[str]:
        try:
            if reply.kind == "chat":
                yield sse(reply.chunk({"role": "assistant", "content": ""}))
            while True:
                ev, text = await events.get(), ""
                while ev.kind == "text":  # pieces queued up while the client read the last one: one chunk
                    text += ev.text
                    if events.empty():
                        break
                    ev = events.get_nowait()
                if text:
                    yield sse(reply.chunk(text))
                if ev.kind == "text":
                    continue
                if ev.kind == "error":
                    yield sse(error_body(str(ev.error), ev.error.kind))
                    break
                else:
                    yield sse(reply.chunk(None, final=True))
                    break
            yield "data: [DONE]\n\n"
        finally:  # the client went away (Starlette cancels this generator) or we are done
            leave(reply.slot)

    async def collect(request: Request, reply: "Reply", events: asyncio.Queue) -> Response:
        try:
            checked = time.monotonic()
            while True:
                try:
                    ev = await asyncio.wait_for(events.get(), POLL_SECONDS)
                except asyncio.TimeoutError:
                    ev = None
                if time.monotonic() - checked >= POLL_SECONDS:  # text events may never pause
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        return Response(status_code=499)  # nobody reads it; the slot is freed below
                if ev is None or ev.kind == "text":
                    continue
                if ev.kind == "error":
                    raise ev.error
                if ev.kind == "done":
                    return JSONResponse(reply.whole())
        finally:
            leave(reply.slot)

    def leave(slot: Slot) -> None:
        if slot.finish is None and not getattr(slot, "failed", False):
            slot.cancelled = True
            scheduler.wake()

    return app


def parse(model: type[BaseModel], body: Any, config: ServerConfig):
    try:
        req = model.model_validate(body)
    except ValidationError as e:
        message, param = validation_message(e)
        raise RequestError(message, param=param) from None
    if req.model != config.model_name:
        raise RequestError(f"the model {req.model!r} does not exist; this server serves {config.model_name!r}",
                           404, "invalid_request_error", "model")
    return req


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refused with 413 past `limit` bytes (by its declared length, and by
    counting, since a chunked body declares none)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {declared} bytes is over the limit of {limit}", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(f"request body is over the limit of {limit} bytes", 413)
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(value).__name__}")
    return value


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class Reply:
    """The response objects of one request, chat or completion, whole or in chunks."""

    def __init__(self, kind: str, model: str, slot: Slot):
        self.kind, self.model, self.slot = kind, model, slot
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chunk(self, piece: str | dict | None, final: bool = False) -> dict:
        finish = FINISH_REASONS.get(self.slot.finish) if final else None
        if self.kind == "chat":
            delta = piece if isinstance(piece, dict) else ({} if piece is None else {"content": piece})
            out = {**self._head("chat.completion.chunk"),
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        else:
            out = {**self._head("text_completion"),
                   "choices": [{"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}]}
        if final:  # the request's acceptance rides on its last chunk
            out["usage"] = self.slot.usage()
        return out

    def whole(self) -> dict:
        finish = FINISH_REASONS.get(self.slot.finish)
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": self.slot.text}, "finish_reason": finish}
            head = self._head("chat.completion")
        else:
            choice = {"index": 0, "text": self.slot.text, "finish_reason": finish, "logprobs": None}
            head = self._head("text_completion")
        return {**head, "choices": [choice], "usage": self.slot.usage()}


class BearerAuth:
    """With an API key, every route but /health answers 401 without `Authorization: Bearer <key>`
    (as vLLM's and llama.cpp's servers do). Pure ASGI, so streaming passes through untouched."""

    def __init__(self, app, api_key: str | None):
        self.app, self.key = app, api_key

    async def __call__(self, scope, receive, send):
        if self.key is None or scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if not secrets.compare_digest(given.encode(), f"Bearer {self.key}".encode()):
            response = JSONResponse(error_body("invalid or missing API key (Authorization: Bearer <key>)",
                                               "invalid_request_error", code="invalid_api_key"), status_code=401)
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class RecordRequests:
    """Counts every answer by route and status (401s and 413s included) and times it to its last byte."""

    ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in self.ROUTES else "other"
        start, status = time.perf_counter(), [500]

        async def recording_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                self.metrics.answered(endpoint, status[0], time.perf_counter() - start)
            await send(message)

        await self.app(scope, receive, recording_send)
