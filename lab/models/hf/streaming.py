"""Streaming replies from a Transformers model: one chat reply (the page), or several streamed per row (Compare's
panes, lab.serve's n rows and completions).

Where the engine can run the model (`hf.scheduler`, on CUDA and on a CPU alike), every row is a request of the
engine's scheduler (lab.engine.scheduler): it joins the batch that is running, whoever else's replies are in it,
and `scheduled` turns its token ids into text as they arrive (detokenizing, stop strings, stats) and yields
`(row, Chunk)`. Each row has its own settings, seed, max new tokens, stop strings and grammar; a seeded row gives
the same reply alone or beside others. While it waits for a row, its chunks say its place in line.

Elsewhere (`stream`), the rows decode in one `generate()` call: one seed drives the batch (the first a row gives,
else a drawn one), and the batch holds the model until every row ends.

A row ends on end-of-turn, a stop string, its max new tokens, Stop or a consumer that went away.
"""

from __future__ import annotations

import queue
import threading
import time
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


def scheduled(hf, rows: list[list[int]], params: Sequence[SamplingParams], cancel: threading.Event | None,
              t0: float, constraints: Sequence | None = None,
              oom_hint: str = "lower max new tokens or shorten the conversation") -> Iterator[tuple[int, Chunk]]:
    """Rows as requests of the model's scheduler; yields (row, Chunk), each row's last with its stats. Refused
    whole (Busy) when the queue has no room for them all."""
    n, sched = len(rows), hf.scheduler
    cancel = cancel or threading.Event()
    constraints = list(constraints or [None] * n)
    seeds = [draw_seed(p.seed) for p in params]
    out: queue.Queue = queue.Queue()
    reqs = sched.submit_all(list(zip(rows, params, seeds, constraints)), stop_all=cancel, out=out)
    decoders = [IncrementalDecoder(hf.tok) for _ in rows]
    stops = [StopMatcher(p.stop) for p in params]
    clocks = [ReplyClock(t0=t0) for _ in rows]
    queued: list[float | None] = [None] * n
    done = [False] * n
    cuda = hf.device.type == "cuda"

    def finish(r: int, reason: str) -> Iterator[tuple[int, Chunk]]:
        done[r] = True
        reqs[r].cancel.set()  # the scheduler frees the row at its next step, if it has not already
        tail = stops[r].feed(decoders[r].flush()) + stops[r].flush()
        if tail:
            yield r, Chunk(tail)
        stats = clocks[r].stats(len(rows[r]), reason, seeds[r], memory=gpu_memory(cuda))
        # a request that ended while still in line (Stop, a consumer gone) waited all of its time
        stats.queued_s = queued[r] if queued[r] is not None else time.perf_counter() - reqs[r].t_submit
        if constraints[r] is not None:
            stats.closed_early, stats.constraint_s = constraints[r].closed_early[0], constraints[r].seconds
        yield r, Chunk("", stats)

    try:
        while not all(done):
            r, kind, value, at = out.get()
            if kind == "error":
                e = value
                raise (user_error(e, hf.info.name, oom_hint) if isinstance(e, torch.OutOfMemoryError) else e)
            if done[r]:
                continue
            if kind == "wait":
                yield r, Chunk("", waiting=value)
            elif kind == "start":
                queued[r] = at - reqs[r].t_submit
            elif kind == "token":
                clocks[r].tick(at=at)
                text = stops[r].feed(decoders[r].push(value))
                if text:
                    yield r, Chunk(text)
                if stops[r].hit:
                    yield from finish(r, "stop")
            else:  # "end": end of turn, max new tokens, Stop
                yield from finish(r, value)
    finally:  # the consumer went away (page closed, Stop) or something failed: free the rows
        for q in reqs:
            q.cancel.set()
