"""The reply side of OpenAI's wire format for `lab.serve`: errors, usage, finish reasons, chat messages with
tool calls, stream chunks and server-sent events, as OpenAI's API and its SDKs expect them.

    raise ApiError(404, "The model 'x' does not exist here.", code="model_not_found")
    head = {"id": rid, "created": created, "model": name, "system_fingerprint": fingerprint(model)}
    yield sse(chat_chunk(head, {"content": "Hi"}))
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from lab.chat.tools import parse_tool_calls
from lab.interface import TOOL_CALL_OPEN as OPEN
from lab.interface import TokenLogprobs


class ApiError(Exception):
    """An error reply: HTTP status and OpenAI's {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers
        self.type = type or {401: "authentication_error", 404: "invalid_request_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def sse(data: dict | str) -> str:
    """One server-sent event: a JSON object, or a literal such as "[DONE]"."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def fingerprint(model) -> str:
    """OpenAI's `system_fingerprint`: which variant of the model answered, as qwen-lab/MODEL/QUANT/DECODE, where
    DECODE is "fast" (lab.engine's decoders), "plain" (Transformers' generate) or "remote" (another server).
    MODEL may hold slashes (a Hub id, a path): read the last two fields from the right."""
    info = model.info
    decode = ("remote" if info.device == "remote" else
              "fast" if getattr(model, "fast_off_reason", "plain") is None else "plain")
    return f"qwen-lab/{info.name}/{info.quant}/{decode}"


def _alternative(token: str, logprob: float) -> dict:
    # The token's text as decoded: a character split over byte-level tokens reads as U+FFFD in each, so its
    # bytes are U+FFFD's (vLLM's rule too), not the raw bytes of the piece.
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(lp: TokenLogprobs, top: int, start: int = 0, end: int | None = None) -> list[dict]:
    """Tokens start..end of a reply in OpenAI's chat shape (`choices[i].logprobs.content`): each {token, logprob,
    bytes, top_logprobs: the `top` likeliest alternatives, likeliest first}."""
    out = []
    for token, value, alts in list(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs))[start:end]:
        best = sorted((alts or {}).items(), key=lambda kv: -kv[1])[:top]
        out.append({**_alternative(token, value), "top_logprobs": [_alternative(t, v) for t, v in best]})
    return out


def finish_reason(reason: str, calls: bool = False) -> str:
    if calls:
        return "tool_calls"
    return "length" if reason == "length" else "stop"  # a cancelled reply only reaches a client that left


def openai_calls(calls) -> list[dict]:
    """`lab.chat.tools.ToolCall`s in OpenAI's wire format, each with a fresh id."""
    return [{**c.to_openai(), "id": f"call_{secrets.token_hex(12)}"} for c in calls]


def chat_message(text: str, tools: list[dict] | None) -> tuple[dict, bool]:
    """The assistant message for a finished reply; with tools, its <tool_call> blocks become `tool_calls`."""
    if tools:
        parsed = parse_tool_calls(text, tools)
        if parsed.calls:
            return {"role": "assistant", "content": parsed.content or None,
                    "tool_calls": openai_calls(parsed.calls)}, True
    return {"role": "assistant", "content": text}, False


def chat_chunk(head: dict, delta: dict, finish: str | None = None, with_usage: bool = False, index: int = 0,
               logprobs: list[dict] | None = None) -> dict:
    """One chunk of a streamed chat reply; `head`: its id, created, model and system_fingerprint."""
    chunk = {**head, "object": "chat.completion.chunk", "choices": [
        {"index": index, "delta": delta, "logprobs": None if logprobs is None else {"content": logprobs},
         "finish_reason": finish}]}
    if with_usage:
        chunk["usage"] = None  # OpenAI's shape: null on every chunk but the last, which carries the counts
    return chunk


@dataclass
class ToolCallStream:
    """Streams a reply's text until a <tool_call> block begins; the calls are read from the whole
    reply at the end and sent as `tool_calls` deltas (text that may open a block is held back)."""

    tools: list[dict] | None
    text: str = ""
    sent: int = 0
    calling: bool = False
    calls: list = field(default_factory=list)

    def feed(self, piece: str) -> str:
        self.text += piece
        if not self.tools:
            self.sent = len(self.text)
            return piece
        if self.calling:
            return ""
        at = self.text.find(OPEN, self.sent)
        if at >= 0:
            self.calling = True
            out, self.sent = self.text[self.sent:at], at
            return out
        hold = next((k for k in range(min(len(OPEN) - 1, len(self.text)), 0, -1) if OPEN.startswith(self.text[-k:])),
                    0)
        out, self.sent = self.text[self.sent:len(self.text) - hold], len(self.text) - hold
        return out

    def finish(self) -> str:
        """The text not sent yet (without well-formed call blocks); sets `calls`."""
        rest = self.text[self.sent:]
        if not self.tools:
            return rest
        parsed = parse_tool_calls(rest, self.tools)
        self.calls = parsed.calls
        return parsed.content if parsed.calls else rest
