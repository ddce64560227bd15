"""An OpenAI-compatible server over the model layer, so any OpenAI client (the SDKs, Open WebUI,
lm-evaluation-harness) can use a model this project loads, bitsandbytes-quantized ones included.

    python -m lab.serve --model Qwen2.5-7B-Instruct --quant 4bit --port 8000 --api-key secret
    python -m lab.serve --model tiny-random                          # offline, any CPU
    python app.py --api                                              # the same /v1 routes beside the page

Routes: `GET /v1/models`, `POST /v1/chat/completions` (streamed as server-sent events or not; tools;
`response_format` json_object and json_schema, enforced while decoding), `POST /v1/completions` (raw
prompts; `logprobs` and `echo` in OpenAI's legacy shape, from the model's `prompt_logprobs` and `generate_logprobs`), and vLLM's `POST /tokenize`
and `GET /health`. The request's `model` may be left out or name the served model (its name or Hub id,
any case); another name is a 404, as OpenAI answers for a model it does not have. Errors are OpenAI's
{"error": {"message", "type", "param", "code"}} with one sentence: 401 for a missing or wrong key when
`--api-key` is set, 400 for an invalid request (bad JSON, out-of-range values, n > 1, a prompt that
does not fit the context, an invalid schema), 404 for another model, 503 when no model is loaded.

Generation is one request at a time per model (the model layer holds a lock; others wait their turn).
A client that disconnects stops its generation at the next decode step.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import sys
import threading
import time
from dataclasses import replace

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from lab.errors import LabError
from lab.serve.replies import (ApiError, ToolCallStream, chat_chunk, chat_message, finish_reason, new_id, openai_calls,
                               sse, usage)
from lab.serve.requests import parse_chat, parse_completion

GRACE_S = 3  # on Ctrl-C or SIGTERM, open streams (a page's event stream, a long reply) get this long to end


def _api_error(e: BaseException) -> BaseException:
    """What a failure in the model layer means for the client: a LabError is the request's fault."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, LabError):
        return ApiError(400, str(e))
    return e


class _Pump:
    """Runs a blocking generator in its own thread and hands its items to the event loop, in order."""

    def __init__(self, produce, cancel: threading.Event) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel = cancel
        threading.Thread(target=self._run, args=(produce,), name="lab-serve", daemon=True).start()

    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutting down): stop generating
            self.cancel.set()

    def _run(self, produce) -> None:
        try:
            for item in produce():
                self._put(("item", item))
            self._put(("end", None))
        except BaseException as e:  # raised again in the request's task
            self._put(("error", e))

    async def get(self, request: Request | None = None):
        """The next (kind, item); with `request`, a client that went away cancels the generation."""
        while True:
            try:
                return await asyncio.wait_for(self.queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    self.cancel.set()


def build_api(manager, api_key: str | None = None) -> FastAPI:
    """The /v1 routes over a `lab.models.manager.ModelManager` (whatever model it holds when a request comes)."""
    app = FastAPI(title="Qwen Lab OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)
    started = int(time.time())

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "The API key is missing or wrong; send it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")

    auth = [Depends(check_key)]

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

    async def read_body(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return body

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
    async def tokenize(request: Request) -> dict:
        body = await read_body(request)
        model = served(body.get("model"))

        def count() -> dict:
            if isinstance(body.get("messages"), list):
                req = parse_chat({"messages": body["messages"], "tools": body.get("tools")})
                text = model.render(req.messages, add_generation_prompt=body.get("add_generation_prompt", True),
                                    tools=req.tools)
            elif isinstance(body.get("prompt"), str):
                text = body["prompt"]
            else:
                raise ApiError(400, "Send 'prompt' (a string) or 'messages' to count tokens.")
            out = {"count": model.count_tokens(text), "max_model_len": model.info.context_length}
            if model.capabilities.token_ids:
                out["tokens"] = model.encode(text)
            return out

        return await asyncio.to_thread(_run_user, count)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(request: Request):
        req = parse_chat(await read_body(request))
        model = served(req.model)
        rid, created, name, cancel = new_id("chatcmpl"), int(time.time()), model.info.name, threading.Event()

        def produce():
            max_tokens = req.max_tokens
            if max_tokens is None:  # as vLLM: whatever the context leaves after the prompt
                used = model.count_chat_tokens(req.messages, req.tools)
                max_tokens = model.info.context_length - used
                if max_tokens < 1:
                    raise LabError(f"The messages take {used:,} tokens, which fills {name}'s context of "
                                   f"{model.info.context_length:,} tokens; shorten them.")
            params = replace(req.params, max_new_tokens=max_tokens)
            yield from model.stream_chat(req.messages, params, cancel, tools=req.tools)

        pump = _Pump(produce, cancel)
        kind, item = await pump.get(request)
        if kind == "error":  # before the first token: a plain error reply, not a broken stream
            raise _api_error(item)
        if not req.stream:
            text, stats = "", None
            while kind == "item":
                text, stats = text + item.text, item.stats or stats
                kind, item = await pump.get(request)
            if kind == "error":
                raise _api_error(item)
            message, called = chat_message(text, req.tools)
            return {"id": rid, "object": "chat.completion", "created": created, "model": name,
                    "choices": [{"index": 0, "message": message, "logprobs": None,
                                 "finish_reason": finish_reason(stats.finish_reason, called)}],
                    "usage": usage(stats.prompt_tokens, stats.completion_tokens)}

        async def events():
            nonlocal kind, item

            def chunk(delta: dict, finish: str | None = None) -> str:
                return sse(chat_chunk(rid, created, name, delta, finish, req.include_usage))

            try:
                yield chunk({"role": "assistant", "content": ""})
                stream, stats = ToolCallStream(req.tools), None
                while kind == "item":
                    piece = stream.feed(item.text) if item.text else ""
                    if piece:
                        yield chunk({"content": piece})
                    stats = item.stats or stats
                    kind, item = await pump.get()
                if kind == "error":
                    error = _api_error(item)
                    yield sse(error.body() if isinstance(error, ApiError) else ApiError(500, str(error)).body())
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
    async def completions(request: Request):
        req = parse_completion(await read_body(request))
        model = served(req.model)
        rid, created, name, cancel = new_id("cmpl"), int(time.time()), model.info.name, threading.Event()

        def produce():
            yield _complete(model, req, cancel)

        pump = _Pump(produce, cancel)
        kind, item = await pump.get(request)
        if kind == "error":
            raise _api_error(item)
        choices, used = item
        body = {"id": rid, "object": "text_completion", "created": created, "model": name, "choices": choices,
                "usage": usage(*used)}
        if not req.stream:
            return body

        async def events():  # computed whole, then sent as server-sent events: one chunk per prompt
            for choice in choices:
                yield sse({**body, "choices": [choice], "usage": None})
            if req.include_usage:
                yield sse({**body, "choices": []})
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def _run_user(fn):
    try:
        return fn()
    except LabError as e:
        raise ApiError(400, str(e)) from None


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
    from lab.interface import TokenLogprobs

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

