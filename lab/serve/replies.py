"""The reply side of OpenAI's wire format for `lab.serve`: errors, usage, finish reasons, chat messages with
tool calls, stream chunks and server-sent events, as OpenAI's API and its SDKs expect them.

    raise ApiError(404, "The model 'x' does not exist here.", code="model_not_found")
    yield sse(chat_chunk(rid, created, model, {"content": "Hi"}))
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from lab.chat.tools import parse_tool_calls
from lab.interface import TOOL_CALL_OPEN as OPEN


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


def chat_chunk(rid: str, created: int, model: str, delta: dict, finish: str | None = None,
               with_usage: bool = False) -> dict:
    chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
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
