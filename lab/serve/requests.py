"""The request side of OpenAI's wire format for `lab.serve`: bodies read into the model layer's terms
(replies are written by `lab.serve.replies`).

    req = parse_chat(body)              # ApiError(400, one sentence) on anything invalid

Sampling fields map onto `SamplingParams`: temperature (0 is greedy), top_p, max_tokens or
max_completion_tokens, seed, stop, and the extensions top_k and repetition_penalty (vLLM's names). A
field left out takes the model's own default (`SamplingParams()`, Qwen2.5-Instruct's generation_config),
as vLLM does, not OpenAI's temperature 1. Unknown fields are ignored; known fields with values this
server cannot honour (n > 1, a non-zero frequency or presence penalty, logit_bias, a forced tool) are
refused with one sentence rather than silently dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lab.chat.conversation import parse_history
from lab.chat.json_mode import check_schema
from lab.chat.tools import load_tools
from lab.errors import LabError
from lab.interface import Message, SamplingParams
from lab.serve.replies import ApiError

MAX_LOGPROBS = 20


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


# ---- reading requests ---------------------------------------------------------------------------
def _number(body: dict, name: str, kind=float, low: float | None = None, high: float | None = None):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise bad(f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {json.dumps(value)}.", name)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise bad(f"'{name}' must be {span}, got {value}.", name)
    return kind(value)


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad("'stop' must be a string or a list of strings.", "stop")
    return tuple(s for s in stop if s)


def _refuse_unsupported(body: dict) -> None:
    n = _number(body, "n", int, 1)
    if n is not None and n > 1:
        raise bad(f"'n' must be 1 on this server (one generation at a time), got {n}.", "n")
    best_of = _number(body, "best_of", int, 1)
    if best_of is not None and best_of > 1:
        raise bad(f"'best_of' must be 1 on this server, got {best_of}.", "best_of")
    for name in ("frequency_penalty", "presence_penalty"):
        if _number(body, name, float, -2, 2):
            raise bad(f"'{name}' is not supported; use 'repetition_penalty' (1.0 is off).", name)
    if body.get("logit_bias"):
        raise bad("'logit_bias' is not supported.", "logit_bias")


def sampling(body: dict, default_max: int | None) -> tuple[SamplingParams, int | None]:
    """The request's sampling settings, and its max_tokens (None when left out: the caller decides)."""
    _refuse_unsupported(body)
    max_tokens = _number(body, "max_completion_tokens", int, 0)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int, 0)
    defaults = SamplingParams()
    values = {
        "temperature": _number(body, "temperature", float, 0),
        "top_p": _number(body, "top_p", float, 0, 1),
        "top_k": _number(body, "top_k", int, -1),
        "repetition_penalty": _number(body, "repetition_penalty", float, 0),
        "seed": _number(body, "seed", int),
    }
    if values["top_k"] == -1:  # vLLM's "off"
        values["top_k"] = 0
    kept = {k: v for k, v in values.items() if v is not None}
    try:
        params = SamplingParams(**{**defaults.to_dict(), **kept, "stop": _stop(body),
                                   "max_new_tokens": max(1, max_tokens or default_max or 1)})
    except ValueError as e:
        raise bad(f"A sampling setting is out of range: {e}.") from None
    if body.get("ignore_eos") is True:
        params.ignore_eos = True
    return params, max_tokens


def include_usage(body: dict) -> bool:
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("'stream_options' must be an object like {\"include_usage\": true}.", "stream_options")
    return bool((options or {}).get("include_usage"))


def _response_format(value) -> dict | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            raise bad("'response_format' of type json_schema needs 'json_schema': {\"name\", \"schema\"}.",
                      "response_format")
        try:
            check_schema(schema)
        except LabError as e:
            raise bad(str(e), "response_format") from None
        return {"type": "json_schema", "json_schema": {"name": spec.get("name", "reply"), "schema": schema}}
    raise bad("'response_format' must have type text, json_object or json_schema.", "response_format")


def _tools(body: dict) -> list[dict] | None:
    tools, choice = body.get("tools"), body.get("tool_choice", "auto")
    if choice not in ("auto", "none", None):
        raise bad("'tool_choice' must be \"auto\" or \"none\" on this server; the model decides when to call "
                  "a tool.", "tool_choice")
    if not tools or choice == "none":
        return None
    try:
        return load_tools(json.dumps(tools))
    except LabError as e:
        raise bad(str(e), "tools") from None


@dataclass
class ChatRequest:
    model: str | None
    messages: list[Message]
    params: SamplingParams
    max_tokens: int | None  # None: what the context leaves after the prompt
    tools: list[dict] | None = None
    stream: bool = False
    include_usage: bool = False


def parse_chat(body: dict) -> ChatRequest:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad("'messages' must be a non-empty list of {\"role\", \"content\"} messages.", "messages")
    if any(isinstance(m, dict) and m.get("role") == "developer" for m in raw):
        raw = [{**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m for m in raw]
    try:
        system, history = parse_history(raw)
    except LabError as e:
        raise bad(str(e).replace("of the history", "of 'messages'"), "messages") from None
    if not history:
        raise bad("'messages' needs a user message after the system message.", "messages")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad("Log-probabilities are served by /v1/completions ('logprobs' there), not by chat completions.",
                  "logprobs")
    params, max_tokens = sampling(body, None)
    if max_tokens == 0:
        raise bad("'max_tokens' must be at least 1 for a chat completion.", "max_tokens")
    params.response_format = _response_format(body.get("response_format"))
    tools = _tools(body)
    if tools and params.response_format:
        raise bad("'response_format' constrains the whole reply, so it cannot be combined with 'tools'.",
                  "response_format")
    # Sent as given: without a system message Qwen's template adds its own default one.
    messages = ([{"role": "system", "content": system}] if system is not None else []) + history
    return ChatRequest(_model(body), messages, params, max_tokens, tools, bool(body.get("stream")),
                       include_usage(body))


@dataclass
class CompletionRequest:
    model: str | None
    prompts: list[str]
    params: SamplingParams
    max_tokens: int  # 0: nothing is generated (with echo: score the prompt)
    echo: bool = False
    logprobs: int | None = None  # top alternatives per token; None: no log-probabilities
    stream: bool = False
    include_usage: bool = False


def parse_completion(body: dict) -> CompletionRequest:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise bad("'prompt' must be a string or a non-empty list of strings (token ids are not accepted).", "prompt")
    if body.get("suffix"):
        raise bad("'suffix' is not supported.", "suffix")
    params, max_tokens = sampling(body, 16)  # OpenAI's default for completions
    logprobs = _number(body, "logprobs", int, 0, MAX_LOGPROBS)
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise bad("'echo' must be true or false.", "echo")
    return CompletionRequest(_model(body), prompts, params, 16 if max_tokens is None else max_tokens, echo, logprobs,
                             bool(body.get("stream")), include_usage(body))


def _model(body: dict) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("'model' must be a string.", "model")
    return model
