"""The one model interface: the records every layer passes around and the `ChatModel` protocol that a
Transformers model (`lab.models.hf`), a remote OpenAI-compatible server (`lab.models.remote`) and the
offline `tiny-random` all implement. Everything above the model layer uses only what is declared here.

No torch and no Gradio: plain records, small rules (the range of every number a user gives, seeds, finish
reasons), a clock for replies, and the Protocol.
"""

from __future__ import annotations

import math
import numbers
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Generator, Protocol, Sequence, runtime_checkable

Message = dict  # {"role": "system" | "user" | "assistant" | "tool", "content": str, ["tool_calls"], ...}

# A reply carries the tool calls it makes as Qwen2.5's blocks in its text, whatever the backend:
# <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call> (lab.chat.tools reads them).
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


# ---- the one rule for numbers ----------------------------------------------------------------------
# Every number a user gives, at the API (lab.serve), on the page and on a command line, is checked here: finite,
# of the right kind, in its range; a violation is one sentence naming the field and the range.
SEED_MAX = 2**32 - 1  # seeds are whole numbers 0..SEED_MAX (numpy's range; torch and `random` take all of them)
MAX_NEW_TOKENS = 2**20  # above any context this project serves (Qwen2.5 with YaRN: 131,072)


@dataclass(frozen=True)
class Limit:
    """A number's range: low..high inclusive (`above`: low itself excluded); `whole`: an integer; `also`: one more
    value outside the range that is accepted (temperature's 0, greedy)."""

    low: int | float
    high: int | float
    whole: bool = False
    above: bool = False
    also: int | float | None = None

    def describe(self) -> str:
        def show(x) -> str:
            return f"{x:,}" if self.whole else f"{x:g}"

        kind = "a whole number" if self.whole else "a number"
        span = (f"{kind} above {show(self.low)} and at most {show(self.high)}" if self.above
                else f"{kind} between {show(self.low)} and {show(self.high)}")
        return span if self.also is None else f"{show(self.also)} or {span}"

    def holds(self, x: int | float) -> bool:
        return x == self.also or ((self.low < x if self.above else self.low <= x) and x <= self.high)


LIMITS: dict[str, Limit] = {
    # sampling (SamplingParams; the API's names map onto these)
    # OpenAI's range; 0 is greedy, and a temperature near 0 divides logits into infinities
    "temperature": Limit(0.01, 2, also=0),
    "top_p": Limit(0.001, 1),  # nearer 0 it rounds to 0 in float32, and no token would be left
    "top_k": Limit(0, 1_000_000, whole=True),  # 0 is off; past the vocabulary it is off too
    "repetition_penalty": Limit(0.01, 10),  # 1 is off; nearer 0 it divides logits into infinities
    "max_new_tokens": Limit(1, MAX_NEW_TOKENS, whole=True),
    "seed": Limit(0, SEED_MAX, whole=True),
    "frequency_penalty": Limit(-2, 2),  # OpenAI's range (lab.serve then refuses any but 0)
    "presence_penalty": Limit(-2, 2),
    "logprobs": Limit(0, 20, whole=True),  # OpenAI's legacy completions: alternatives per token
    "max_tokens": Limit(0, MAX_NEW_TOKENS, whole=True),  # the API's max_new_tokens; 0: a completion scores only
    # models and servers
    "context": Limit(512, MAX_NEW_TOKENS, whole=True),  # tokens; below 512 a chat template hardly fits
    "port": Limit(1, 65535, whole=True),
    # evaluations
    "shots": Limit(0, 5, whole=True),  # the dev split has 5 questions a subject
    "limit": Limit(0, 10**9, whole=True),  # 0: everything
    "batch_size": Limit(1, 65536, whole=True),
    "samples_per_task": Limit(1, 1000, whole=True),
    "timeout": Limit(0, 86400, above=True),  # seconds per program in the sandbox
    "workers": Limit(1, 1024, whole=True),
}


def check_number(field: str, value, name: str | None = None):
    """`value` as `LIMITS[field]` wants it (an int for a whole number: 3.0 is 3; a string is parsed), or ValueError
    whose message is one sentence, without its full stop, naming `name` (default: the field) and the range."""
    limit = LIMITS[field]
    number = _parse(value.strip()) if isinstance(value, str) else value  # a form's text, a command line's word
    if isinstance(number, numbers.Real) and not isinstance(number, (bool, numbers.Integral)):
        number = float(number)
        if limit.whole and number.is_integer():
            number = int(number)  # JSON and forms have one kind of number: 3.0 is 3
    elif isinstance(number, numbers.Integral) and not isinstance(number, bool):
        number = int(number)
    kind = int if limit.whole else (int, float)
    if (not isinstance(number, kind) or isinstance(number, bool) or (isinstance(number, float) and not
            math.isfinite(number)) or not limit.holds(number)):
        whole_float = isinstance(value, float) and value.is_integer() and abs(value) < 1e16
        shown = value if isinstance(value, str) else str(int(value)) if whole_float else repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise ValueError(f"{name or field} must be {limit.describe()}, got {shown}")
    return number


