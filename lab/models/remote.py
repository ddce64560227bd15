"""A model behind any OpenAI-compatible server (vLLM, TGI, Ollama, `lab.serve`, OpenAI itself) as a
`lab.interface.ChatModel`, so Chat, Compare and Evaluate work on it as on a local model.

    model = connect("openai:http://127.0.0.1:8000/v1#Qwen2.5-7B-Instruct", api_key="secret")
    model = load_model("openai:http://localhost:11434/v1#qwen2.5:7b-instruct")   # the same, via lab.models

`#MODEL` may be left out when the server lists one model; the key is `api_key`, else LAB_API_KEY, else
OPENAI_API_KEY. Requests go through the official `openai` SDK (`client=` for another transport). Every
sampling value is sent, "off" included (vLLM's top_k -1, repetition_penalty 1.0), so greedy runs equal
the local model's; a server that refuses vLLM's fields (OpenAI does) gets requests without them. `render`
is readable text only (the template is the server's); `count_tokens` asks vLLM's `/tokenize`, else estimates.

`generate` and `score_choices` keep `max_in_flight` requests under way at once (`--concurrency`, LAB_CONCURRENCY,
default 4), each on the SDK's pooled connections: a data-parallel vLLM, or a server that batches concurrent
requests, answers many nearly as fast as one. Logprob benchmarks read the next token's `top_logprobs` (one request
per question when every answer letter is among them), else score each continuation by `echo` with `logprobs`
(the legacy completions API, which vLLM and lab.serve keep); a server with neither (OpenAI's chat-only models,
Ollama) ends a logprob run in one sentence that says to use --mode gen.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from typing import Iterator, Sequence

import openai

from lab.errors import LabError
from lab.interface import TOOL_CALL_CLOSE as CLOSE
from lab.interface import TOOL_CALL_OPEN as OPEN
from lab.interface import (Capabilities, Chunk, Completion, Message, ModelInfo, ReplyClock, SamplingParams,
                           check_number, draw_seed)
from lab.pump import Pump

PREFIX = "openai:"
DEFAULT_CONTEXT = 32768  # when the server's model card gives no max_model_len
WORKERS = 4  # requests in flight at once for generate() and score_choices(), unless told (max_in_flight)
TOP = 20  # log-probabilities asked for at the next position (vLLM's default maximum)
EXTENSIONS = ("top_k", "repetition_penalty", "ignore_eos")  # vLLM's sampling fields beyond OpenAI's
NO_LOGPROBS = "logprob mode needs a server that returns log-probabilities (vLLM and lab.serve do)"


def parse_spec(name: str) -> tuple[str, str | None]:
    """(base URL, model name or None) from `openai:BASE_URL#MODEL`."""
    base, _, model = name.strip()[len(PREFIX):].partition("#")
    base = base.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise LabError(f"'{name}' needs a base URL after openai:, like openai:http://127.0.0.1:8000/v1#MODEL.")
    return base, model.strip() or None


def estimate_tokens(text: str) -> int:
    """An honest guess without the tokenizer: ~4 characters a token in English, one per other character."""
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return max(1, -(-ascii_chars // 4) + (len(text) - ascii_chars))


class RenderedChat(str):
    """A readable rendering of chat messages that remembers them (and the tools), so `generate` sends
    the messages to the chat endpoint rather than this text to the completions endpoint."""

    def __new__(cls, text: str, messages: Sequence[Message], tools: Sequence[dict] | None = None) -> "RenderedChat":
        self = super().__new__(cls, text)
        self.messages, self.tools = list(messages), list(tools) if tools else None
        return self


def _first_line(text: str) -> str:
    return ((text or "").strip().splitlines() or [""])[0][:300].rstrip(".")


def _message(e: openai.APIError) -> str:
    body = e.body.get("message") or e.body.get("detail") or e.body if isinstance(e.body, dict) else e.body
    return _first_line(str(body or e.message))


def _call_text(name: str, arguments) -> str:
    """One call as Qwen writes it, which `lab.chat.tools.parse_tool_calls` reads back."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            pass  # left as the string: the parser then says the arguments are not JSON
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CLOSE}"


