"""A model behind any OpenAI-compatible server (vLLM, TGI, Ollama, `lab.serve`, OpenAI itself) as a
`lab.interface.ChatModel`, so Chat, Compare and Evaluate work on it as on a local model.

    model = connect("openai:http://127.0.0.1:8000/v1#Qwen2.5-7B-Instruct", api_key="secret")
    model = load_model("openai:http://localhost:11434/v1#qwen2.5:7b-instruct")   # the same, via lab.models

`#MODEL` may be left out when the server lists exactly one model. The key comes from `api_key`, else
LAB_API_KEY, else OPENAI_API_KEY (none: no Authorization header). Plain httpx, no SDK.

- `stream_chat` streams `/v1/chat/completions` (server-sent events). Time to first token and decode speed
  are measured here, so they include the network; token counts come from the server's `usage`. Tools and
  `response_format` are passed through; tool calls the server returns as `tool_calls` come back as the
  `<tool_call>` blocks the rest of the app reads (`lab.chat.tools`). Sampling fields go as OpenAI's, plus
  vLLM's `top_k` and `repetition_penalty`; a server that refuses those two gets requests without them.
- `generate` sends raw strings to `/v1/completions` and chats to `/v1/chat/completions`, a few at a time,
  results in order. `render` gives a readable text of the messages, not the exact prompt: the chat
  template lives on the server. What `render` returns remembers its messages, so a rendered chat handed
  to `generate` (as the evaluation runner does) still goes to `/v1/chat/completions`.
- `score_choices` (logprob mode) asks `/v1/completions` for the top 20 log-probabilities at the position
  after the prompt (`max_tokens=1, logprobs=20`) and uses them when every choice is one token found
  there; otherwise it sends prompt + choice with `echo=True, logprobs=1` and sums the log-probabilities of
  the choice's tokens, found by `text_offset` (how likelihood harnesses score completion servers). A
  server without log-probabilities (Ollama) makes this one sentence: use `--mode gen`.
- `count_tokens` uses vLLM's `/tokenize` (lab.serve has it too); elsewhere it estimates (about 4
  characters a token for English text, one a character for Chinese), which only decides when the Chat
  tab drops old turns.
"""

from __future__ import annotations

import json
import os
import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator, Sequence

import httpx

from lab.errors import LabError
from lab.interface import TOOL_CALL_CLOSE as CLOSE
from lab.interface import TOOL_CALL_OPEN as OPEN
from lab.interface import Capabilities, Chunk, Completion, Message, ModelInfo, ReplyStats, SamplingParams

PREFIX = "openai:"
DEFAULT_CONTEXT = 32768  # when the server's model card gives no max_model_len
WORKERS = 4  # requests in flight at once for generate() and score_choices()
TOP = 20  # log-probabilities asked for at the next position (vLLM's default maximum)
NO_LOGPROBS = "logprob mode needs a server that returns log-probabilities (vLLM and lab.serve do)"


def is_remote(name: str | None) -> bool:
    return bool(name) and name.strip().startswith(PREFIX)


def parse_spec(name: str) -> tuple[str, str | None]:
    """(base URL, model name or None) from `openai:BASE_URL#MODEL`."""
    rest = name.strip()[len(PREFIX):]
    base, _, model = rest.partition("#")
    base = base.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise LabError(f"'{name}' needs a base URL after openai:, like openai:http://127.0.0.1:8000/v1#MODEL.")
    return base, model.strip() or None


def api_key_from_env() -> str | None:
    return os.environ.get("LAB_API_KEY") or os.environ.get("OPENAI_API_KEY") or None


