"""Pieces of decoding with a Transformers tokenizer that know no model: left padding, the streamer that hands
each step's tokens over, Stop as a stopping criterion, incremental detokenizing, and stop strings."""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Input ids and attention mask with every row's last token at the same (last) position; each row's padding."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = torch.tensor(row)
        mask[r, width - len(row):] = 1
    return ids.to(device), mask.to(device), [width - len(row) for row in rows]


class Steps(BaseStreamer):
    """Hands each decode step's token ids (one per row) from the generating thread to a `put` callback, with
    the time they arrived: `generate()` calls `put` (its first call, the prompt, is skipped); the engine's loop
    calls `put_step`."""

    def __init__(self, put: Callable[[tuple[list[int], float]], None]) -> None:
        self._put = put
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the whole (padded) prompt
            self._prompt_seen = True
            return
        self.put_step(value.reshape(-1).tolist())

    def put_step(self, ids: list[int]) -> None:
        self._put((ids, time.perf_counter()))

    def end(self) -> None:
        """`generate()` calls this when it is done; the work returning is what ends the hand-off."""


class CancelOnEvent(StoppingCriteria):
    """Ends generation at the next decode step once the event is set (Stop, a stop string, a closed page)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


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