def wire_messages(messages: Sequence[Message]) -> list[dict]:
    """Messages in OpenAI's wire format: tool calls with ids and their arguments as JSON text, and each
    tool result linked to its call (the page keeps calls as the chat template reads them)."""
    out, pending = [], []
    for i, m in enumerate(messages):
        m = {k: m[k] for k in ("role", "content", "name", "tool_calls", "tool_call_id") if k in m}
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = []
            for k, c in enumerate(m["tool_calls"]):
                fn = c.get("function", c)
                args = fn.get("arguments", {})
                calls.append({"id": c.get("id") or f"call_{i}_{k}", "type": "function",
                              "function": {"name": fn["name"], "arguments": args if isinstance(args, str)
                                           else json.dumps(args, ensure_ascii=False)}})
            m["tool_calls"], pending = calls, [c["id"] for c in calls]
            m["content"] = m.get("content") or None
        elif m["role"] == "tool" and not m.get("tool_call_id") and pending:
            m["tool_call_id"] = pending.pop(0)
        out.append(m)
    return out


def _fields(params: SamplingParams, seed: int, messages=None, tools=None) -> tuple[dict, dict]:
    """(OpenAI's fields, vLLM's) of a request, every sampling value explicit; with `messages`, a chat's."""
    fields = {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_new_tokens,
              "seed": seed, "stop": list(params.stop) or None}
    if messages is not None:
        fmt = params.response_format or {}
        forced = fmt.get("type") == "tool_call"  # lab.chat.tools.forced_call: the server's own tool_choice
        fields.update(messages=wire_messages(messages), tools=list(tools) if tools else openai.NOT_GIVEN,
                      response_format=openai.NOT_GIVEN if forced or not fmt else fmt)
        if forced:
            names = [t["name"] for t in fmt["tools"]]
            fields["tool_choice"] = ({"type": "function", "function": {"name": names[0]}} if fmt.get("named")
                                     else "required")
    return fields, {"top_k": params.top_k or -1, "repetition_penalty": params.repetition_penalty,
                    "ignore_eos": params.ignore_eos}


def _pool(fn, n: int, workers: int, cancel: threading.Event) -> Pump:
    """A Pump running fn(put, i) for i < n, `workers` at a time, its result theirs in order. On the first error
    the calls not begun are dropped and `cancel` is set for those under way."""
    def work(put) -> list:
        with ThreadPoolExecutor(max(1, min(workers, n)), thread_name_prefix="lab-remote") as pool:
            futures = [pool.submit(fn, put, i) for i in range(n)]
            for f in as_completed(futures):
                if f.exception() is not None:
                    cancel.set()
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise f.exception()
            return [f.result() for f in futures]

    return Pump(work, name="lab-remote")


def _map(fn, n: int, workers: int) -> list:
    pump = _pool(lambda put, i: fn(i), n, workers, threading.Event())
    list(pump)  # until the work ends; its error is raised here
    return pump.result


def default_in_flight() -> int:
    """LAB_CONCURRENCY, else WORKERS; one sentence when the variable is not a whole number from 1 to 1024."""
    text = os.environ.get("LAB_CONCURRENCY", "").strip()
    if not text:
        return WORKERS
    try:
        return check_number("workers", text, "LAB_CONCURRENCY")
    except ValueError as e:
        raise LabError(f"{e}.") from None