def estimate_tokens(text: str) -> int:
    """An honest guess without the tokenizer: ~4 characters a token in English, one per other character."""
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return max(1, -(-ascii_chars // 4) + (len(text) - ascii_chars))


class RenderedChat(str):
    """A readable rendering of chat messages that remembers them (and the tools), so `generate` sends
    the messages to the chat endpoint rather than this text to the completions endpoint."""

    messages: list
    tools: list | None

    def __new__(cls, text: str, messages: Sequence[Message], tools: Sequence[dict] | None = None) -> "RenderedChat":
        self = super().__new__(cls, text)
        self.messages, self.tools = list(messages), list(tools) if tools else None
        return self


def _first_line(text: str) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line[:300].rstrip(".")


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


class RemoteModel:
    """A model served elsewhere, behind the interface of `lab.interface.ChatModel`."""

    capabilities = Capabilities(token_ids=False, logprobs=False, exact_prompts=False)

    def __init__(self, base_url: str, model: str, info: ModelInfo, api_key: str | None = None,
                 http: httpx.Client | None = None) -> None:
        self.base_url, self.model, self.info = base_url, model, info
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = http or httpx.Client(headers=headers, timeout=httpx.Timeout(600.0, connect=10.0))
        self._extensions = True  # top_k and repetition_penalty; off once the server refuses them
        self._tokenize: bool | None = None  # False once the server showed it has no /tokenize

    # ---- HTTP ---------------------------------------------------------------------------
    def _fail(self, r: httpx.Response) -> LabError:
        try:
            body = r.json()
            err = body.get("error", body) if isinstance(body, dict) else body
            message = err.get("message") or err.get("detail") if isinstance(err, dict) else str(err)
        except ValueError:
            message = r.text
        message = _first_line(str(message or r.reason_phrase))
        if r.status_code in (401, 403):
            return LabError(f"The server at {self.base_url} refused the API key ({r.status_code}: {message}); "
                            "pass the right one with --api-key or LAB_API_KEY.")
        return LabError(f"The server at {self.base_url} answered {r.status_code}: {message}.")

    def _unreachable(self, e: Exception) -> LabError:
        what = _first_line(str(e)) or type(e).__name__
        return LabError(f"Cannot reach the OpenAI-compatible server at {self.base_url} ({what}); check that it is "
                        "running and that the URL is right.")

    def _refused_extension(self, r: httpx.Response, body: dict) -> bool:
        if r.status_code not in (400, 422) or not self._extensions:
            return False
        if any(k in r.text for k in ("top_k", "repetition_penalty")):
            self._extensions = False
            body.pop("top_k", None), body.pop("repetition_penalty", None)
            return True
        return False

    def _post(self, path: str, body: dict) -> dict:
        for _ in range(2):
            try:
                r = self.http.post(self.base_url + path, json=body)
            except httpx.HTTPError as e:
                raise self._unreachable(e) from None
            if r.status_code < 400:
                return r.json()
            if not self._refused_extension(r, body):
                break
        raise self._fail(r)

    @contextmanager
    def _stream(self, path: str, body: dict):
        """The server-sent events of a streamed request, as parsed JSON objects, until [DONE]."""
        for _ in range(2):
            try:
                with self.http.stream("POST", self.base_url + path, json=body) as r:
                    if r.status_code >= 400:
                        r.read()
                        if self._refused_extension(r, body):
                            continue
                        raise self._fail(r)
                    yield self._events(r)
                    return
            except httpx.HTTPError as e:
                raise self._unreachable(e) from None

    @staticmethod
    def _events(r: httpx.Response) -> Iterator[dict]:
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if isinstance(event, dict) and event.get("error"):
                err = event["error"]
                raise LabError(f"The server failed mid-reply: {_first_line(err.get('message', str(err)))}.")
            yield event

    def _sampling(self, params: SamplingParams, seed: int) -> dict:
        body = {"temperature": params.temperature, "max_tokens": params.max_new_tokens, "seed": seed}
        if not params.greedy:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop)
        if self._extensions:
            if params.top_k and not params.greedy:
                body["top_k"] = params.top_k
            if params.repetition_penalty != 1.0:
                body["repetition_penalty"] = params.repetition_penalty
            if params.ignore_eos:
                body["ignore_eos"] = True
        return body

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

    def _root(self) -> str:
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url

    def _count(self, body: dict) -> int | None:
        """vLLM's /tokenize, when the server has it (asked once)."""
        if self._tokenize is False:
            return None
        try:
            r = self.http.post(self._root() + "/tokenize", json={"model": self.model, **body})
            count = r.json().get("count") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if r.status_code in (404, 405):  # no such route: estimate from now on
            self._tokenize = False
        return count if isinstance(count, int) else None

    def count_tokens(self, text: str) -> int:
        count = self._count({"prompt": str(text)})
        return count if count is not None else estimate_tokens(text)

    def count_chat_tokens(self, messages: Sequence[Message], tools: Sequence[dict] | None = None) -> int:
        body = {"messages": wire_messages(messages), "add_generation_prompt": True}
        if tools:
            body["tools"] = list(tools)
        count = self._count(body)
        return count if count is not None else estimate_tokens(self.render(messages, tools=tools))

    # ---- chat ---------------------------------------------------------------------------
    def stream_chat(self, messages: Sequence[Message], params: SamplingParams,
                    cancel: threading.Event | None = None, tools: Sequence[dict] | None = None) -> Iterator[Chunk]:
        t0 = time.perf_counter()
        cancel = cancel or threading.Event()
        seed = params.seed if params.seed is not None else random.randrange(2**31)
        body = {"model": self.model, "messages": wire_messages(messages), "stream": True,
                "stream_options": {"include_usage": True}, **self._sampling(params, seed)}
        if tools:
            body["tools"] = list(tools)
        if params.response_format:
            body["response_format"] = params.response_format
        t_first = t_last = None
        pieces, calls, used, reason, text = 0, {}, None, None, ""
        with self._stream("/chat/completions", body) as events:
            try:
                for event in events:
                    if cancel.is_set():
                        break
                    used = event.get("usage") or used
                    for choice in event.get("choices") or []:
                        delta = choice.get("delta") or {}
                        piece = delta.get("content") or ""
                        if piece:
                            t_last = time.perf_counter()
                            t_first = t_first or t_last
                            pieces += 1
                            text += piece
                            yield Chunk(piece)
                        for tc in delta.get("tool_calls") or []:  # streamed in parts, keyed by index
                            call = calls.setdefault(tc.get("index", len(calls)), {"name": "", "arguments": ""})
                            fn = tc.get("function") or {}
                            call["name"] += fn.get("name") or ""
                            call["arguments"] += fn.get("arguments") or ""
                        reason = choice.get("finish_reason") or reason
            except httpx.HTTPError as e:
                raise self._unreachable(e) from None
        if calls:
            t_last = time.perf_counter()
            t_first = t_first or t_last
            blocks = "\n".join(_call_text(c["name"], c["arguments"]) for _, c in sorted(calls.items()))
            yield Chunk(("\n" if text else "") + blocks)
        prompt_tokens = (used or {}).get("prompt_tokens")
        completion_tokens = (used or {}).get("completion_tokens")
        if prompt_tokens is None:
            prompt_tokens = self.count_chat_tokens(messages, tools)
        if completion_tokens is None:
            completion_tokens = pieces + len(calls)  # a server without usage: about one token an event
        if cancel.is_set() and reason is None:
            finish = "cancelled"
        else:
            finish = "length" if reason == "length" else "stop"
        tps = None
        if completion_tokens > 1 and t_first is not None and t_last > t_first:
            tps = (completion_tokens - 1) / (t_last - t_first)
        yield Chunk("", ReplyStats(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                   ttft_s=None if t_first is None else t_first - t0, decode_tokens_per_s=tps,
                                   total_s=time.perf_counter() - t0, finish_reason=finish, seed=seed))

    def stream_many(self, prompts: Sequence[Sequence[Message]], params: Sequence[SamplingParams] | SamplingParams,
                    cancel: threading.Event | None = None) -> Iterator[tuple[int, Chunk]]:
        """Several chat replies at once, one streaming request each; yields (row, Chunk) as they arrive."""
        cancel = cancel or threading.Event()
        rows = len(prompts)
        per_row = [params] * rows if isinstance(params, SamplingParams) else list(params)
        events: queue.Queue = queue.Queue()
        done = object()

        def run(row: int) -> None:
            try:
                for chunk in self.stream_chat(prompts[row], per_row[row], cancel):
                    events.put((row, chunk))
            except BaseException as e:
                events.put((row, e))
            finally:
                events.put((row, done))

        threads = [threading.Thread(target=run, args=(r,), name=f"lab-remote-{r}", daemon=True) for r in range(rows)]
        for t in threads:
            t.start()
        finished = 0
        try:
            while finished < rows:
                row, item = events.get()
                if item is done:
                    finished += 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield row, item
        finally:
            if finished < rows:  # the consumer left, or a row failed: end the others
                cancel.set()
            for t in threads:
                t.join(timeout=5)

    # ---- batched generation -------------------------------------------------------------
    def _complete_one(self, prompt, params: SamplingParams) -> Completion:
        seed = params.seed if params.seed is not None else random.randrange(2**31)
        if isinstance(prompt, str) and not isinstance(prompt, RenderedChat):
            out = self._post("/completions", {"model": self.model, "prompt": str(prompt),
                                              **self._sampling(params, seed)})
            choice = (out.get("choices") or [{}])[0]
            text = choice.get("text") or ""
        else:
            messages, tools = (prompt.messages, prompt.tools) if isinstance(prompt, RenderedChat) else (prompt, None)
            body = {"model": self.model, "messages": wire_messages(messages), **self._sampling(params, seed)}
            if tools:
                body["tools"] = tools
            if params.response_format:
                body["response_format"] = params.response_format
            out = self._post("/chat/completions", body)
            choice = (out.get("choices") or [{}])[0]
            message = choice.get("message") or {}
            text = message.get("content") or ""
            calls = [_call_text(c["function"]["name"], c["function"].get("arguments", ""))
                     for c in message.get("tool_calls") or []]
            text = "\n".join([text, *calls]) if text and calls else text or "\n".join(calls)
        used = out.get("usage") or {}
        return Completion(text=text, prompt_tokens=used.get("prompt_tokens") or 0,
                          completion_tokens=used.get("completion_tokens") or 0,
                          finish_reason="length" if choice.get("finish_reason") == "length" else "stop")

    def generate(self, prompts: Sequence[str | Sequence[Message]], params: SamplingParams,
                 cancel: threading.Event | None = None, batch_size: int | None = None) -> list[Completion]:
        """One completion per prompt: raw strings continue as text, chats go through the server's template."""
        cancel = cancel or threading.Event()
        seed = params.seed if params.seed is not None else random.randrange(2**31)

        def one(i: int) -> Completion:
            if cancel.is_set():
                return Completion("", 0, 0, "cancelled")
            return self._complete_one(prompts[i], replace(params, seed=seed + i))

        return self._map(one, len(prompts))

    @staticmethod
    def _map(fn, n: int) -> list:
        if n <= 1:
            return [fn(i) for i in range(n)]
        with ThreadPoolExecutor(min(WORKERS, n), thread_name_prefix="lab-remote") as pool:
            return list(pool.map(fn, range(n)))

    # ---- scoring ------------------------------------------------------------------------
    def _logprob_request(self, body: dict) -> list[dict]:
        """The `logprobs` objects of a completions request (one per prompt, in order)."""
        try:
            out = self._post("/completions", {"model": self.model, "temperature": 0, **body})
        except LabError as e:
            if "Cannot reach" in str(e) or "API key" in str(e):
                raise
            raise LabError(f"{NO_LOGPROBS}, and {self.base_url} refused the request "
                           f"({str(e).split(': ', 1)[-1].rstrip('.')}); use --mode gen.") from None
        choices = sorted(out.get("choices") or [], key=lambda c: c.get("index", 0))
        found = [c.get("logprobs") for c in choices]
        if not found or any(not lp or not lp.get("token_logprobs") for lp in found):
            raise LabError(f"{NO_LOGPROBS}, and {self.base_url} returned none; use --mode gen.")
        return found

    def _score_one(self, prompt: str, choices: Sequence[str]) -> list[float]:
        # As the local model splits them: the prompt's trailing spaces belong to each continuation.
        context = prompt.rstrip(" ")
        conts = [prompt[len(context):] + c for c in choices]
        (first,) = self._logprob_request({"prompt": context, "max_tokens": 1, "logprobs": TOP})
        top = (first.get("top_logprobs") or [None])[0] or {}
        if all(c in top for c in conts):
            return [float(top[c]) for c in conts]
        found = self._logprob_request({"prompt": [context + c for c in conts], "max_tokens": 1, "logprobs": 1,
                                       "echo": True})
        scores = []
        for cont, lp in zip(conts, found):
            start, end = len(context), len(context) + len(cont)
            picked = [v for o, v in zip(lp.get("text_offset") or [], lp["token_logprobs"]) if start <= o < end]
            if not picked or any(v is None for v in picked):
                raise LabError(f"{self.base_url} returned no log-probabilities for the tokens of '{cont}' after the "
                               "prompt (echo with text_offset), so logprob mode cannot score it; use --mode gen.")
            scores.append(float(sum(picked)))
        return scores

    def score_choices(self, prompts: Sequence[str], choices: Sequence[str],
                      batch_size: int | None = None) -> list[list[float]]:
        """log P(choice | prompt) for each prompt and choice, from the server's log-probabilities."""
        return self._map(lambda i: self._score_one(prompts[i], choices), len(prompts))

    # ---- what needs the model in this process ----------------------------------------------
    def encode(self, text: str) -> list[int]:
        raise LabError(f"{self.info.name} is served from {self.base_url}, which gives token counts, not token ids.")

    def prompt_logprobs(self, text: str, top: int = 0):
        raise LabError(f"Per-token log-probabilities need a model loaded in this process, and {self.info.name} "
                       f"is served from {self.base_url}.")

    def generate_logprobs(self, prompt: str, params: SamplingParams, top: int = 0, cancel=None):
        return self.prompt_logprobs(prompt, top)

    # ---- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        self.http.close()


def connect(name: str, api_key: str | None = None, context: int | None = None) -> RemoteModel:
    """Reach the server named by `openai:BASE_URL#MODEL` and describe its model; one sentence if it cannot."""
    base, model = parse_spec(name)
    key = api_key or api_key_from_env()
    probe = RemoteModel(base, model or "", ModelInfo(model or "", base, "remote", "remote", DEFAULT_CONTEXT, 0),
                        key)
    try:
        r = probe.http.get(base + "/models")
    except httpx.HTTPError as e:
        probe.close()
        raise probe._unreachable(e) from None
    if r.status_code in (401, 403):
        probe.close()
        raise probe._fail(r)
    if r.status_code == 404 and not base.endswith("/v1"):
        probe.close()
        raise LabError(f"The server at {base} has no /models route; OpenAI-compatible APIs usually live under /v1, "
                       f"as in openai:{base}/v1#MODEL.")
    try:
        cards = [c for c in r.json().get("data", []) if isinstance(c, dict)] if r.status_code == 200 else []
    except (ValueError, AttributeError):
        cards = []
    ids = [str(c.get("id")) for c in cards]
    if model is None:
        if len(ids) != 1:
            probe.close()
            listed = f"it serves {', '.join(ids)}" if ids else "it lists no models"
            raise LabError(f"Name the model after '#' in {name} ({listed}), like openai:{base}#MODEL.")
        model = ids[0]
    elif ids and model not in ids:
        probe.close()
        raise LabError(f"The server at {base} does not serve '{model}'; it serves {', '.join(ids)}.")
    card = next((c for c in cards if c.get("id") == model), {})
    notes = [f"served by {base} over its OpenAI-compatible API; its GPU, memory and chat template are the server's"]
    served = card.get("max_model_len")
    if not isinstance(served, int) or served <= 0:
        served = DEFAULT_CONTEXT
        notes.append(f"the server does not say its context length, so {DEFAULT_CONTEXT:,} tokens is assumed")
    if context is not None and context > served:
        probe.close()
        raise LabError(f"--context {context:,} exceeds the {served:,} tokens the server at {base} allows for {model}.")
    probe.model = model
    probe.info = ModelInfo(name=model, source=base, quant="remote", device="remote",
                           context_length=context or served, weight_bytes=0, notes=notes)
    return probe
