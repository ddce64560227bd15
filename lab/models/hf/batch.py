"""Batched generation (evaluations, lab.serve's completions): one completion per prompt, batches sized by
free GPU memory on CUDA (8 rows on a CPU) and halved on an out-of-memory error, through the engine on CUDA
and `generate()` elsewhere."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Sequence

import torch
from transformers import StoppingCriteriaList

from lab.engine.sampling import generate_kwargs, sampler_for
from lab.interface import Completion, Message, SamplingParams, draw_seed, finish_reason
from lab.models.hf.decoding import CancelOnEvent, cut_at_stop, left_pad
from lab.models.hf.memory import OutOfMemory, rows_that_fit, user_error


def generate(hf, prompts: Sequence[str | Sequence[Message]], params: SamplingParams,
             cancel: threading.Event | None = None, batch_size: int | None = None) -> list[Completion]:
    """One completion per prompt (raw text, token ids, or chat messages rendered with the template); batch `i`
    starting at prompt `start` runs with seed + start, so a run cut into the same batches draws the same numbers."""
    cancel = cancel or threading.Event()
    seed = draw_seed(params.seed)
    rows = [hf.encode(p) if isinstance(p, str) else hf.token_ids(p) if is_token_ids(p) else hf.encode(hf.render(p))
            for p in prompts]
    if batch_size is None and hf.device.type == "cuda":  # sized by the longest row
        batch_size = rows_that_fit(hf.model.config, max(map(len, rows), default=0) + params.max_new_tokens)
    batch_size = max(1, min(batch_size or 8, len(rows) or 1))
    if batch_size == 1 and not params.greedy and hf.scheduler is not None:
        return _scheduled(hf, rows, params, cancel, seed)
    out: list[Completion] = []
    start = 0
    while start < len(rows):
        try:
            out += _batch(hf, rows[start:start + batch_size], params, cancel, seed + start, batch_size)
        except OutOfMemory:
            if batch_size == 1:
                raise
            batch_size //= 2  # out of memory: the same rows again in smaller batches
            continue
        start += batch_size
    return out


def _scheduled(hf, rows: list[list[int]], params: SamplingParams, cancel: threading.Event,
               seed: int) -> list[Completion]:
    """Sampled rows one to a batch, row k with seed + k, as rows of the model's scheduler: each draws exactly
    what a reply with that seed draws on the page or through lab.serve (alone or beside others), and they
    decode together instead of one after another."""
    from lab.models.hf.streaming import scheduled

    out: list[Completion] = []
    for start in range(0, len(rows), hf.max_rows):
        part = rows[start:start + hf.max_rows]
        texts, stats = [""] * len(part), [None] * len(part)
        seeded = [replace(params, seed=seed + start + k) for k in range(len(part))]
        for r, c in scheduled(hf, part, seeded, cancel, time.perf_counter(),
                              [hf.constraint(p, rows=1) for p in seeded]):
            texts[r] += c.text
            stats[r] = c.stats or stats[r]
        out += [Completion(text=t, prompt_tokens=len(ids), completion_tokens=s.completion_tokens,
                           finish_reason=s.finish_reason) for t, ids, s in zip(texts, part, stats)]
    return out


def is_token_ids(prompt) -> bool:
    """A prompt given as token ids: a non-empty list of ints (chat messages are a list of dicts)."""
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(isinstance(t, int) for t in prompt)


def _batch(hf, rows: list[list[int]], params: SamplingParams, cancel: threading.Event, seed: int,
           batch_rows: int) -> list[Completion]:
    constraint = hf.constraint(params, rows=len(rows))
    with hf.lock, torch.inference_mode():
        try:
            if hf.fast is not None:
                new, ended = _engine(hf, rows, params, cancel, constraint, seed, batch_rows)
            else:
                torch.manual_seed(seed)
                new, ended = _plain(hf, rows, params, cancel, constraint)
        except BaseException as e:
            raise user_error(e, hf.info.name) from e
    out = []
    for prompt, ids, end in zip(rows, new, ended):
        text, hit = cut_at_stop(hf.tok.decode(ids, skip_special_tokens=True), params.stop)
        out.append(Completion(text=text, prompt_tokens=len(prompt), completion_tokens=len(ids),
                              finish_reason=finish_reason(end or hit, cancel.is_set())))
    return out


def _plain(hf, rows, params: SamplingParams, cancel, constraint) -> tuple[list[list[int]], list[bool]]:
    ids, mask, pads = left_pad(rows, hf.pad_id, hf.device)
    kw = generate_kwargs([params] * len(rows), pads, ids.shape[1], hf.eos_ids, hf.pad_id, constraint)
    if params.stop:
        kw.update(stop_strings=list(params.stop), tokenizer=hf.tok)
    seqs = hf.model.generate(input_ids=ids, attention_mask=mask,
                             stopping_criteria=StoppingCriteriaList([CancelOnEvent(cancel)]), **kw)
    new, ended = [], []
    for row in seqs[:, ids.shape[1]:].tolist():
        end = next((i for i, t in enumerate(row) if t in hf.eos_ids), None)
        new.append(row if end is None else row[:end + 1])
        ended.append(end is not None)
    return new, ended


def _engine(hf, rows, params: SamplingParams, cancel, constraint, seed: int, batch_rows: int):
    """Through the engine; its decoder keeps `batch_rows` rows so later batches of a run (the last one smaller)
    replay the same captured graph. LLM.int8 outliers past the slots: the batch again, with wider slots."""
    stopped = [False] * len(rows)
    tails: list[list[int]] = [[] for _ in rows]

    def on_tokens(got: list[int]) -> bool:  # stop strings: a row is done once its recent text has one
        for i, t in enumerate(got):
            if not stopped[i]:
                tails[i] = (tails[i] + [t])[-24:]
                text = hf.tok.decode(tails[i], skip_special_tokens=True)
                stopped[i] = t in hf.eos_ids or any(s in text for s in params.stop)
        return all(stopped)

    while True:
        torch.manual_seed(seed)
        res = hf.fast.decode(rows, sampler_for(params, hf.eos_ids, constraint), params.max_new_tokens,
                             batch=batch_rows, cancel=cancel, on_tokens=on_tokens if params.stop else None)
        if not res.clipped:
            return res.tokens, res.finished
        constraint = hf.constraint(params, rows=len(rows))
        stopped[:] = [False] * len(rows)
        tails[:] = [[] for _ in rows]
