"""The one model interface everything above the model layer talks to.

A Transformers model (`lab.hf.HFModel`), a remote OpenAI-compatible server and the offline
`tiny-random` model all offer the same calls:

- `stream_chat(messages, params, cancel, tools)` -> `Chunk`s of text, the last one carrying `ReplyStats`;
- `stream_many(prompts, params, cancel)` -> `(row, Chunk)` for several replies generated together;
- `generate(prompts, params)` -> one `Completion` per prompt, produced as a batch;
- `score_choices(prompts, choices)` -> log P(choice | prompt) for every prompt and choice.

Nothing here imports torch or Gradio: these are plain records and a Protocol.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Iterator, Protocol, Sequence, runtime_checkable

Message = dict  # {"role": "system" | "user" | "assistant" | "tool", "content": str}


@dataclass
class SamplingParams:
    """How to pick tokens. Defaults are Qwen2.5-Instruct's own generation_config."""

    temperature: float = 0.7  # 0 means greedy
    top_p: float = 0.8
    top_k: int = 20  # 0 turns top-k off
    repetition_penalty: float = 1.05
    max_new_tokens: int = 512
    seed: int | None = None  # None: a fresh seed is drawn and reported in ReplyStats.seed
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks only: always produce max_new_tokens
    # OpenAI-style: {"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": {...}}};
    # enforced while decoding (lab.structured), so the reply parses and validates.
    response_format: dict | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        self.stop = tuple(self.stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return asdict(self)


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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Chunk:
    """A piece of a streamed reply. `stats` is set on the last chunk only."""

    text: str
    stats: ReplyStats | None = None


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
    quant: str  # resolved: 4bit, 8bit, bf16, fp16 or fp32
    device: str  # "cuda:0" or "cpu"
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


@runtime_checkable
class ChatModel(Protocol):
    info: ModelInfo

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True,
               tools: Sequence[dict] | None = None) -> str:
        """The exact prompt text the model sees for these messages (its chat template, with the tools)."""

    def count_tokens(self, text: str) -> int: ...

    def stream_chat(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        cancel: threading.Event | None = None,
        tools: Sequence[dict] | None = None,
    ) -> Iterator[Chunk]: ...

    def generate(
        self,
        prompts: Sequence[str | Sequence[Message]],
        params: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> list[Completion]: ...

    def stream_many(self, prompts: Sequence[Sequence[Message]], params: Sequence[SamplingParams],
                    cancel: threading.Event | None = None) -> Iterator[tuple[int, Chunk]]:
        """Several chat replies produced together (one batched generation on a local model); yields (row, Chunk)
        as tokens arrive; each row's last chunk carries its ReplyStats."""

    def score_choices(
        self, prompts: Sequence[str], choices: Sequence[str]
    ) -> list[list[float]]: ...

    def close(self) -> None: ...
