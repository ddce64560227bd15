"""The OpenAI-compatible server: FastAPI routes over the model layer, so any OpenAI client (the SDKs, Open WebUI,
lm-evaluation-harness) can use a model this project loads, a bitsandbytes-quantized one included.

    python -m lab.serve --model tiny-random                 # offline, any CPU: http://127.0.0.1:8000/v1
    python -m lab.serve --model Qwen2.5-7B-Instruct --quant 4bit --port 8000 --api-key secret
    python app.py --api                                     # the same routes beside the page

Bodies are read by `lab.serve.requests`, replies written by `lab.serve.replies`; every error, whatever its status
(400, 401, 404, 405, 413, 429, 500, 503), is OpenAI's {"error": {"message", "type", "param", "code"}} with one sentence.
Replies are rows of the model's running batch (lab.serve.rows): concurrent requests and a request's `n` rows decode
together, and past the queue's limit a request is refused with 429. A client that disconnects, streaming or not,
frees its rows at the next decode step. With `login` (app.py's --auth), /v1 takes that login as HTTP Basic, besides the key.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import sys
import time
import typing

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match

from lab.errors import LabError
from lab.serve import rows
from lab.serve.replies import (ApiError, ToolCallStream, chat_chunk, chat_logprobs, chat_message, fingerprint,
                               finish_reason, new_id, openai_calls, sse, usage)
from lab.serve.rows import event_stream as _events
from lab.serve.rows import failed as _failed
from lab.serve.rows import next_item as _next
from lab.serve.rows import pump as _pump
from lab.serve.rows import whole
from lab.serve.work import chat_rows, check_completion, complete
from lab.serve.requests import ChatCompletionBody, CompletionBody, DetokenizeBody, TokenizeBody, api_error

GRACE_S = 3  # on Ctrl-C or SIGTERM, open streams (a page's event stream, a long reply) get this long to end
ROUTES = "/v1/chat/completions, /v1/completions, /v1/models, /tokenize, /detokenize, /tokenizer_info and /health"
API_PATHS = ("/v1/", "/tokenize", "/detokenize")  # what the body limit guards (beside the page, Gradio's uploads are its own)
MAX_BODY_BYTES = 16 * 2**20  # a 128K-token conversation is under 1 MiB of text


def _reply(e: ApiError, headers: typing.Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=headers or e.headers)


def _too_large() -> ApiError:
    return ApiError(413, f"The request body is over {MAX_BODY_BYTES // 2**20} MiB; send a shorter one.")


class _BodyLimit:
    """ASGI middleware: an API request body over MAX_BODY_BYTES is a 413, whether it says its length or not. The
    body is read here first (the routes read it whole anyway), then handed on as one message."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PATHS):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return await _reply(_too_large())(scope, receive, send)
        chunks, size, message = [], 0, {"more_body": True}
        while message.get("more_body"):
            message = await receive()
            if message["type"] != "http.request":  # the client left before its body was in
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY_BYTES:
                return await _reply(_too_large())(scope, receive, send)
        body = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return body.pop() if body else await receive()  # then the disconnect, when it comes

        await self.app(scope, replay, send)


def _body_model(request: Request) -> type[BaseModel] | None:
    """The pydantic model the matched route reads its body into (its fields' metadata make the sentences)."""
    endpoint = getattr(request.scope.get("route"), "endpoint", None)
    hints = typing.get_type_hints(endpoint) if endpoint is not None else {}
    return next((t for t in hints.values() if isinstance(t, type) and issubclass(t, BaseModel)), None)


def _login_matches(token: str, login: tuple[str, str]) -> bool:
    try:
        user, _, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(user.encode(), login[0].encode()) & hmac.compare_digest(password.encode(),
                                                                                      login[1].encode())


