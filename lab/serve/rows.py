"""The rows of a generating request streamed as the model makes them: a chat reply, a chat request's `n` rows and
a completion's choices, each a row of the model's running batch (`stream_many` where the model has
`capabilities.rows`, so other clients' replies decode beside them), answered whole or as server-sent events.

While a row waits for room in the batch, a stream carries SSE comments (": waiting, 2 in line"), which clients
skip; past the queue's limit the request is refused with 429 before anything is sent. The work runs off the event
loop in a `Pump`; a client that goes away sets `cancel`, which frees its rows at the next decode step.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import traceback
from dataclasses import replace

from fastapi import Request
from fastapi.responses import StreamingResponse

from lab.engine.scheduler import Busy
from lab.errors import LabError
from lab.pump import END, Pump
from lab.serve.replies import ApiError, ToolCallStream, chat_chunk, chat_message, finish_reason, openai_calls, sse, usage
from lab.serve.work import chat_budget, row_seeds


def busy(e: Busy) -> ApiError:
    return ApiError(429, str(e), type="requests", code="rate_limit_exceeded", headers={"Retry-After": "1"})


def pump(work) -> Pump:
    """`work(put)` in a thread of its own, its items handed to this event loop (call it in a route)."""
    return Pump(work, name="lab-serve", loop=asyncio.get_running_loop())


async def next_item(pump: Pump):
    """The work's next item or END; its LabError comes back as a 400 (Busy: 429)."""
    try:
        return await pump.aget()
    except Busy as e:
        raise busy(e) from None
    except LabError as e:
        raise ApiError(400, str(e)) from None


@contextlib.asynccontextmanager
async def cancelled_on_disconnect(request: Request, cancel: threading.Event):
    """While the block runs, a client that goes away sets `cancel` at once, so the model stops at its next decode
    step. The route has read the body, so the next message the server gives is the disconnect. Whatever ends the
    block with an error sets `cancel` too."""
    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        cancel.set()

    task = asyncio.create_task(watch())
    try:
        yield
    except BaseException:
        cancel.set()
        raise
    finally:
        task.cancel()


async def whole(request: Request, work):
    """`work(cancel)` run off the event loop to its end, stopped when the client goes away."""
    cancel = threading.Event()
    async with cancelled_on_disconnect(request, cancel):
        return await next_item(pump(lambda put: put(work(cancel))))


def failed(e: BaseException) -> ApiError:
    """A failure that is not the client's, as one sentence (the traceback goes to the server's log, not the client)."""
    return ApiError(500, f"The server failed on this request ({type(e).__name__}); its log has the details.",
                    type="server_error")


