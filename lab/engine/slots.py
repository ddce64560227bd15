"""Rows of a static decoder as slots that requests take and give back while the others keep decoding: what the
scheduler (lab.engine.scheduler) does to a `StaticDecoder` between two steps.

Every row of a decoder shares one slot index `cur`; row b's tokens sit in slots pad[b]..cur-1 and its positions
count from pad[b] (decoder.py). So a newcomer joins by having its prompt's keys and values end at `cur`: they are
computed beside the batch (`PromptPass`, a chunk at a time) and copied into the row (`place`). A row leaves by
being marked done (it only pads from then on). When `cur` reaches the end of the buffers, every row moves left by
the oldest row's start (`shift`): positions count from pad, so nothing but the slot numbers changes. `move_row`
carries a running row from one decoder to another (a lone reply's batch-1 decoder into the batched one).

Everything here queues GPU work on the current stream after the step in flight, so it needs no synchronisation.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from lab.engine import sampling
from lab.engine.decoder import StaticDecoder
from lab.engine.layers import layers_forward, rope
from lab.interface import SamplingParams


def set_row(d: StaticDecoder, b: int, params: SamplingParams, prompt: Sequence[int], seed: int,
            on_host: bool = False) -> None:
    """Row b's sampling settings, seed and prompt tokens (as seen, for the repetition penalty). `on_host`: the row
    is sampled on the host (a grammar, top-k off or large), so the graph's penalty stays off for it."""
    penalty = 1.0 if on_host else params.repetition_penalty
    d.temperature[b] = params.temperature or 1.0
    d.top_p[b] = params.top_p
    d.top_k[b] = params.top_k if 1 <= params.top_k <= sampling.TOP_K_MAX else sampling.TOP_K_MAX
    d.penalty[b] = penalty
    d.greedy[b] = params.greedy
    d.block_eos[b] = params.ignore_eos
    d.done[b] = False
    d.seeds[b] = seed
    d.seen[b] = False
    if penalty != 1.0 and len(prompt):
        d.seen[b, torch.tensor(list(prompt), device=d.device)] = True


def free_row(d: StaticDecoder, b: int) -> None:
    """Row b ends: it samples only padding from the next step on (its slots are left as they are)."""
    d.done[b] = True


class PromptPass:
    """One prompt's keys and values, computed a chunk at a time beside the running batch (a long prompt does not
    hold the others' next tokens for its whole forward pass), then `place`d into a row."""

    def __init__(self, d: StaticDecoder, prompt: Sequence[int]) -> None:
        self.d, self.length, self.done = d, len(prompt), 0
        self.ids = torch.tensor([list(prompt)], dtype=torch.long, device=d.device)
        shape = (1, d.heads.n_kv, self.length, d.heads.dim)
        self.k = [torch.empty(shape, dtype=d.dtype, device=d.device) for _ in d.k]
        self.v = [torch.empty(shape, dtype=d.dtype, device=d.device) for _ in d.v]
        self.logits: torch.Tensor | None = None  # float32 [1, vocab] of the last prompt token, once done

    @property
    def finished(self) -> bool:
        return self.done == self.length

    @torch.inference_mode()
    def advance(self, chunk: int) -> None:
        """The next `chunk` tokens of the prompt: causal attention over every token before them."""
        d, start = self.d, self.done
        width = min(chunk, self.length - start)
        end = start + width
        heads, layers = d.heads, d.model.model.layers
        positions = torch.arange(start, end, device=d.device)
        cos, sin = rope(positions[:, None], d.rotary, d.dtype)  # [width, 1, dim]
        # query j (position start + j) sees keys 0..start + j
        mask = None if start == 0 else (torch.arange(end, device=d.device)[None, :] <= positions[:, None])

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.k[i][:, :, start:end].copy_(k.transpose(1, 2))
            self.v[i][:, :, start:end].copy_(v.transpose(1, 2))
            o = F.scaled_dot_product_attention(q.transpose(1, 2), self.k[i][:, :, :end], self.v[i][:, :, :end],
                                               attn_mask=mask, is_causal=mask is None,
                                               scale=layers[i].self_attn.scaling, enable_gqa=heads.group > 1)
            return o.transpose(1, 2).reshape(1, width, heads.n_heads * heads.dim)

        h = layers_forward(d.model, d.model.model.embed_tokens(self.ids[:, start:end]), cos, sin, attend, heads,
                           d.norm)
        self.done = end
        if self.finished:
            h = d.norm(d.model.model.norm, h[:, -1:])
            self.logits = d.model.lm_head(h[:, 0]).float()


@torch.inference_mode()
def place(d: StaticDecoder, b: int, prompt: PromptPass) -> int:
    """Row b takes the finished prompt: its keys and values end at `cur`, and its last logits wait in `logits_buf`
    for the next sample. Returns the row's first slot. `cur` must be at least the prompt's length (`shift`)."""
    n, at = prompt.length, d.at
    assert prompt.finished and n <= at <= d.max_len, (prompt.done, n, at, d.max_len)
    for dst, src in zip(d.k + d.v, prompt.k + prompt.v):
        dst[b, :, at - n:at].copy_(src[0])
    d.pad[b] = at - n
    d.logits_buf[b].copy_(prompt.logits[0])
    return at - n


@torch.inference_mode()
def shift(d: StaticDecoder, by: int) -> None:
    """Every row's slots `by` places on (negative: back); what wraps around lands outside every row's slots."""
    if by == 0:
        return
    assert 0 <= d.at + by <= d.max_len, (d.at, by, d.max_len)
    for t in d.k + d.v:
        t.copy_(t.roll(by, dims=2))
    d.pad.add_(by)
    d.cur.add_(by)
    d.at += by


@torch.inference_mode()
def move_row(src: StaticDecoder, r: int, start: int, dst: StaticDecoder, b: int) -> int:
    """Carry src's row r (its slots from `start` to src's `cur`, sampler state and waiting logits) into dst's row
    b, ending at dst's `cur`; returns the row's first slot in dst."""
    n = src.at - start
    assert n <= dst.at <= dst.max_len, (n, dst.at, dst.max_len)
    for to, frm in zip(dst.k + dst.v, src.k + src.v):
        to[b, :, dst.at - n:dst.at].copy_(frm[r, :, start:src.at])
    for name in ("logits_buf", "temperature", "top_p", "top_k", "penalty", "greedy", "block_eos", "done", "seen",
                 "seeds", "next", "ids"):
        getattr(dst, name)[b].copy_(getattr(src, name)[r])
    dst.pad[b] = dst.at - n
    return dst.at - n