class RemoteModel:
    """A model served elsewhere, behind the interface of `lab.interface.ChatModel`."""

    capabilities = Capabilities(token_ids=False, logprobs=False)

    def __init__(self, base_url: str, model: str, info: ModelInfo, api_key: str | None = None,
                 client: openai.OpenAI | None = None, max_in_flight: int | None = None) -> None:
        self.base_url, self.model, self.info = base_url, model, info
        self.max_in_flight = max_in_flight or default_in_flight()  # requests under way at once (module docstring)
        # The SDK refuses to start without a key; a server that wants none ignores the placeholder.
        self.client = client or openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=2,
                                              timeout=openai.Timeout(600.0, connect=10.0))
        self._extensions = True  # EXTENSIONS are sent until the server refuses them
        self._tokenize = True  # False once the server showed it has no /tokenize

    # ---- requests -----------------------------------------------------------------------
    def _error(self, e: openai.OpenAIError, refused: str | None = None) -> LabError:
        """The SDK's exception as one sentence; `refused` begins the one for a request the server refused."""
        at = self.base_url
        if isinstance(e, openai.APITimeoutError):
            return LabError(f"The OpenAI-compatible server at {at} did not answer in time; check that it is running "
                            "and not overloaded.")
        if isinstance(e, openai.APIConnectionError):
            what = _first_line(str(e.__cause__ or e)) or type(e.__cause__ or e).__name__
            return LabError(f"Cannot reach the OpenAI-compatible server at {at} ({what}); check that it is running "
                            "and that the URL is right.")
        if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return LabError(f"The server at {at} refused the API key ({e.status_code}: {_message(e)}); pass the right "
                            "one with --api-key or LAB_API_KEY.")
        if isinstance(e, openai.APIStatusError):
            return LabError(f"{refused} ({_message(e)}); use --mode gen." if refused else
                            f"The server at {at} answered {e.status_code}: {_message(e)}.")
        what = _message(e) if isinstance(e, openai.APIError) else _first_line(str(e))
        return LabError(f"The server at {at} failed mid-reply: {what}.")  # an error event in a stream under way

    def _create(self, create, fields: dict, extra: dict, **more):
        """`create(model=..., **fields, **more)` with `extra` as vLLM's fields, errors as sentences; a server
        that refuses the extensions gets the request again without them."""
        while True:
            body = extra if self._extensions else None
            try:
                return create(model=self.model, **fields, **more, extra_body=body)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
                if not body or not any(k in f"{e.body} {e.message}" for k in EXTENSIONS):
                    raise self._error(e) from None
                self._extensions = False
            except openai.OpenAIError as e:
                raise self._error(e) from None

    # ---- prompts and tokens -------------------------------------------------------------
    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True,
               tools: Sequence[dict] | None = None) -> RenderedChat:
        parts = [f"[tools]\n{json.dumps(list(tools), ensure_ascii=False)}"] if tools else []
        for m in messages:
            calls = [_call_text(c.get("function", c)["name"], c.get("function", c).get("arguments", {}))
                     for c in m.get("tool_calls") or []]
            parts.append("\n".join([f"[{m['role']}]", m.get("content") or "", *calls]).rstrip())
        if add_generation_prompt:
            parts.append("[assistant]\n")
        return RenderedChat("\n\n".join(parts), messages, tools)

    def _count(self, body: dict, estimate) -> int:
        """vLLM's /tokenize where the server has it (a missing route is asked once), else `estimate()`."""
        count = None
        if self._tokenize:
            try:  # an absolute URL: the route is outside /v1, where the SDK has no call for it
                out = self.client.post(self.base_url.removesuffix("/v1") + "/tokenize", cast_to=object,
                                       body={"model": self.model, **body}, options={"max_retries": 0})
                count = out.get("count") if isinstance(out, dict) else None
            except openai.APIStatusError as e:
                self._tokenize = e.status_code not in (404, 405)
            except (openai.OpenAIError, ValueError):
                pass  # unreachable or an answer that is not a count: the estimate below
        return count if isinstance(count, int) else estimate()

    def count_tokens(self, text: str) -> int:
        return self._count({"prompt": str(text)}, lambda: estimate_tokens(text))

    def count_chat_tokens(self, messages: Sequence[Message], tools: Sequence[dict] | None = None) -> int:
        body = {"messages": wire_messages(messages), "add_generation_prompt": True}
        return self._count({**body, "tools": list(tools)} if tools else body,
                           lambda: estimate_tokens(self.render(messages, tools=tools)))

    # ---- chat ---------------------------------------------------------------------------
    def stream_chat(self, messages: Sequence[Message], params: SamplingParams,
                    cancel: threading.Event | None = None, tools: Sequence[dict] | None = None) -> Iterator[Chunk]:
        clock, cancel, seed = ReplyClock(), cancel or threading.Event(), draw_seed(params.seed)
        stream = self._create(self.client.chat.completions.create, *_fields(params, seed, messages, tools),
                              stream=True, stream_options={"include_usage": True})
        calls, used, reason, text = {}, None, None, ""
        with stream:  # leaving early (cancel, or the consumer closing this generator) closes the connection
            try:
                for event in stream:
                    if cancel.is_set():
                        break
                    used = event.usage or used
                    for choice in event.choices or []:
                        delta = choice.delta
                        if delta and delta.content:
                            clock.tick()
                            text += delta.content
                            yield Chunk(delta.content)
                        for tc in (delta and delta.tool_calls) or []:  # a call comes in parts, keyed by index
                            call = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                            call["name"] += (tc.function and tc.function.name) or ""
                            call["arguments"] += (tc.function and tc.function.arguments) or ""
                        reason = choice.finish_reason or reason
            except openai.OpenAIError as e:
                raise self._error(e) from None
        if calls:
            clock.tick(len(calls))
            blocks = "\n".join(_call_text(c["name"], c["arguments"]) for _, c in sorted(calls.items()))
            yield Chunk(("\n" if text else "") + blocks)
        prompt_tokens = used.prompt_tokens if used else self.count_chat_tokens(messages, tools)
        finish = "cancelled" if cancel.is_set() and reason is None else "length" if reason == "length" else "stop"
        # Without usage the ticks count: about one token an event.
        yield Chunk("", clock.stats(prompt_tokens, finish, seed, completion_tokens=used and used.completion_tokens))

    def stream_many(self, prompts: Sequence[Sequence[Message]], params: Sequence[SamplingParams] | SamplingParams,
                    cancel: threading.Event | None = None) -> Iterator[tuple[int, Chunk]]:
        """Several chat replies at once, one streaming request each; yields (row, Chunk) as they arrive."""
        cancel = cancel or threading.Event()
        per_row = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)

        def row(put, r: int) -> None:
            for chunk in self.stream_chat(prompts[r], per_row[r], cancel):
                put((r, chunk))

        pump = _pool(row, len(prompts), len(prompts), cancel)
        try:
            yield from pump
        finally:
            if pump.alive:  # the consumer left: end the streams
                cancel.set()
                pump.join(timeout=5)

    # ---- batched generation -------------------------------------------------------------
    def generate(self, prompts: Sequence[str | Sequence[Message]], params: SamplingParams,
                 cancel: threading.Event | None = None, batch_size: int | None = None) -> list[Completion]:
        """One completion per prompt: raw strings continue as text, chats go through the server's template."""
        cancel, seed = cancel or threading.Event(), draw_seed(params.seed)

        def one(i: int) -> Completion:
            prompt, p = prompts[i], replace(params, seed=seed + i)
            if cancel.is_set():
                return Completion("", 0, 0, "cancelled")
            if isinstance(prompt, str) and not isinstance(prompt, RenderedChat):
                out = self._create(self.client.completions.create, *_fields(p, p.seed), prompt=str(prompt))
                choice = out.choices[0]
                text = choice.text or ""
            else:
                chat = (prompt.messages, prompt.tools) if isinstance(prompt, RenderedChat) else (prompt, None)
                out = self._create(self.client.chat.completions.create, *_fields(p, p.seed, *chat))
                choice = out.choices[0]
                calls = [_call_text(c.function.name, c.function.arguments)
                         for c in choice.message.tool_calls or [] if getattr(c, "function", None)]
                text = "\n".join(t for t in [choice.message.content, *calls] if t)
            used = out.usage
            return Completion(text=text, prompt_tokens=used.prompt_tokens if used else 0,
                              completion_tokens=used.completion_tokens if used else 0,
                              finish_reason="length" if choice.finish_reason == "length" else "stop")

        return _map(one, len(prompts), self.max_in_flight)

    # ---- scoring ------------------------------------------------------------------------
    def _logprobs(self, **fields) -> list:  # the `logprobs` of a completions request, one per prompt, in order
        try:
            out = self.client.completions.create(model=self.model, temperature=0, **fields)
        except openai.OpenAIError as e:
            raise self._error(e, refused=f"{NO_LOGPROBS}, and {self.base_url} refused the request") from None
        found = [c.logprobs for c in sorted(out.choices or [], key=lambda c: c.index)]
        if not found or any(not lp or not lp.token_logprobs for lp in found):
            raise LabError(f"{NO_LOGPROBS}, and {self.base_url} returned none; use --mode gen.")
        return found

    def _score_one(self, prompt: str, choices: Sequence[str]) -> list[float]:
        # As the local model splits them: the prompt's trailing spaces belong to each continuation.
        context = prompt.rstrip(" ")
        conts = [prompt[len(context):] + c for c in choices]
        (first,) = self._logprobs(prompt=context, max_tokens=1, logprobs=TOP)
        top = (first.top_logprobs or [None])[0] or {}
        if all(c in top for c in conts):
            return [float(top[c]) for c in conts]
        scores = []
        for cont, lp in zip(conts, self._logprobs(prompt=[context + c for c in conts], max_tokens=1, logprobs=1,
                                                  echo=True)):
            start, end = len(context), len(context) + len(cont)
            picked = [v for o, v in zip(lp.text_offset or [], lp.token_logprobs) if start <= o < end]
            if not picked or any(v is None for v in picked):
                raise LabError(f"{self.base_url} returned no log-probabilities for the tokens of '{cont}' after the "
                               "prompt (echo with text_offset), so logprob mode cannot score it; use --mode gen.")
            scores.append(float(sum(picked)))
        return scores

    def score_choices(self, prompts: Sequence[str], choices: Sequence[str],
                      batch_size: int | None = None) -> list[list[float]]:
        """log P(choice | prompt) for each prompt and choice, from the server's log-probabilities."""
        return _map(lambda i: self._score_one(prompts[i], choices), len(prompts), self.max_in_flight)

    # ---- what needs the model in this process ----------------------------------------------
    def encode(self, text: str) -> list[int]:
        raise LabError(f"{self.info.name} is served from {self.base_url}, which gives token counts, not token ids.")

    def decode(self, ids) -> str:
        return self.encode("")

    def tokenizer_info(self) -> dict:
        raise LabError(f"{self.info.name} is served from {self.base_url}; its tokenizer is not in this process.")

    def prompt_logprobs(self, text: str, top: int = 0):
        raise LabError(f"Per-token log-probabilities need a model loaded in this process, and {self.info.name} "
                       f"is served from {self.base_url}.")

    def generate_logprobs(self, prompt: str, params: SamplingParams, top: int = 0, cancel=None):
        return self.prompt_logprobs(prompt, top)

    def close(self) -> None:
        self.client.close()


