"""Streaming replies from a Transformers model: one chat reply (the page), or several generated together in
one batch and streamed per row (Compare's panes). Both are the same code: rows of token ids decode
through the engine on CUDA (`lab.engine`) or one `generate()` call elsewhere, and a consumer thread
detokenizes each row as its tokens arrive and yields `(row, Chunk)`.

Every row keeps its own sampling settings, max new tokens and stop strings, although the batch decodes
together. One seed drives the batch (the first a row gives, else a drawn one), so a sampled row's reply
depends on the others in its batch; a greedy row gives the text it gives alone (up to the float noise
left padding can add). A row ends on end-of-turn, a stop string, its max new tokens, Stop or a consumer
that went away; the batch ends when every row has.
"""

from __future__ import annotations

import threading
from typing import Iterator, Sequence

import torch
from transformers import StoppingCriteriaList

from lab.engine.sampling import generate_kwargs, graphable, sampler_for
from lab.interface import Chunk, ReplyClock, SamplingParams, draw_seed
from lab.models.hf.decoding import CancelOnEvent, IncrementalDecoder, Steps, StopMatcher, left_pad
from lab.models.hf.memory import gpu_memory, user_error
from lab.pump import Pump


def stream(hf, rows: list[list[int]], params: Sequence[SamplingParams], cancel: threading.Event | None,
           t0: float, constraint=None, oom_hint: str = "lower max new tokens or shorten the conversation"
           ) -> Iterator[tuple[int, Chunk]]:
    """Decode `rows` (prompt token ids) with their `params`; yields (row, Chunk), each row's last with its stats.
    `constraint`: the JSON grammar (one row). `t0`: when the request came, for time to first token."""
    n = len(rows)
    cancel = cancel or threading.Event()
    halt = threading.Event()  # set here when every row is done, or the consumer went away
    ended = [False] * n
    seed = draw_seed(next((p.seed for p in params if p.seed is not None), None))
    use_fast = hf.fast is not None and (n == 1 or all(map(graphable, params)))
    cuda = hf.device.type == "cuda"
    longest = max(p.max_new_tokens for p in params)

    def work(put) -> None:
        steps = Steps(put)
        with hf.lock, torch.inference_mode():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            torch.manual_seed(seed)
            if use_fast:
                sampler = sampler_for(params[0] if n == 1 else list(params), hf.eos_ids, constraint)
                hf.fast.decode(rows, sampler, longest, cancel=cancel,
                               on_tokens=lambda got: steps.put_step(got) or halt.is_set())
                return
            ids, mask, pads = left_pad(rows, hf.pad_id, hf.device)
            hf.model.generate(input_ids=ids, attention_mask=mask, streamer=steps,
                              stopping_criteria=StoppingCriteriaList([CancelOnEvent(cancel), CancelOnEvent(halt)]),
                              **generate_kwargs(params, pads, ids.shape[1], hf.eos_ids, hf.pad_id, constraint, ended))

    pump = Pump(work, executor=hf.worker)
    decoders = [IncrementalDecoder(hf.tok) for _ in rows]
    stops = [StopMatcher(p.stop) for p in params]
    clocks = [ReplyClock(t0=t0) for _ in rows]
    reasons: list[str | None] = [None] * n

    def finish(r: int, reason: str) -> Iterator[tuple[int, Chunk]]:
        reasons[r] = reason
        ended[r] = True
        tail = stops[r].feed(decoders[r].flush()) + stops[r].flush()
        if tail:
            yield r, Chunk(tail)
        stats = clocks[r].stats(len(rows[r]), reason, seed, memory=gpu_memory(cuda))
        if constraint is not None:
            stats.closed_early, stats.constraint_s = constraint.closed_early[r], constraint.seconds
        yield r, Chunk("", stats)

    finished = False
    try:
        try:
            for step_ids, when in pump:
                for r, token in enumerate(step_ids):
                    if reasons[r] is not None:
                        continue  # padding after the row ended
                    clocks[r].tick(at=when)
                    text = stops[r].feed(decoders[r].push(token))
                    if text:
                        yield r, Chunk(text)
                    if stops[r].hit or token in hf.eos_ids:
                        yield from finish(r, "stop")
                    elif clocks[r].tokens >= params[r].max_new_tokens:
                        yield from finish(r, "length")
                if all(reasons):
                    halt.set()
        except torch.OutOfMemoryError as e:
            raise user_error(e, hf.info.name, oom_hint) from None
        for r in range(n):  # rows still open when generation ended were cut off by Stop
            if reasons[r] is None:
                yield from finish(r, "cancelled" if cancel.is_set() else "length")
        finished = True
    finally:
        if not finished:  # the consumer went away (page closed, Stop) or something failed
            halt.set()
        pump.join(timeout=5)
