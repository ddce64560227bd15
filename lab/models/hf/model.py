"""One loaded Transformers model behind `lab.interface.ChatModel`: its tokenizer and chat template, the one
lock that keeps one generate or forward at a time (taken in turn: a chat batch and an evaluation alternate), the
long-lived thread replies stream from, the engine's fast path on CUDA and its scheduler (continuous batching of
chat replies, on CUDA and on a CPU). The work itself is in `streaming`, `batch`, `scoring` and `logprobs`.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import torch

from lab import runtime
from lab.engine.fastpath import MIN_SLOTS, FastPath
from lab.engine.layers import supported
from lab.engine.scheduler import FairLock, Scheduler
from lab.errors import LabError
from lab.interface import Capabilities, Chunk, Completion, Message, ModelInfo, SamplingParams
from lab.models.hf import batch, logprobs, streaming
from lab.models.hf.memory import rows_that_fit
from lab.models.hf.scoring import ChoiceScorer

CAPABILITIES = Capabilities(token_ids=True, logprobs=True, rows=True)
MAX_ROWS = int(os.environ.get("LAB_MAX_ROWS", "8"))  # replies decoding together, at most
QUEUE_LIMIT = int(os.environ.get("LAB_QUEUE_LIMIT", "64"))  # requests waiting for a row, at most


class HFModel:
    capabilities = CAPABILITIES

    def __init__(self, model, tokenizer, info: ModelInfo) -> None:
        self.model = model
        self.tok = tokenizer
        self.info = info
        self.device = next(model.parameters()).device
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_ids: list[int] = [eos] if isinstance(eos, int) else list(eos or [])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_ids or [0])[0]
        self.lock = FairLock()  # one generate/forward at a time on this model, in the order asked
        self._grammars = None  # grammar.Grammars, built on the first JSON-mode request
        self._fast: FastPath | None = None
        self.scorer = ChoiceScorer(model, tokenizer, self.pad_id, self.lock, info.name)
        reason = supported(model)
        if self.device.type != "cuda":
            reason = "the fast path is for CUDA; on a CPU plain generate() is not host-bound"
        elif os.environ.get("LAB_FAST", "1") == "0":
            reason = "switched off by LAB_FAST=0"
        self.fast_off_reason: str | None = reason  # None: decoding goes through lab.engine
        self.engine_off_reason = supported(model) or (
            "switched off by LAB_SCHEDULER=0" if os.environ.get("LAB_SCHEDULER", "1") == "0" else None)
        if self.device.type == "cuda" and reason is not None and self.engine_off_reason is None:
            self.engine_off_reason = reason  # on CUDA the scheduler runs on the fast path's decoders
        self._scheduler: Scheduler | None = None
        self.max_rows, self.queue_limit = MAX_ROWS, QUEUE_LIMIT
        # Replies stream from one long-lived thread: CUDA libraries keep their handles and plans per
        # thread, and a fresh thread per reply paid ~50 ms of set-up before its first token.
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-generate")

    @property
    def fast(self) -> FastPath | None:
        """The engine's decoders (static cache, CUDA graphs) when this model can use them, else None."""
        if self.fast_off_reason is not None:
            return None
        if self._fast is None:
            self._fast = FastPath(self.model, self.eos_ids, self.pad_id)
        return self._fast

    @property
    def scheduler(self) -> Scheduler | None:
        """Continuous batching of replies over the engine's decoders (without graphs on a CPU), else None."""
        if self.engine_off_reason is not None:
            return None
        if self._scheduler is None:
            path = self.fast or FastPath(self.model, self.eos_ids, self.pad_id)
            cuda = self.device.type == "cuda"
            self._scheduler = Scheduler(path, self.lock, self.worker, self.eos_ids, self.max_rows, self.queue_limit,
                                        rows_for=(lambda n: rows_that_fit(self.model.config, n)) if cuda else None)
        return self._scheduler

    def set_scheduling(self, max_rows: int | None = None, queue_limit: int | None = None) -> None:
        """How many replies decode together at most, and how many may wait for a row before the next is refused."""
        self.max_rows = max_rows or self.max_rows
        self.queue_limit = self.queue_limit if queue_limit is None else queue_limit
        if self._scheduler is not None:
            self._scheduler.max_rows, self._scheduler.max_waiting = self.max_rows, self.queue_limit

    def set_fast_path(self, on: bool) -> None:
        """Decode through the engine or not; on a CPU the engine runs without graphs (what tests check it with)."""
        self._stop_scheduler()
        if self._fast is not None:
            self._fast.clear()
        self._fast = None
        self.fast_off_reason = None if on else "switched off"

    def _stop_scheduler(self, timeout: float = 10) -> None:
        sched, self._scheduler = self._scheduler, None
        if sched is not None:
            sched.close()
            end = time.monotonic() + timeout
            while sched.running and time.monotonic() < end:
                time.sleep(0.01)

    def warm_up(self) -> None:
        """Build (compile and capture) the batch-1 decode step and its prompt steps now rather than in the
        first reply."""
        if self.fast is not None and self.scheduler is not None:  # the decoder a lone reply runs on
            with self.lock, torch.inference_mode():
                dec = self.fast.acquire(1, MIN_SLOTS)
                dec.prepare_prompts()
                self.fast.release(dec)
        elif self.fast is not None:
            with self.lock, torch.inference_mode():
                self.fast.decoder(1, MIN_SLOTS).prepare_prompts()

    # ---- prompts and tokens -------------------------------------------------------------
    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True,
               tools: Sequence[dict] | None = None) -> str:
        if not getattr(self.tok, "chat_template", None):
            raise LabError(f"{self.info.name} has no chat template, so it cannot chat; use an Instruct model.")
        return self.tok.apply_chat_template(list(messages), tools=list(tools) if tools else None, tokenize=False,
                                            add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        # The chat template already wrote every special token; adding BOS/EOS here would double them.
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def token_ids(self, ids: Sequence[int]) -> list[int]:
        """Token ids a caller gave (a prompt as ids), checked against the vocabulary: an id past it would index
        past the embedding (on CUDA, a device-side assert that takes the process down)."""
        vocab = min(len(self.tok), self.model.config.vocab_size)
        bad = next((t for t in ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab), None)
        if bad is not None:
            raise LabError(f"Token id {bad!r} is not in {self.info.name}'s vocabulary (0 to {vocab - 1:,}).")
        return list(ids)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids, special tokens included (what a prompt given as ids reads as)."""
        return self.tok.decode(self.token_ids(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def tokenizer_info(self) -> dict:
        """The tokenizer's configuration as vLLM's GET /tokenizer_info gives it (tokenizer_config.json's fields
        that clients read: its class, special tokens, chat template, length), so a client can tokenize as we do."""
        tok = self.tok
        info = {"tokenizer_class": type(tok).__name__, "model_max_length": self.info.context_length,
                "bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token,
                "unk_token": tok.unk_token, "chat_template": getattr(tok, "chat_template", None),
                "clean_up_tokenization_spaces": bool(getattr(tok, "clean_up_tokenization_spaces", False)),
                "add_bos_token": bool(getattr(tok, "add_bos_token", False)), "vocab_size": len(tok)}
        return info

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def count_chat_tokens(self, messages: Sequence[Message], tools: Sequence[dict] | None = None) -> int:
        return self.count_tokens(self.render(messages, tools=tools))

    def constraint(self, params: SamplingParams, rows: int):
        """JSON mode's grammar for `rows` rows (None when off); grammars compile once per model, and a schema
        that cannot be enforced fails here, before any decoding."""
        if not params.response_format:
            return None
        if self._grammars is None:
            from lab.models.hf.grammar import Grammars

            self._grammars = Grammars(self.tok, self.model.config.vocab_size, self.eos_ids)
        return self._grammars.constraint(params.response_format, rows, params.max_new_tokens)

    # ---- generation ---------------------------------------------------------------------
    def stream_chat(self, messages: Sequence[Message], params: SamplingParams,
                    cancel: threading.Event | None = None, tools: Sequence[dict] | None = None) -> Iterator[Chunk]:
        t0 = time.perf_counter()
        ids = self.encode(self.render(messages, tools=tools))
        if len(ids) + params.max_new_tokens > self.info.context_length:
            raise LabError(
                f"The prompt ({len(ids):,} tokens) plus max new tokens ({params.max_new_tokens:,}) exceeds "
                f"{self.info.name}'s context of {self.info.context_length:,} tokens; shorten the conversation.")
        constraint = self.constraint(params, rows=1)
        if self.scheduler is not None:
            replies = streaming.scheduled(self, [ids], [params], cancel, t0, [constraint])
        else:
            replies = streaming.stream(self, [ids], [params], cancel, t0, constraint)
        for _, chunk in replies:
            yield chunk

    def stream_many(self, prompts: Sequence[Sequence[Message]], params: Sequence[SamplingParams],
                    cancel: threading.Event | None = None) -> Iterator[tuple[int, Chunk]]:
        t0 = time.perf_counter()
        if not prompts:
            raise LabError("There is nothing to generate: give at least one prompt.")
        if len(prompts) != len(params):
            raise LabError(f"{len(prompts)} prompts need {len(prompts)} sets of sampling settings, not {len(params)}.")
        if any(p.response_format for p in params) and self.scheduler is None:
            raise LabError("JSON mode is not available when several replies are generated together.")
        rows = [self.encode(p) if isinstance(p, str) else self.token_ids(p) if batch.is_token_ids(p)
                else self.encode(self.render(p)) for p in prompts]
        for r, (ids, p) in enumerate(zip(rows, params)):
            if len(ids) + p.max_new_tokens > self.info.context_length:
                raise LabError(
                    f"Prompt {r + 1} ({len(ids):,} tokens) plus its max new tokens ({p.max_new_tokens:,}) exceeds "
                    f"{self.info.name}'s context of {self.info.context_length:,} tokens; shorten it.")
        if self.scheduler is not None:
            yield from streaming.scheduled(self, rows, params, cancel, t0, [self.constraint(p, rows=1) for p in params],
                                           oom_hint="lower max new tokens or use fewer panes")
        else:
            yield from streaming.stream(self, rows, params, cancel, t0,
                                        oom_hint="lower max new tokens or use fewer panes")

    def generate(self, prompts: Sequence[str | Sequence[Message] | Sequence[int]], params: SamplingParams,
                 cancel: threading.Event | None = None, batch_size: int | None = None) -> list[Completion]:
        return batch.generate(self, prompts, params, cancel, batch_size)

    # ---- scoring and log-probabilities ----------------------------------------------------
    def score_choices(self, prompts: Sequence[str], choices: Sequence[str],
                      batch_size: int | None = None) -> list[list[float]]:
        return self.scorer.score_choices(prompts, choices, batch_size)

    def split_context(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of context and continuation, split the way likelihood harnesses do."""
        return self.scorer.split_context(context, continuation)

    def prompt_logprobs(self, text: str | Sequence[int], top: int = 0):
        return logprobs.prompt_logprobs(self, text, top)

    def generate_logprobs(self, prompt: str | Sequence[int], params: SamplingParams, top: int = 0,
                          cancel: threading.Event | None = None):
        return logprobs.generate_with_logprobs(self, prompt, params, top, cancel)

    # ---- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Drop the weights so their memory (GPU included) goes back; the object is unusable after."""
        self._stop_scheduler()
        with self.lock:
            if self._fast is not None:
                self._fast.clear()
            self.model = self.scorer = None
            self._fast = None
        self.worker.shutdown(wait=False)
        runtime.release_gpu_memory()
