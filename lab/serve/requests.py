"""The request bodies of `lab.serve`: pydantic models that FastAPI validates, read into the model layer's
terms (`ChatRequest`, `CompletionRequest`). Replies are written by `lab.serve.replies`.

    async def route(body: ChatCompletionBody): req = body.request()    # FastAPI validates the body
    req = parse_chat(body_dict)                                         # the same without FastAPI
    raise api_error(e.errors(), ChatCompletionBody)                     # a ValidationError as one sentence

Sampling fields map onto `SamplingParams`: temperature (0 is greedy), top_p, max_tokens or
max_completion_tokens, seed, stop, and vLLM's top_k (-1 is off) and repetition_penalty. Every number is checked by
the project's one rule (`lab.interface.LIMITS`: finite, in range), as the page and the CLIs check theirs. A field left out
takes the model's own default (`SamplingParams()`, Qwen2.5-Instruct's generation_config), as vLLM does, not
OpenAI's temperature 1. Unknown fields are ignored; known ones this server cannot honour (best_of > 1, a non-zero
frequency or presence penalty, logit_bias) are refused with one sentence, not dropped. `n` (1 to N_MAX) asks for
that many rows of one request: row k runs with seed + k (the request's seed, else one drawn), so it is the reply
an n = 1 request with that seed gets. A completion's prompt may be token ids (a list of ints, a list of such lists).
Text that is not valid Unicode (a lone surrogate, which JSON's \\ud800 escapes can spell) is refused wherever it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar

from annotated_types import Ge, Le
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError,
                      ValidationInfo, WithJsonSchema, field_validator, model_validator)
from pydantic_core import PydanticCustomError, core_schema

from lab.chat.conversation import parse_history
from lab.chat.json_mode import check_schema
from lab.chat.tools import forced_call, load_tools
from lab.errors import LabError
from lab.interface import LIMITS, Message, SamplingParams, check_number, lone_surrogate
from lab.serve.replies import ApiError

REFUSED = "refused"  # the type of a validation error whose message is already the reply's sentence


def refuse(sentence: str, param: str | None = None) -> PydanticCustomError:
    """A validation error that `api_error` passes on as it is; `param` defaults to the field being validated."""
    # pydantic fills "{param}" in the sentence from this context; no sentence spells it.
    return PydanticCustomError(REFUSED, sentence, {"param": param} if param else None)


def unsupported(sentence: str, param: str | None = None) -> AfterValidator:
    """Field metadata: refuse any value but a falsy one (null, 0, false, empty) with `sentence`."""

    def check(value):
        if value:
            raise refuse(sentence, param)
        return value

    return AfterValidator(check)


@dataclass(frozen=True)
class limited:  # noqa: N801  (field metadata, read like a function)
    """Field metadata: the number's range from `lab.interface.LIMITS[field]`, refused in that rule's sentence and
    stated in the OpenAPI schema; `name`: the API's name for it; `off`: a value below the range that is accepted
    as it is (top_k's -1)."""

    field: str
    name: str | None = None
    off: int | None = None

    def check(self, value):
        if value is None or (self.off is not None and value == self.off):
            return value
        name = self.name or self.field
        try:
            return check_number(self.field, value, f"'{name}'")
        except ValueError as e:
            if self.off is not None:
                raise refuse(f"'{name}' must be {self.off} (off) or {LIMITS[self.field].describe()}, "
                             f"got {value!r}.") from None
            raise refuse(f"{e}.") from None

    def __get_pydantic_core_schema__(self, source, handler):
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema, handler):
        out, limit = handler(schema), LIMITS[self.field]
        low = min(x for x in (self.off, limit.also, limit.low) if x is not None)
        out.update({"exclusiveMinimum" if limit.above and low == limit.low else "minimum": low, "maximum": limit.high})
        return out


@dataclass(frozen=True)
class Otherwise:
    """Field metadata: the sentence for a value of the wrong type or shape (numbers say their own)."""

    sentence: str


def _whole(value):
    # JSON has one kind of number: 2.0 is the integer 2, which strict mode alone refuses (2.5 it still does).
    return int(value) if isinstance(value, float) and value.is_integer() else value