def _parse(text: str) -> int | float | None:
    for kind in (int, float):  # int first: a long seed keeps every digit
        try:
            return kind(text)
        except ValueError:
            pass
    return None


def lone_surrogate(value) -> bool:
    """Whether any string in `value` (text, or JSON-like lists and dicts, keys included) holds a lone surrogate:
    what JSON's "\\ud800" escape can spell and no tokenizer or UTF-8 encoder takes. The API, the page and the
    Compare tab refuse such text in one sentence before it reaches a model."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack += [*v.keys(), *v.values()]
        elif isinstance(v, (list, tuple)):
            stack += v
    return False


@dataclass
class SamplingParams:
    """How to pick tokens. Defaults are Qwen2.5-Instruct's own generation_config."""

    temperature: float = 0.7  # 0 means greedy
    top_p: float = 0.8
    top_k: int = 20  # 0 turns top-k off
    repetition_penalty: float = 1.05
    max_new_tokens: int = 512
    seed: int | None = None  # None: a fresh seed is drawn (`draw_seed`) and reported in ReplyStats.seed
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks only: always produce max_new_tokens
    # OpenAI-style: {"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": {...}}};
    # enforced while decoding, so the reply parses and validates. Also {"type": "tool_call", "tools": [...]}
    # (lab.chat.tools.forced_call): the reply is one <tool_call> block calling one of those functions.
    response_format: dict | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens"):
            setattr(self, name, check_number(name, getattr(self, name)))
        if self.seed is not None:
            self.seed = check_number("seed", self.seed)
        self.stop = tuple(self.stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return asdict(self)


def schema_of(response_format: dict | None) -> dict | None:
    """The JSON Schema a `response_format` asks for (None: no schema, or JSON mode off)."""
    if not response_format or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema") or {}
    return spec.get("schema", spec)


def draw_seed(seed: int | None) -> int:
    """The seed a reply runs with: the one asked for, else a fresh one (reported, so it can be entered again)."""
    return seed if seed is not None else random.randrange(2**31)


def finish_reason(ended: bool, cancelled: bool) -> str:
    """Why a reply ended: "stop" (end of turn or a stop string), "cancelled", or "length" (max new tokens)."""
    return "stop" if ended else "cancelled" if cancelled else "length"


@dataclass
class ReplyStats:
    """What one reply cost. Times are seconds; tokens/s counts decode steps after the first token."""

    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None  # request start (before tokenizing) to first new token
    decode_tokens_per_s: float | None  # (completion_tokens - 1) / (t_last - t_first)
    total_s: float
    finish_reason: str  # "stop" (end of turn or stop string), "length" or "cancelled"
    seed: int | None = None
    gpu_mem_in_use_gib: float | None = None  # allocated by torch when the reply ended (CUDA only)
    gpu_mem_peak_gib: float | None = None  # peak allocated during the reply (CUDA only)
    closed_early: bool = False  # JSON mode: max new tokens ran low, so the document was steered to its end
    constraint_s: float | None = None  # JSON mode: time spent computing and applying the grammar's masks
    queued_s: float | None = None  # time waiting in line for a row of the running batch (ttft_s includes it)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ReplyClock:
    """Times one reply from its request: when its first and last tokens arrived and how many came.
    Every backend builds its `ReplyStats` here, so time to first token and decode speed mean the same."""

    t0: float = field(default_factory=time.perf_counter)
    t_first: float | None = None
    t_last: float | None = None
    tokens: int = 0

    def tick(self, n: int = 1, at: float | None = None) -> None:
        now = time.perf_counter() if at is None else at
        self.t_first = self.t_first or now
        self.t_last = now
        self.tokens += n

    def stats(self, prompt_tokens: int, finish: str, seed: int | None, completion_tokens: int | None = None,
              memory: tuple[float, float] | None = None) -> ReplyStats:
        """`completion_tokens` when the server counted them (else the ticks); `memory` (in use, peak) in GiB."""
        n = self.tokens if completion_tokens is None else completion_tokens
        speed = None
        if n > 1 and self.t_first is not None and self.t_last > self.t_first:
            speed = (n - 1) / (self.t_last - self.t_first)
        in_use, peak = memory or (None, None)
        return ReplyStats(prompt_tokens=prompt_tokens, completion_tokens=n,
                          ttft_s=None if self.t_first is None else self.t_first - self.t0,
                          decode_tokens_per_s=speed, total_s=time.perf_counter() - self.t0, finish_reason=finish,
                          seed=seed, gpu_mem_in_use_gib=in_use, gpu_mem_peak_gib=peak)


@dataclass
class Chunk:
    """A piece of a streamed reply. `stats` is set on the last chunk only."""

    text: str
    stats: ReplyStats | None = None
    waiting: int | None = None  # while the reply waits for a row: its place in line (1 = next); text is empty


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass
class ModelInfo:
    """What is loaded, shown on the page and written into exports and run records."""

    name: str  # registry name, hub id or local path as the user gave it
    source: str  # where the weights came from: hub id, local directory or "tiny-random"
    quant: str  # resolved: 4bit, 8bit, bf16, fp16 or fp32 ("remote" for a server's model)
    device: str  # "cuda:0", "cpu" or "remote"
    context_length: int
    weight_bytes: int
    quant_detail: str = ""  # e.g. "NF4, double quant, bf16 compute"
    notes: list[str] = field(default_factory=list)  # e.g. "random weights: replies are noise"

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        detail = f" ({self.quant_detail})" if self.quant_detail else ""
        size = (f"{self.weight_bytes / 2**30:.2f} GiB" if self.weight_bytes >= 2**30
                else f"{self.weight_bytes / 2**20:.1f} MiB")
        return (
            f"{self.name} · {self.quant}{detail} · {self.device} · "
            f"weights {size} · context {self.context_length:,} tokens"
        )


@dataclass
class TokenLogprobs:
    """OpenAI's legacy `logprobs` object for a piece of text: one entry per token."""

    tokens: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)  # None: a prompt's first token
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)  # top-n and the token itself
    text_offset: list[int] = field(default_factory=list)  # where each token starts in the returned text

    def extend(self, other: "TokenLogprobs", offset: int = 0) -> "TokenLogprobs":
        """Append `other`, whose text starts `offset` characters into this one's."""
        self.tokens += other.tokens
        self.token_ids += other.token_ids
        self.token_logprobs += other.token_logprobs
        self.top_logprobs += other.top_logprobs
        self.text_offset += [o + offset for o in other.text_offset]
        return self

    def to_openai(self) -> dict:
        return {"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs,
                "text_offset": self.text_offset}


