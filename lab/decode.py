"""Pieces of streaming decode that are independent of any model: token hand-off between threads,
incremental detokenization, stop strings and cancellation.
"""

from __future__ import annotations

import queue
import threading
import time

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

_END = object()


class TokenQueue(BaseStreamer):
    """Receives token ids from `generate()` (in its thread) and hands them to the consumer.

    `generate()` first puts the whole prompt, then one tensor per decode step. The timestamps
    of the first and last new token give time to first token and decode speed.
    """

    def __init__(self) -> None:
        self._q: queue.Queue = queue.Queue()
        self._prompt_seen = False
        self.count = 0
        self.t_first: float | None = None
        self.t_last: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        ids = value.reshape(-1).tolist()  # batch of one: a single id per step
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first = now
        self.t_last = now
        self.count += len(ids)
        for i in ids:
            self._q.put(i)

    def end(self) -> None:
        self._q.put(_END)

    def __iter__(self):
        while (item := self._q.get()) is not _END:
            yield item


class CancelOnEvent(StoppingCriteria):
    """Ends generation at the next decode step once the event is set (Stop, a stop string, a closed page)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class TopKTopP(LogitsProcessor):
    """Temperature, then top-k, then top-p (nucleus) among the k survivors: Transformers' order.

    Transformers' separate warpers keep the same tokens, but its top-p sorts the whole vocabulary
    (151,665 logits for Qwen2.5) every step although top-k has already ruled out all but k of them;
    on a CPU that sort costs more than a small model's forward pass. Token i of the k (by falling
    logit) survives when the probability mass before it is still below top_p, which is the
    warper's rule ("drop while the ascending cumulative mass is <= 1 - top_p") read from the top.
    The temperature is applied here, first, because top-p must see the tempered distribution; the
    caller switches Transformers' own temperature warper off (it would run after this one).
    """

    def __init__(self, top_k: int, top_p: float, temperature: float = 1.0) -> None:
        assert top_k > 0 and 0 < top_p <= 1 and temperature > 0, (top_k, top_p, temperature)
        self.top_k, self.top_p, self.temperature = top_k, top_p, temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        values, index = scores.topk(min(self.top_k, scores.shape[-1]), dim=-1)  # sorted, largest first
        if self.temperature != 1.0:
            values = values / self.temperature
        if self.top_p < 1.0:
            probs = values.softmax(dim=-1)
            before = probs.cumsum(dim=-1) - probs
            values = values.masked_fill(before >= self.top_p, float("-inf"))  # the first token always stays
        return torch.full_like(scores, float("-inf")).scatter_(-1, index, values)


class IncrementalDecoder:
    """Turns a stream of token ids into text deltas.

    Byte-level BPE splits one Chinese character (or emoji) over several tokens; decoding a prefix
    of them gives U+FFFD. So text is emitted only once the decoded window no longer ends in an
    incomplete character, and each step decodes only a short window (prefix_offset..end), not the
    whole reply, so the cost per token stays flat.
    """

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end, less a character cut off mid-way (a reply
        stopped between the bytes of one character would otherwise end in U+FFFD)."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix):].rstrip("\ufffd")


class StopMatcher:
    """Cuts streamed text at the first stop string, holding back text that may begin one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        """Text that is safe to show now; sets `hit` once a stop string appears."""
        if not self.stops or self.hit:
            return "" if self.hit else text
        self.pending += text
        out, self.hit = cut_at_stop(self.pending, self.stops)
        if self.hit:
            self.pending = ""
            return out
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.hit else self.pending), ""
        return out


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def finish_reason(ended: bool, cancelled: bool) -> str:
    """Why a reply ended: "stop" (end of turn or a stop string), "cancelled", or "length" (max new tokens)."""
    return "stop" if ended else "cancelled" if cancelled else "length"
