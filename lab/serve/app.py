"""The OpenAI-compatible server: FastAPI routes over the model layer, so any OpenAI client (the SDKs, Open WebUI,
lm-evaluation-harness) can use a model this project loads, a bitsandbytes-quantized one included.

    python -m lab.serve --model tiny-random                 # offline, any CPU: http://127.0.0.1:8000/v1
    python -m lab.serve --model Qwen2.5-7B-Instruct --quant 4bit --port 8000 --api-key secret
    python app.py --api                                     # the same routes beside the page

Bodies are read by `lab.serve.requests`, replies written by `lab.serve.replies`; every error is OpenAI's
{"error": {"message", "type", "param", "code"}} with one sentence. One generation at a time per model; a client
that disconnects stops its generation at the next decode step.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import sys
import threading
import time
import typing
from dataclasses import replace

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from lab.errors import LabError
from lab.interface import TokenLogprobs
from lab.pump import END, TICK, Pump
from lab.serve.replies import (ApiError, ToolCallStream, chat_chunk, chat_message, finish_reason, new_id, openai_calls,
                               sse, usage)
from lab.serve.requests import ChatCompletionBody, CompletionBody, TokenizeBody, api_error

GRACE_S = 3  # on Ctrl-C or SIGTERM, open streams (a page's event stream, a long reply) get this long to end
ROUTES = "/v1/chat/completions, /v1/completions, /v1/models, /tokenize and /health"


def _reply(e: ApiError, headers: typing.Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _body_model(request: Request) -> type[BaseModel] | None:
    """The pydantic model the matched route reads its body into (its fields' metadata make the sentences)."""
    endpoint = getattr(request.scope.get("route"), "endpoint", None)
    hints = typing.get_type_hints(endpoint) if endpoint is not None else {}
    return next((t for t in hints.values() if isinstance(t, type) and issubclass(t, BaseModel)), None)


async def _next(pump: Pump, cancel: threading.Event, request: Request | None = None):
    """The work's next item or END, awaited off the event loop; its LabError comes back as a 400. With
    `request`, a client that went away cancels the generation (checked at every item, not only when idle)."""
    while True:
        try:
            item = await asyncio.to_thread(pump.get, 0.5)
        except LabError as e:
            raise ApiError(400, str(e)) from None
        if request is not None and await request.is_disconnected():
            cancel.set()
        if item is not TICK:
            return item


def build_api(manager, api_key: str | None = None) -> FastAPI:
    """The /v1 routes over a `lab.models.manager.ModelManager` (whatever model it holds when a request comes)."""
    # Not strict: a body sent without a Content-Type is read as JSON still; one declared as another type is refused.
    app = FastAPI(title="Qwen Lab OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None,
                  strict_content_type=False)
    started = int(time.time())

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "The API key is missing or wrong; send it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")

    auth = [Depends(check_key)]

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError) -> JSONResponse:
        return _reply(e)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        try:  # FastAPI reads the body before it runs dependencies: without a key, bad JSON is still a 401
            check_key(request)
        except ApiError as denied:
            return _reply(denied)
        return _reply(api_error(list(e.errors()), _body_model(request)))

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, e: HTTPException) -> JSONResponse:
        path, allow = request.url.path, (e.headers or {}).get("Allow")
        if e.status_code == 404:
            message = f"There is no route {path} here; this server has {ROUTES}."
        elif e.status_code == 405 and allow:
            message = f"{path} does not take {request.method}; use {allow}."
        else:
            message = f"{str(e.detail).rstrip('.')}."
        return _reply(ApiError(e.status_code, message), e.headers)

    def served(requested: str | None = None):
        try:
            model = manager.model
        except LabError as e:
            raise ApiError(503, str(e), type="server_error") from None
        info = model.info
        if requested is not None and requested.casefold() not in (info.name.casefold(), info.source.casefold()):
            raise ApiError(404, f"The model '{requested}' does not exist here; this server serves '{info.name}'.",
                           param="model", code="model_not_found")
        return model

    def card(model) -> dict:
        info = model.info
        return {"id": info.name, "object": "model", "created": started, "owned_by": "qwen-lab", "root": info.source,
                "max_model_len": info.context_length}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok" if manager.loaded else "no model loaded"}

    @app.get("/v1/models", dependencies=auth)
    async def models() -> dict:
        return {"object": "list", "data": [card(manager.model)] if manager.loaded else []}

    @app.get("/v1/models/{name:path}", dependencies=auth)
    async def model_card(name: str) -> dict:
        return card(served(name))

    @app.post("/tokenize", dependencies=auth)
    async def tokenize(body: TokenizeBody) -> dict:
        model = served(body.model)

        def count() -> dict:
            text = body.prompt if body.messages is None else model.render(
                body.messages, add_generation_prompt=body.add_generation_prompt, tools=body.tools)
            out = {"count": model.count_tokens(text), "max_model_len": model.info.context_length}
            if model.capabilities.token_ids:
                out["tokens"] = model.encode(text)
            return out

        return await _next(Pump(lambda put: put(count()), name="lab-serve"), threading.Event())

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatCompletionBody, request: Request):
        req = body.request()
        model = served(req.model)
        rid, created, name, cancel = new_id("chatcmpl"), int(time.time()), model.info.name, threading.Event()

        def work(put) -> None:
            max_tokens = req.max_tokens
            if max_tokens is None:  # as vLLM: whatever the context leaves after the prompt
                used = model.count_chat_tokens(req.messages, req.tools)
                max_tokens = model.info.context_length - used
                if max_tokens < 1:
                    raise LabError(f"The messages take {used:,} tokens, which fills {name}'s context of "
                                   f"{model.info.context_length:,} tokens; shorten them.")
            params = replace(req.params, max_new_tokens=max_tokens)
            for chunk in model.stream_chat(req.messages, params, cancel, tools=req.tools):
                put(chunk)

        pump = Pump(work, name="lab-serve")
        item = await _next(pump, cancel, request)  # an error before the first token: a plain error reply
        if not req.stream:
            text, stats = "", None
            while item is not END:
                text, stats = text + item.text, item.stats or stats
                item = await _next(pump, cancel, request)
            message, called = chat_message(text, req.tools)
            return {"id": rid, "object": "chat.completion", "created": created, "model": name,
                    "choices": [{"index": 0, "message": message, "logprobs": None,
                                 "finish_reason": finish_reason(stats.finish_reason, called)}],
                    "usage": usage(stats.prompt_tokens, stats.completion_tokens)}

        async def events():
            nonlocal item

            def chunk(delta: dict, finish: str | None = None) -> str:
                return sse(chat_chunk(rid, created, name, delta, finish, req.include_usage))

            try:
                yield chunk({"role": "assistant", "content": ""})
                stream, stats = ToolCallStream(req.tools), None
                try:
                    while item is not END:
                        piece = stream.feed(item.text) if item.text else ""
                        if piece:
                            yield chunk({"content": piece})
                        stats = item.stats or stats
                        item = await _next(pump, cancel)
                except Exception as e:  # the reply has begun: the error is its last event
                    yield sse((e if isinstance(e, ApiError) else ApiError(500, str(e))).body())
                else:
                    rest = stream.finish()
                    if rest:
                        yield chunk({"content": rest})
                    for i, call in enumerate(openai_calls(stream.calls)):
                        yield chunk({"tool_calls": [{"index": i, **call}]})
                    yield chunk({}, finish_reason(stats.finish_reason, bool(stream.calls)))
                    if req.include_usage:
                        yield sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                                   "choices": [], "usage": usage(stats.prompt_tokens, stats.completion_tokens)})
                yield sse("[DONE]")
            finally:  # the client went away (the task is cancelled) or the reply is over
                cancel.set()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionBody, request: Request):
        req = body.request()
        model = served(req.model)
        rid, created, name, cancel = new_id("cmpl"), int(time.time()), model.info.name, threading.Event()
        pump = Pump(lambda put: put(_complete(model, req, cancel)), name="lab-serve")
        choices, used = await _next(pump, cancel, request)
        reply = {"id": rid, "object": "text_completion", "created": created, "model": name, "choices": choices,
                 "usage": usage(*used)}
        if not req.stream:
            return reply

        async def events():  # computed whole, then sent as server-sent events: one chunk per prompt
            for choice in choices:
                yield sse({**reply, "choices": [choice], "usage": None})
            if req.include_usage:
                yield sse({**reply, "choices": []})
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def _complete(model, req, cancel: threading.Event) -> tuple[list[dict], tuple[int, int]]:
    """The choices of a /v1/completions request and its (prompt, completion) token counts."""
    scored = req.logprobs is not None or req.echo
    if scored and not model.capabilities.logprobs:
        raise ApiError(400, f"'logprobs' and 'echo' need a model loaded in this process, and {model.info.name} "
                            "is served from elsewhere.", param="logprobs")
    context = model.info.context_length
    counts = [model.count_tokens(p) for p in req.prompts]
    for i, n in enumerate(counts):
        if n + req.max_tokens > context:
            raise ApiError(400, f"Prompt {i + 1} ({n:,} tokens) plus max_tokens ({req.max_tokens:,}) exceeds "
                                f"{model.info.name}'s context of {context:,} tokens; shorten it.", param="prompt")
    top = req.logprobs or 0
    choices, generated = [], 0
    if not scored and req.max_tokens:
        params = replace(req.params, max_new_tokens=req.max_tokens)
        for i, c in enumerate(model.generate(req.prompts, params, cancel)):
            choices.append({"index": i, "text": c.text, "logprobs": None,
                            "finish_reason": finish_reason(c.finish_reason)})
            generated += c.completion_tokens
        return choices, (sum(counts), generated)
    for i, prompt in enumerate(req.prompts):
        text, lp, reason = "", TokenLogprobs(), "length"
        if req.max_tokens:
            params = replace(req.params, max_new_tokens=req.max_tokens,
                             seed=None if req.params.seed is None else req.params.seed + i)
            out = model.generate_logprobs(prompt, params, top, cancel)
            text, lp, reason = out.text, out.logprobs, out.finish_reason
            generated += out.completion_tokens
        if req.echo:
            if req.logprobs is not None:
                lp = model.prompt_logprobs(prompt, top).extend(lp, offset=len(prompt))
            text = prompt + text
        choices.append({"index": i, "text": text, "logprobs": lp.to_openai() if req.logprobs is not None else None,
                        "finish_reason": finish_reason(reason)})
    return choices, (sum(counts), generated)