def connect(name: str, api_key: str | None = None, context: int | None = None,
            client: openai.OpenAI | None = None, max_in_flight: int | None = None) -> RemoteModel:
    """Reach the server named by `openai:BASE_URL#MODEL` and describe its model; one sentence if it cannot.
    `client` replaces the SDK client made from the URL and key; `max_in_flight`: requests under way at once."""
    base, model = parse_spec(name)
    remote = RemoteModel(base, model or "", ModelInfo(model or "", base, "remote", "remote", DEFAULT_CONTEXT, 0),
                         api_key or os.environ.get("LAB_API_KEY") or os.environ.get("OPENAI_API_KEY"), client,
                         max_in_flight)
    try:
        remote.info = _describe(remote, name, model, context)
    except BaseException:
        remote.close()
        raise
    remote.model = remote.info.name
    return remote


def _describe(remote: RemoteModel, name: str, model: str | None, context: int | None) -> ModelInfo:
    base = remote.base_url
    try:
        cards = [c for c in remote.client.models.list().data or [] if getattr(c, "id", None) is not None]
    except (openai.APIConnectionError, openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise remote._error(e) from None
    # A server that lists no models, or not in OpenAI's shape (the SDK then fails to build its page).
    except (openai.OpenAIError, ValueError, AttributeError) as e:
        if isinstance(e, openai.NotFoundError) and not base.endswith("/v1"):
            raise LabError(f"The server at {base} has no /models route; OpenAI-compatible APIs usually live under "
                           f"/v1, as in openai:{base}/v1#MODEL.") from None
        cards = []
    ids = [str(c.id) for c in cards]
    if model is None:
        if len(ids) != 1:
            listed = f"it serves {', '.join(ids)}" if ids else "it lists no models"
            raise LabError(f"Name the model after '#' in {name} ({listed}), like openai:{base}#MODEL.")
        model = ids[0]
    elif ids and model not in ids:
        raise LabError(f"The server at {base} does not serve '{model}'; it serves {', '.join(ids)}.")
    notes = [f"served by {base} over its OpenAI-compatible API; its GPU, memory and chat template are the server's"]
    served = getattr(next((c for c in cards if c.id == model), None), "max_model_len", None)  # vLLM's, not OpenAI's
    if not isinstance(served, int) or served <= 0:
        served = DEFAULT_CONTEXT
        notes.append(f"the server does not say its context length, so {DEFAULT_CONTEXT:,} tokens is assumed")
    if context is not None and context > served:
        raise LabError(f"--context {context:,} exceeds the {served:,} tokens the server at {base} allows for {model}.")
    return ModelInfo(name=model, source=base, quant="remote", device="remote", context_length=context or served,
                     weight_bytes=0, notes=notes)