def build_api(manager, api_key: str | None = None, login: tuple[str, str] | None = None) -> FastAPI:
    """The /v1 routes over a `lab.models.manager.ModelManager` (whatever model it holds when a request comes).
    `api_key`: every route but /health wants 'Authorization: Bearer KEY'; `login` (user, password): they take
    that login as HTTP Basic too (the page's --auth), and with a login and no key, only the login."""
    # Not strict: a body sent without a Content-Type is read as JSON still; one declared as another type is refused.
    app = FastAPI(title="Qwen Lab OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None,
                  strict_content_type=False)
    app.add_middleware(_BodyLimit)
    started = int(time.time())

    def check_key(request: Request) -> None:
        if api_key is None and login is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        scheme = scheme.lower()
        if api_key is not None and scheme == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                              api_key.encode()):
            return
        if login is not None and scheme == "basic" and _login_matches(token, login):
            return
        if login is None:
            raise ApiError(401, "The API key is missing or wrong; send it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")
        key = " or the API key as 'Authorization: Bearer KEY'" if api_key is not None else ""
        raise ApiError(401, f"This API needs the page's login (--auth); send it as HTTP Basic (curl -u USER:PASS){key}.",
                       code="invalid_api_key", headers={"WWW-Authenticate": 'Basic realm="Qwen Lab"'})

    auth = [Depends(check_key)]

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError) -> JSONResponse:
        return _reply(e)

    @app.exception_handler(Exception)
    async def on_failure(request: Request, e: Exception) -> JSONResponse:  # Starlette logs the traceback after
        return _reply(_failed(e))

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

    def unknown(request: Request) -> None:
        """A path under the API's that no route (or no route for this method) answers: 404 or 405, not the page's
        own 404 when the page is mounted beside the API at "/"."""
        allow = sorted({m for r in app.router.routes if r.name != "unknown" and getattr(r, "methods", None)
                        and r.matches(request.scope)[0] != Match.NONE for m in r.methods})
        raise HTTPException(405, headers={"Allow": ", ".join(allow)}) if allow else HTTPException(404)

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

    def tokenizer_of(model):
        if not model.capabilities.token_ids:
            raise ApiError(400, f"{model.info.name} is served from elsewhere, so its tokenizer is not here.")
        return model

    @app.get("/tokenizer_info", dependencies=auth)
    async def tokenizer_info() -> dict:
        model = tokenizer_of(served(None))
        return await _next(_pump(lambda put: put(model.tokenizer_info())))

    @app.post("/detokenize", dependencies=auth)
    async def detokenize(body: DetokenizeBody) -> dict:
        model = tokenizer_of(served(body.model))
        return await _next(_pump(lambda put: put({"prompt": model.decode(body.tokens)})))

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

        return await _next(_pump(lambda put: put(count())))

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatCompletionBody, request: Request):
        req = body.request()
        model = served(req.model)
        if req.logprobs and not model.capabilities.logprobs:
            raise ApiError(400, f"'logprobs' needs a model loaded in this process, and {model.info.name} is served "
                                "from elsewhere.", param="logprobs")
        head = {"id": new_id("chatcmpl"), "created": int(time.time()), "model": model.info.name,
                "system_fingerprint": fingerprint(model)}
        if req.logprobs or (req.n > 1 and not model.capabilities.rows):  # rows computed whole, then sent
            return await _whole_chat(model, req, head, request)
        return await rows.chat(model, req, head, request)

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionBody, request: Request):
        req = body.request()
        model = served(req.model)
        reply = {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
                 "model": model.info.name, "system_fingerprint": fingerprint(model)}
        if model.capabilities.rows and req.max_tokens and req.logprobs is None and not req.echo:
            counts = await whole(request, lambda cancel: check_completion(model, req))
            prompts = [p for p in req.prompts for _ in range(req.n)]
            return await rows.completion(model, req, reply, prompts, sum(counts), request)
        choices, used = await whole(request, lambda cancel: complete(model, req, cancel))
        reply |= {"choices": choices, "usage": usage(*used)}
        if not req.stream:
            return reply

        async def events():  # computed whole, then sent as server-sent events: one chunk per row
            for choice in choices:
                yield sse({**reply, "choices": [choice], "usage": None})
            if req.include_usage:
                yield sse({**reply, "choices": []})
            yield sse("[DONE]")

        return _events(events())

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    # last: the routes above match first
    for path in ("/v1/{rest:path}", "/tokenize", "/detokenize", "/tokenizer_info", "/health"):
        app.add_api_route(path, unknown, methods=methods, include_in_schema=False, name="unknown")
    return app


