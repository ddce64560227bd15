"""The host loop: token ids in, token ids out. Prefill the rows, then one decode step per token; the host
reads token t while the GPU already computes token t+1, so what it does per token (detokenizing, stop
strings, streaming: the caller's `on_tokens`) overlaps the GPU's work instead of adding to it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from lab.engine.decoder import StaticDecoder


@dataclass
class Decoded:
    tokens: list[list[int]]  # each row's new tokens, up to and including its end-of-turn token
    finished: list[bool]  # the row ended on an end-of-turn token
    clipped: bool = False  # LLM.int8: a step had more outlier columns than its slots (see FastPath.decoder)


@torch.inference_mode()
def decode(dec: StaticDecoder, rows: Sequence[Sequence[int]], sampler, max_new: int, eos_ids: Sequence[int],
           pad_id: int, cancel: threading.Event | None = None,
           on_tokens: Callable[[list[int]], bool] | None = None) -> Decoded:
    """Prefill `rows`, then decode up to `max_new` tokens each with `sampler` (`sampling.sampler_for`).
    `on_tokens` gets every step's tokens (one per row) as soon as they reach the host and may return True to
    stop early (a stop string)."""
    n, width = len(rows), max(map(len, rows))
    assert width + max_new <= dec.max_len, (width, max_new, dec.max_len)
    tokens: list[list[int]] = [[] for _ in range(n)]
    finished = [False] * n
    cuda = dec.device.type == "cuda"
    host = [torch.empty(n, dtype=torch.long, pin_memory=cuda) for _ in range(2)]
    events: list = [None, None]  # CUDA: when each host buffer's copy has landed

    def deliver(step: int) -> bool:
        """Hand over the tokens of `step`; True when decoding should end."""
        if cuda:
            events[step % 2].synchronize()
        got = host[step % 2].tolist()
        for i, t in enumerate(got):
            if not finished[i]:
                tokens[i].append(t)
                finished[i] = t in eos_ids
        stop = bool(on_tokens(got)) if on_tokens is not None else False
        return all(finished) or stop or (cancel is not None and cancel.is_set())

    def ship(step: int, ids: torch.Tensor) -> None:
        host[step % 2].copy_(ids[:n], non_blocking=cuda)
        if cuda:
            events[step % 2] = torch.cuda.Event()
            events[step % 2].record()

    def result() -> Decoded:
        return Decoded(tokens, finished, dec.outliers_clipped())

    dec.prefill(rows)
    if sampler.in_graph:
        dec.set_sampling(sampler.params, rows)
        dec.sample()  # the first token alone, so it reaches the host without waiting for a decode step
        ship(0, dec.next)
        if max_new > 1:
            dec.logits_buf.copy_(dec.step())  # its forward pass, queued before the host waits for it
        if deliver(0):
            return result()
        for step in range(1, max_new):
            dec.sample_step()  # token `step`, and the forward pass that scores what comes after it
            ship(step, dec.next)
            if step > 1 and deliver(step - 1):
                return result()
        if max_new > 1:
            deliver(max_new - 1)
        return result()

    sampler.start(rows, dec.logits_buf.shape[1], dec.device)
    history = torch.full((n, width + max_new), pad_id, dtype=torch.long, device=dec.device)
    for i, r in enumerate(rows):
        history[i, width - len(r):width] = torch.tensor(r)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=dec.device)
    done = torch.zeros(n, dtype=torch.bool, device=dec.device)
    logits = dec.logits_buf[:n]
    for step in range(max_new):
        nxt = sampler(history[:, :width + step], logits, step)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)  # finished rows only pad
        done = done | torch.isin(nxt, eos)
        history[:, width + step] = nxt
        dec.ids[:n, 0] = nxt
        ship(step, nxt)
        if step + 1 < max_new:
            logits = dec.step()[:n]
        if step and deliver(step - 1):
            return result()
    deliver(max_new - 1)
    return result()