@dataclass
class Generated:
    text: str
    logprobs: TokenLogprobs
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of text or a stop string), "length" or "cancelled"



@dataclass(frozen=True)
class Capabilities:
    """What a model can do beyond the calls every model has."""

    token_ids: bool  # `encode` gives the model's own token ids (a server gives counts only)
    logprobs: bool  # `prompt_logprobs` and `generate_logprobs` (OpenAI's legacy logprobs and echo)
    # continuous batching: concurrent calls decode together, and `stream_many` also takes raw text and token ids
    rows: bool = False


@runtime_checkable
class ChatModel(Protocol):
    info: ModelInfo
    capabilities: Capabilities

    # ---- prompts and tokens
    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True,
               tools: Sequence[dict] | None = None) -> str:
        """The prompt text for these messages (a server's model: a readable rendering); `generate` takes it."""

    def count_tokens(self, text: str) -> int: ...

    def count_chat_tokens(self, messages: Sequence[Message], tools: Sequence[dict] | None = None) -> int: ...

    def encode(self, text: str) -> list[int]:
        """The token ids of `text` (no special tokens added); a LabError where `capabilities.token_ids` is False."""

    # Where `capabilities.token_ids`, a prompt of `generate`, `prompt_logprobs` and `generate_logprobs` may be
    # token ids (a list of ints, each checked against the vocabulary) instead of text; elsewhere a LabError.
    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids, special tokens included."""

    def tokenizer_info(self) -> dict:
        """The tokenizer's configuration (class, special tokens, chat template), as vLLM's /tokenizer_info."""

    # ---- generation
    def stream_chat(self, messages: Sequence[Message], params: SamplingParams, cancel: threading.Event | None = None,
                    tools: Sequence[dict] | None = None) -> Generator[Chunk, None, None]:
        """Text deltas of one reply; the last chunk carries its ReplyStats. Closing the generator or setting
        `cancel` ends generation at the next decode step."""

    def stream_many(self, prompts: Sequence[Sequence[Message]], params: Sequence[SamplingParams],
                    cancel: threading.Event | None = None) -> Generator[tuple[int, Chunk], None, None]:
        """Several chat replies produced together (one batched generation on a local model); yields (row, Chunk)
        as tokens arrive; each row's last chunk carries its ReplyStats. Closing it ends every row. Where
        `capabilities.rows`, a prompt may also be raw text or token ids (as `generate` takes them)."""

    def generate(self, prompts: Sequence[str | Sequence[Message] | Sequence[int]], params: SamplingParams,
                 cancel: threading.Event | None = None, batch_size: int | None = None) -> list[Completion]:
        """One completion per prompt (raw text, chat messages, or token ids), as batches; `batch_size` None: the model's
        own choice (by free memory on CUDA)."""

    def score_choices(self, prompts: Sequence[str], choices: Sequence[str],
                      batch_size: int | None = None) -> list[list[float]]:
        """log P(choice | prompt) for every prompt and choice."""

    # ---- log-probabilities (where `capabilities.logprobs`)
    def prompt_logprobs(self, text: str | Sequence[int], top: int = 0) -> TokenLogprobs:
        """Every token of `text` with log P(token | the tokens before it) and the `top` likeliest alternatives."""

    def generate_logprobs(self, prompt: str | Sequence[int], params: SamplingParams, top: int = 0,
                          cancel: threading.Event | None = None) -> Generated:
        """Continue raw text, with each new token's log-probability and alternatives."""

    def close(self) -> None: ...