def launch_with_api(demo, manager, *, host: str, port: int, api_key: str | None = None, **gradio_kwargs) -> None:
    """Serve the Gradio page and the /v1 routes on one port (`python app.py --api`): the page is mounted
    onto the API's FastAPI app, which uvicorn runs. `gradio_kwargs` go to `gr.mount_gradio_app`."""
    import gradio as gr
    import uvicorn

    app = build_api(manager, api_key)
    app = gr.mount_gradio_app(app, demo, path="/", server_name=host, server_port=port, **gradio_kwargs)
    print(f"* Running on local URL:  http://{host}:{port}/  (OpenAI-compatible API at /v1)", file=sys.stderr,
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=GRACE_S)


def build_parser() -> argparse.ArgumentParser:
    from lab.cli import add_model_flags

    p = argparse.ArgumentParser(prog="python -m lab.serve",
                                description="Serve a model over an OpenAI-compatible API (/v1/chat/completions, "
                                            "/v1/completions, /v1/models).")
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind; the default serves this machine only")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on every /v1 request")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lab.cli import load_request
    from lab.models.manager import ModelManager

    manager = ModelManager()
    try:
        print("Loading model…", file=sys.stderr, flush=True)
        model = manager.load(load_request(args))
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    print(f"Loaded {model.info.summary()}\nServing http://{args.host}:{args.port}/v1 (model '{model.info.name}')"
          f"{', API key required' if args.api_key else ''}", file=sys.stderr, flush=True)
    uvicorn.run(build_api(manager, args.api_key), host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=GRACE_S)
    return 0