Int = Annotated[int, BeforeValidator(_whole)]
MESSAGES = "'messages' must be a non-empty list of {\"role\", \"content\"} messages."
TOOL_CHOICE_SCHEMA = {"anyOf": [{"enum": ["auto", "none", "required"]}, {
    "type": "object", "required": ["type", "function"],
    "properties": {"type": {"const": "function"}, "function": {
        "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}}]}
N_MAX = 16  # rows of one request; sampled rows run one after another (each with its own seed)
MESSAGES_SCHEMA = {"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["role", "content"],
    "properties": {"role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
                   "content": {"type": ["string", "null"]}}}}
PROMPT = ("'prompt' must be a string, a non-empty list of strings, a non-empty list of token ids (integers) or a list "
          "of such lists.")
TOOL_CHOICE = ("'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": "
               "{\"name\": NAME}}.")


class _Body(BaseModel):
    # Strict: true is not 1, "2" is not 2 and 2 is not "2". Unknown fields are ignored (clients send extensions).
    model_config = ConfigDict(extra="ignore", strict=True)

    model: Annotated[str | None, Otherwise("'model' must be a string.")] = None

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data):
        if isinstance(data, dict) and lone_surrogate(data):
            key = next((k for k, v in data.items() if lone_surrogate(v)), None)
            clean = isinstance(key, str) and not lone_surrogate(key)
            raise refuse(f"{repr(key) if clean else 'The request body'} holds text that is not valid Unicode (a lone "
                         "surrogate, such as \\ud800 unpaired); send UTF-8 text.", key if clean else None)
        return data


class _Sampling(_Body):
    default_max_tokens: ClassVar[int | None] = None  # None: the route decides (a chat: what the context leaves)

    n: Annotated[Int | None, Field(ge=1, le=N_MAX)] = None
    best_of: Annotated[Int | None, Field(ge=1)] = None
    frequency_penalty: Annotated[float | None, limited("frequency_penalty"), unsupported(
        "'frequency_penalty' is not supported; use 'repetition_penalty' (1.0 is off).")] = None
    presence_penalty: Annotated[float | None, limited("presence_penalty"), unsupported(
        "'presence_penalty' is not supported; use 'repetition_penalty' (1.0 is off).")] = None
    logit_bias: Annotated[Any, unsupported("'logit_bias' is not supported.")] = None
    max_completion_tokens: Annotated[Int | None, limited("max_tokens", "max_completion_tokens")] = None
    max_tokens: Annotated[Int | None, limited("max_tokens")] = None  # 0: a completion scores its prompt only
    temperature: Annotated[float | None, limited("temperature")] = None
    top_p: Annotated[float | None, limited("top_p")] = None
    top_k: Annotated[Int | None, limited("top_k", off=-1)] = None
    repetition_penalty: Annotated[float | None, limited("repetition_penalty")] = None
    seed: Annotated[Int | None, limited("seed")] = None
    stop: Annotated[str | list[str] | None, Otherwise("'stop' must be a string or a list of strings.")] = None
    ignore_eos: Any = None  # only true turns it on
    stream: Annotated[bool | None, Otherwise("'stream' must be true or false.")] = False
    stream_options: Annotated[dict | None, Otherwise(
        "'stream_options' must be an object like {\"include_usage\": true}.")] = None
    _params: SamplingParams = PrivateAttr()

    @field_validator("best_of")
    @classmethod
    def _one_at_a_time(cls, value):
        if value is not None and value > 1:
            raise refuse(f"'best_of' must be 1 on this server (use 'n' for several rows), got {value}.")
        return value

    @model_validator(mode="after")
    def _sampling(self):
        given = {"temperature": self.temperature, "top_p": self.top_p, "repetition_penalty": self.repetition_penalty,
                 "top_k": 0 if self.top_k == -1 else self.top_k, "seed": self.seed}  # -1: vLLM's "off"
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        try:
            self._params = SamplingParams(**{k: v for k, v in given.items() if v is not None},
                                          stop=tuple(s for s in stop if s), ignore_eos=self.ignore_eos is True,
                                          max_new_tokens=max(1, self.asked_max_tokens or self.default_max_tokens or 1))
        except ValueError as e:
            raise refuse(f"A sampling setting is out of range: {e}.") from None
        return self

    @property
    def asked_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


def _messages(raw: list) -> list[Message]:
    """OpenAI's messages as the chat template reads them (the developer role is the system one)."""
    if not raw:
        raise refuse(MESSAGES)
    raw = [{**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m for m in raw]
    try:
        system, history = parse_history(raw)
    except LabError as e:
        raise refuse(str(e).replace("of the history", "of 'messages'")) from None
    if not history:
        raise refuse("'messages' needs a user message after the system message.")
    # Sent as given: without a system message Qwen's template adds its own default one.
    return ([{"role": "system", "content": system}] if system is not None else []) + history


def _tool_choice(value):
    """"auto", "none", "required", or the name of the function to call (OpenAI's {"type": "function", ...})."""
    if value in ("auto", "none", "required", None):
        return value
    fn = value.get("function") if isinstance(value, dict) and value.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        raise refuse(TOOL_CHOICE)
    return {"name": name}


def _tools(tools, info: ValidationInfo) -> list[dict] | None:
    """Tools in the chat template's format; None without any, or when `tool_choice` is "none"."""
    if not tools or info.data.get("tool_choice") == "none":
        return None
    try:
        return load_tools(json.dumps(tools))
    except LabError as e:
        raise refuse(str(e)) from None


def _response_format(value) -> dict | None:
    kind = value.get("type") if isinstance(value, dict) else None
    if value is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise refuse("'response_format' must have type text, json_object or json_schema.")
    spec = value.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if schema is None:
        raise refuse("'response_format' of type json_schema needs 'json_schema': {\"name\", \"schema\"}.")
    try:
        check_schema(schema)
    except LabError as e:
        raise refuse(str(e)) from None
    return {"type": "json_schema", "json_schema": {"name": spec.get("name", "reply"), "schema": schema}}


@dataclass
class ChatRequest:
    model: str | None
    messages: list[Message]
    params: SamplingParams
    max_tokens: int | None  # None: what the context leaves after the prompt
    tools: list[dict] | None = None
    stream: bool = False
    include_usage: bool = False
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token, with `logprobs`


class ChatCompletionBody(_Sampling):
    """POST /v1/chat/completions. After validation `messages`, `tools` and `response_format` are normalized."""

    messages: Annotated[list, Otherwise(MESSAGES), AfterValidator(_messages), WithJsonSchema(MESSAGES_SCHEMA)]
    logprobs: Annotated[bool | None, Otherwise("'logprobs' must be true or false.")] = None
    top_logprobs: Annotated[Int | None, limited("logprobs", "top_logprobs")] = None
    response_format: Annotated[Any, AfterValidator(_response_format)] = None
    tool_choice: Annotated[Any, AfterValidator(_tool_choice), WithJsonSchema(TOOL_CHOICE_SCHEMA)] = "auto"
    tools: Annotated[Any, AfterValidator(_tools)] = None  # None with tool_choice "none"
    _forced: dict | None = PrivateAttr(None)  # the forced call's response_format (tool_choice required or named)

    @model_validator(mode="after")
    def _chat(self):
        if self.asked_max_tokens == 0:
            raise refuse("'max_tokens' must be at least 1 for a chat completion.", "max_tokens")
        if self.tools and self.response_format:
            raise refuse("'response_format' constrains the whole reply, so it cannot be combined with 'tools'.",
                         "response_format")
        if self.top_logprobs and not self.logprobs:
            raise refuse("'top_logprobs' needs 'logprobs': true.", "top_logprobs")
        if self.tool_choice == "required" or isinstance(self.tool_choice, dict):
            if not self.tools:
                raise refuse("'tool_choice' asks for a tool call, so send the functions in 'tools'.", "tool_choice")
            try:
                self._forced = forced_call(self.tools, self.tool_choice.get("name")
                                           if isinstance(self.tool_choice, dict) else None)
            except LabError as e:
                raise refuse(str(e), "tool_choice") from None
        return self

    def request(self) -> ChatRequest:
        params = replace(self._params, response_format=self._forced or self.response_format)
        return ChatRequest(self.model, self.messages, params, self.asked_max_tokens, self.tools, bool(self.stream),
                           self.include_usage, self.n or 1, bool(self.logprobs), self.top_logprobs or 0)


@dataclass
class CompletionRequest:
    model: str | None
    prompts: list[str | list[int]]  # text, or token ids
    params: SamplingParams
    max_tokens: int  # 0: nothing is generated (with echo: score the prompt)
    echo: bool = False
    logprobs: int | None = None  # top alternatives per token; None: no log-probabilities
    stream: bool = False
    include_usage: bool = False
    n: int = 1  # rows per prompt: choice k is prompt k // n


class CompletionBody(_Sampling):
    """POST /v1/completions: raw prompts, without the chat template."""

    default_max_tokens: ClassVar[int] = 16  # OpenAI's default for completions

    # OpenAI's four shapes: text, texts, token ids, lists of token ids (each checked against the vocabulary later)
    prompt: Annotated[str | Annotated[list[str], Field(min_length=1)] | Annotated[list[Int], Field(min_length=1)]
                      | Annotated[list[Annotated[list[Int], Field(min_length=1)]], Field(min_length=1)],
                      Otherwise(PROMPT)]
    suffix: Annotated[Any, unsupported("'suffix' is not supported.")] = None
    logprobs: Annotated[Int | None, limited("logprobs")] = None
    echo: Annotated[bool, Otherwise("'echo' must be true or false.")] = False

    def request(self) -> CompletionRequest:
        asked = self.asked_max_tokens
        one = isinstance(self.prompt, str) or isinstance(self.prompt[0], int)  # a text, or one prompt's ids
        return CompletionRequest(self.model, [self.prompt] if one else self.prompt,
                                 self._params, self.default_max_tokens if asked is None else asked, self.echo,
                                 self.logprobs, bool(self.stream), self.include_usage, self.n or 1)


class DetokenizeBody(_Body):
    """vLLM's POST /detokenize: token ids back to text."""

    tokens: Annotated[list[Int], Otherwise("'tokens' must be a list of token ids (integers).")]


class TokenizeBody(_Body):
    """vLLM's POST /tokenize: `prompt` as it is, or `messages` (and `tools`) through the chat template."""

    prompt: Any = None
    # Anything but a list of messages counts `prompt` instead, and then `tools` are not read.
    messages: Annotated[Any, AfterValidator(lambda value: _messages(value) if isinstance(value, list) else None)] = None
    tools: Annotated[Any, AfterValidator(lambda value, info: _tools(value, info) if info.data.get("messages")
                                         else None)] = None
    add_generation_prompt: Any = True

    @model_validator(mode="after")
    def _something(self):
        if self.messages is None and not isinstance(self.prompt, str):
            raise refuse("Send 'prompt' (a string) or 'messages' to count tokens.")
        return self


def api_error(errors: list[dict], model: type[BaseModel] | None) -> ApiError:
    """The first of pydantic's (or FastAPI's) validation errors as a 400 with one sentence; a number's bounds
    and a field's own sentence (`Otherwise`) are read from `model`'s field metadata."""
    error = errors[0]
    loc = tuple(error.get("loc", ()))
    loc = loc[1:] if loc[:1] == ("body",) else loc  # FastAPI's errors say where: ("body", field, ...)
    name = loc[0] if loc and isinstance(loc[0], str) else None
    kind, value = error["type"], error.get("input")
    if kind == REFUSED:
        return ApiError(400, error["msg"], param=(error.get("ctx") or {}).get("param", name))
    if kind == "json_invalid" or (name is None and kind == "missing"):
        return ApiError(400, "The request body is not valid JSON.")
    if name is None:
        if isinstance(value, bytes):  # FastAPI reads a body as JSON only when its Content-Type says so
            return ApiError(400, "The request body was not sent as JSON; send it with 'Content-Type: "
                                 "application/json'.")
        return ApiError(400, "The request body must be a JSON object.")
    field = model.model_fields.get(name) if model is not None else None
    meta = field.metadata if field is not None else []
    if kind in ("greater_than_equal", "less_than_equal"):
        low = next((m.ge for m in meta if isinstance(m, Ge)), None)
        high = next((m.le for m in meta if isinstance(m, Le)), None)
        span = (f"between {low:g} and {high:g}" if low is not None and high is not None
                else f"at least {low:g}" if low is not None else f"at most {high:g}")
        return ApiError(400, f"'{name}' must be {span}, got {value}.", param=name)
    if kind in ("int_type", "int_from_float", "float_type"):
        what = "a number" if kind == "float_type" else "an integer"
        return ApiError(400, f"'{name}' must be {what}, got {json.dumps(value, default=str)}.", param=name)
    said = next((m.sentence for m in meta if isinstance(m, Otherwise)), None)
    return ApiError(400, said or f"'{name}' is not valid: {error['msg']}.", param=name)


def read(model: type[BaseModel], body: dict) -> BaseModel:
    """`body` validated as `model`; ApiError(400, one sentence) when it is not."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise api_error(e.errors(), model) from None


def parse_chat(body: dict) -> ChatRequest:
    return read(ChatCompletionBody, body).request()


def parse_completion(body: dict) -> CompletionRequest:
    return read(CompletionBody, body).request()