async def _whole_chat(model, req, head: dict, request: Request):
    """A chat request's rows computed whole, then answered as one reply or, streamed, as each row's events in
    turn: with log-probabilities a chunk per token (its text and its entry), else the row's text at once."""
    made, used = await whole(request, lambda cancel: chat_rows(model, req, cancel))
    total = usage(used, sum(r["tokens"] for r in made))
    top = req.top_logprobs
    if not req.stream:
        choices = []
        for i, r in enumerate(made):
            message, called = chat_message(r["text"], req.tools)
            lp = None if r["logprobs"] is None else {"content": chat_logprobs(r["logprobs"], top)}
            choices.append({"index": i, "message": message, "logprobs": lp,
                            "finish_reason": finish_reason(r["finish"], called)})
        return {**head, "object": "chat.completion", "choices": choices, "usage": total}

    def chunk(i: int, delta: dict, finish: str | None = None, logprobs: list | None = None) -> str:
        return sse(chat_chunk(head, delta, finish, req.include_usage, index=i, logprobs=logprobs))

    async def events():
        for i, r in enumerate(made):
            yield chunk(i, {"role": "assistant", "content": ""})
            stream, lp, text = ToolCallStream(req.tools), r["logprobs"], r["text"]
            if lp is None:
                piece = stream.feed(text)
                if piece:
                    yield chunk(i, {"content": piece})
            else:  # token k's text is text[offset k : offset k+1] (empty for the first bytes of a split character)
                ends = [*lp.text_offset[1:], len(text)]
                for k, (start, end) in enumerate(zip(lp.text_offset, ends)):
                    yield chunk(i, {"content": stream.feed(text[start:end])}, logprobs=chat_logprobs(lp, top, k, k + 1))
            rest = stream.finish()
            if rest:
                yield chunk(i, {"content": rest})
            for c, call in enumerate(openai_calls(stream.calls)):
                yield chunk(i, {"tool_calls": [{"index": c, **call}]})
            yield chunk(i, {}, finish_reason(r["finish"], bool(stream.calls)))
        if req.include_usage:
            yield sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": total})
        yield sse("[DONE]")

    return _events(events())


def launch_with_api(demo, manager, *, host: str, port: int, api_key: str | None = None,
                    auth: tuple[str, str] | None = None, **gradio_kwargs) -> None:
    """Serve the Gradio page and the /v1 routes on one port (`python app.py --api`): the page is mounted
    onto the API's FastAPI app, which uvicorn runs. `auth` (user, password) guards both: the page by its login
    form, /v1 by HTTP Basic with the same login (or `api_key`). `gradio_kwargs` go to `gr.mount_gradio_app`."""
    import uvicorn

    app = build_mounted(demo, manager, api_key=api_key, auth=auth, server_name=host, server_port=port,
                        **gradio_kwargs)
    print(f"* Running on local URL:  http://{host}:{port}/  (OpenAI-compatible API at /v1)", file=sys.stderr,
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=GRACE_S)


def build_mounted(demo, manager, *, api_key: str | None = None, auth: tuple[str, str] | None = None,
                  **gradio_kwargs) -> FastAPI:
    """The API's FastAPI app with the Gradio page mounted at "/" (what `launch_with_api` runs)."""
    import gradio as gr

    app = build_api(manager, api_key, login=auth)
    return gr.mount_gradio_app(app, demo, path="/", auth=auth, **gradio_kwargs)


def build_parser() -> argparse.ArgumentParser:
    from lab.cli import add_model_flags, number

    p = argparse.ArgumentParser(prog="python -m lab.serve",
                                description="Serve a model over an OpenAI-compatible API (/v1/chat/completions, "
                                            "/v1/completions, /v1/models).")
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind; the default serves this machine only")
    p.add_argument("--port", type=number("port"), default=8000)
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on every /v1 request")
    p.add_argument("--max-rows", type=number("batch_size"), default=None,
                   help="replies decoding together at most (default 8, or LAB_MAX_ROWS; fewer if GPU memory is short)")
    p.add_argument("--queue-limit", type=number("limit"), default=None,
                   help="requests that may wait for a row before the next is refused with 429 (default 64)")
    return p


def main(argv: list[str] | None = None) -> int:
    from lab.cli import user_errors

    args = user_errors(build_parser().parse_args)(argv)
    if args == 2:  # a flag's value broke the rule for numbers: its sentence is printed
        return 2
    from lab.cli import load_request
    from lab.models.manager import ModelManager

    manager = ModelManager()
    try:
        print("Loading model…", file=sys.stderr, flush=True)
        model = manager.load(load_request(args))
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if hasattr(model, "set_scheduling"):
        model.set_scheduling(args.max_rows, args.queue_limit)
    import uvicorn

    print(f"Loaded {model.info.summary()}\nServing http://{args.host}:{args.port}/v1 (model '{model.info.name}')"
          f"{', API key required' if args.api_key else ''}", file=sys.stderr, flush=True)
    uvicorn.run(build_api(manager, args.api_key), host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=GRACE_S)
    return 0