def event_stream(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _rows_pump(model, prompts: list, params: list, cancel: threading.Event, tools=None, messages=None) -> Pump:
    def work(put) -> None:
        if messages is not None:  # one chat row: the model's own chat call (tools rendered by it)
            for chunk in model.stream_chat(messages, params[0], cancel, tools=tools):
                put((0, chunk))
        else:
            for item in model.stream_many(prompts, params, cancel):
                put(item)

    return pump(work)


async def _first(pump: Pump, request: Request, cancel: threading.Event, stream: bool, rows: int):
    """The first item (an error before it is a plain error reply); not streamed: every row's (texts, stats)."""
    async with cancelled_on_disconnect(request, cancel):
        item = await next_item(pump)
        if stream:
            return item
        texts, stats = [""] * rows, [None] * rows
        while item is not END:
            r, chunk = item
            texts[r] += chunk.text
            stats[r] = chunk.stats or stats[r]
            item = await next_item(pump)
        return texts, stats


def _waiting(chunk) -> str:
    return f": waiting for room in the batch, {chunk.waiting} in line\n\n"


async def chat(model, req, head: dict, request: Request):
    """A chat request's `n` rows (no log-probabilities), each streamed as the model makes it."""
    cancel, n = threading.Event(), req.n
    params = replace(req.params, max_new_tokens=chat_budget(model, req))
    if n == 1:
        pump = _rows_pump(model, [], [params], cancel, tools=req.tools, messages=req.messages)
    else:  # rows of one prompt; row k with seed + k (work.row_seeds)
        params, _, seeds = row_seeds(params, n)
        prompt = model.render(req.messages, tools=req.tools)
        pump = _rows_pump(model, [prompt] * n, [replace(params, seed=s) for s in seeds], cancel)
    got = await _first(pump, request, cancel, req.stream, n)
    if not req.stream:
        texts, stats = got
        choices = []
        for i, (text, s) in enumerate(zip(texts, stats)):
            message, called = chat_message(text, req.tools)
            choices.append({"index": i, "message": message, "logprobs": None,
                            "finish_reason": finish_reason(s.finish_reason, called)})
        return {**head, "object": "chat.completion", "choices": choices,
                "usage": usage(stats[0].prompt_tokens, sum(s.completion_tokens for s in stats))}

    def chunk(i: int, delta: dict, finish: str | None = None) -> str:
        return sse(chat_chunk(head, delta, finish, req.include_usage, index=i))

    async def events():
        item, streams, stats = got, [ToolCallStream(req.tools) for _ in range(n)], [None] * n
        try:
            for i in range(n):
                yield chunk(i, {"role": "assistant", "content": ""})
            try:
                while item is not END:
                    r, c = item
                    if c.waiting:
                        yield _waiting(c)
                    piece = streams[r].feed(c.text) if c.text else ""
                    if piece:
                        yield chunk(r, {"content": piece})
                    if c.stats is not None:
                        stats[r] = c.stats
                        rest = streams[r].finish()
                        if rest:
                            yield chunk(r, {"content": rest})
                        for k, call in enumerate(openai_calls(streams[r].calls)):
                            yield chunk(r, {"tool_calls": [{"index": k, **call}]})
                        yield chunk(r, {}, finish_reason(c.stats.finish_reason, bool(streams[r].calls)))
                    item = await next_item(pump)
            except Exception as e:  # the reply has begun: the error is its last event
                if not isinstance(e, ApiError):
                    traceback.print_exception(e, file=sys.stderr)
                yield sse((e if isinstance(e, ApiError) else failed(e)).body())
            else:
                if req.include_usage:
                    yield sse({**head, "object": "chat.completion.chunk", "choices": [],
                               "usage": usage(stats[0].prompt_tokens, sum(s.completion_tokens for s in stats))})
            yield sse("[DONE]")
        finally:  # the client went away (the task is cancelled) or the reply is over
            cancel.set()

    return event_stream(events())


async def completion(model, req, reply: dict, prompts: list, prompt_tokens: int, request: Request):
    """A completion's choices (prompt k // n's row k, with seed + k), each a row of the running batch."""
    cancel = threading.Event()
    params, _, seeds = row_seeds(replace(req.params, max_new_tokens=req.max_tokens), len(prompts))
    pump = _rows_pump(model, prompts, [replace(params, seed=s) for s in seeds], cancel)
    got = await _first(pump, request, cancel, req.stream, len(prompts))

    def choice(i: int, text: str, finish: str | None) -> dict:
        return {"index": i, "text": text, "logprobs": None, "finish_reason": finish}

    if not req.stream:
        texts, stats = got
        return {**reply, "choices": [choice(i, t, finish_reason(s.finish_reason)) for i, (t, s) in
                                     enumerate(zip(texts, stats))],
                "usage": usage(prompt_tokens, sum(s.completion_tokens for s in stats))}

    async def events():
        item, made = got, 0
        try:
            try:
                while item is not END:
                    r, c = item
                    if c.waiting:
                        yield _waiting(c)
                    elif c.text or c.stats is not None:
                        finish = None if c.stats is None else finish_reason(c.stats.finish_reason)
                        made += c.stats.completion_tokens if c.stats is not None else 0
                        yield sse({**reply, "choices": [choice(r, c.text, finish)], "usage": None})
                    item = await next_item(pump)
            except Exception as e:
                if not isinstance(e, ApiError):
                    traceback.print_exception(e, file=sys.stderr)
                yield sse((e if isinstance(e, ApiError) else failed(e)).body())
            else:
                if req.include_usage:
                    yield sse({**reply, "choices": [], "usage": usage(prompt_tokens, made)})
            yield sse("[DONE]")
        finally:
            cancel.set()

    return event_stream(events())
