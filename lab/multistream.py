"""Several chat replies from one Transformers model in ONE batched `generate()` call, streamed per row.

    for row, chunk in stream_many(hf_model, [messages_a, messages_b], [params_a, params_b]):
        texts[row] += chunk.text            # chunk.stats is set on each row's last chunk

Every row keeps its own sampling settings although the batch decodes together: `RowSampler`, a
logits processor, applies each row's repetition penalty, temperature, top-k and top-p (a greedy
row keeps only its argmax, so drawing from it is the argmax) and forces end-of-turn once a row has
its max new tokens or hit a stop string; Transformers then pads that row until the batch ends.
`StepQueue`, the streamer, hands each decode step's token ids (one per row) to the consuming thread,
which detokenizes every row incrementally and yields `(row, Chunk)` as text arrives.

One seed drives the whole batch (the first one the rows give, else a drawn one), so a row's sampled reply
depends on the others in its batch; a greedy row gives the same text as that row generated alone
(up to the float noise left padding can add).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from lab import fast, runtime
from lab.backend import Chunk, Message, ReplyStats, SamplingParams
from lab.decode import CancelOnEvent, IncrementalDecoder, StopMatcher, TopKTopP
from lab.errors import LabError

_END = object()


class StepQueue(BaseStreamer):
    """Receives one tensor of token ids per decode step (one id per row) from `generate()`."""

    def __init__(self) -> None:
        self._q: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the whole (padded) prompt
            self._prompt_seen = True
            return
        self.put_step(value.reshape(-1).tolist())

    def put_step(self, ids: list[int]) -> None:
        self._q.put((ids, time.perf_counter()))

    def end(self) -> None:
        self._q.put(_END)

    def __iter__(self):
        while (item := self._q.get()) is not _END:
            yield item


class RowSampler(LogitsProcessor):
    """Per-row repetition penalty, temperature, top-k and top-p; greedy rows keep only their argmax.

    `ended[r]` (set by the consumer on a stop string) or a row reaching its own max new tokens makes the
    row emit end-of-turn, which Transformers counts as that row finished. The repetition penalty reads
    only the row's own tokens, not its left padding (Transformers' penalty would also count the pad id).
    """

    def __init__(self, params: Sequence[SamplingParams], pad_lengths: Sequence[int], width: int, eos_id: int,
                 ended: list[bool]) -> None:
        self.params, self.pad, self.width = list(params), list(pad_lengths), width
        self.eos_id, self.ended = eos_id, ended
        self.warpers = [None if p.greedy else TopKTopP(p.top_k or 1 << 62, p.top_p, p.temperature) for p in params]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.width  # tokens produced so far by every row
        out = torch.full_like(scores, float("-inf"))
        for r, p in enumerate(self.params):
            if self.ended[r] or step >= p.max_new_tokens:
                out[r, self.eos_id] = 0.0
                continue
            row = scores[r:r + 1]
            if p.repetition_penalty != 1.0:
                seen = input_ids[r:r + 1, self.pad[r]:]
                picked = row.gather(1, seen)
                picked = torch.where(picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty)
                row = row.scatter(1, seen, picked)
            if self.warpers[r] is None:
                out[r, row[0].argmax()] = 0.0
            else:
                out[r:r + 1] = self.warpers[r](input_ids[r:r + 1], row)
        return out


def _check(hf_model, prompts: Sequence, params: Sequence[SamplingParams], fast_path: bool = False) -> None:
    if not prompts:
        raise LabError("There is nothing to generate: give at least one prompt.")
    if len(prompts) != len(params):
        raise LabError(f"{len(prompts)} prompts need {len(prompts)} sets of sampling settings, not {len(params)}.")
    for p in params:
        if p.response_format or (p.ignore_eos and not fast_path):
            raise LabError("JSON mode and ignore_eos are not available when several replies are generated together.")


def stream_many(hf_model, prompts: Sequence[Sequence[Message]], params: Sequence[SamplingParams],
                cancel: threading.Event | None = None) -> Iterator[tuple[int, Chunk]]:
    """The local `ChatModel.stream_many`: one batched generation for every prompt, each row streamed."""
    t0 = time.perf_counter()
    # On CUDA the rows decode through lab.fast (static cache, CUDA graph, each row's settings in the graph).
    use_fast = getattr(hf_model, "fast", None) is not None and params and all(map(fast.Sampler.graphable, params))
    _check(hf_model, prompts, params, fast_path=bool(use_fast))
    cancel = cancel or threading.Event()
    halt = threading.Event()  # set here when every row is done, or the consumer went away
    rows = [hf_model.encode(hf_model.render(m)) for m in prompts]
    for r, (ids, p) in enumerate(zip(rows, params)):
        if len(ids) + p.max_new_tokens > hf_model.info.context_length:
            raise LabError(
                f"Prompt {r + 1} ({len(ids):,} tokens) plus its max new tokens ({p.max_new_tokens:,}) exceeds "
                f"{hf_model.info.name}'s context of {hf_model.info.context_length:,} tokens; shorten it.")
    n = len(rows)
    width = max(map(len, rows))
    pads = [width - len(ids) for ids in rows]
    input_ids = torch.full((n, width), hf_model.pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, ids in enumerate(rows):  # left padding: every row's next token sits at the same last position
        input_ids[r, pads[r]:] = torch.tensor(ids)
        mask[r, pads[r]:] = 1
    input_ids, mask = input_ids.to(hf_model.device), mask.to(hf_model.device)
    seed = hf_model._seed(next((p for p in params if p.seed is not None), params[0]))  # the first seed given
    ended = [False] * n
    sampler = RowSampler(params, pads, width, hf_model.eos_ids[0], ended)
    streamer = StepQueue()
    failure: list[BaseException] = []
    cuda = hf_model.device.type == "cuda"
    # RowSampler does every row's warping; Transformers' own warpers stay off (greedy: plain argmax)
    choose = (dict(do_sample=False, temperature=None, top_k=None, top_p=None) if all(p.greedy for p in params)
              else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0))

    def work() -> None:
        try:
            with hf_model._lock, torch.inference_mode():
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                torch.manual_seed(seed)
                if use_fast:
                    dec = hf_model.fast.decoder(n, width + max(p.max_new_tokens for p in params))

                    def hand_over(got: list[int]) -> bool:
                        streamer.put_step(got)
                        return halt.is_set()

                    fast.decode(dec, rows, fast.RowsSampler(params), max(p.max_new_tokens for p in params),
                                hf_model.eos_ids, hf_model.pad_id, cancel, on_tokens=hand_over)
                    return
                hf_model.model.generate(
                    input_ids=input_ids, attention_mask=mask, streamer=streamer,
                    max_new_tokens=max(p.max_new_tokens for p in params),
                    repetition_penalty=1.0, eos_token_id=hf_model.eos_ids, pad_token_id=hf_model.pad_id,
                    **choose,
                    logits_processor=LogitsProcessorList([sampler]),
                    stopping_criteria=StoppingCriteriaList([CancelOnEvent(cancel), CancelOnEvent(halt)]),
                )
        except BaseException as e:  # handed to the consumer, which raises it in its own thread
            failure.append(e)
        finally:
            streamer.end()

    worker = threading.Thread(target=work, name="lab-generate-many", daemon=True)
    worker.start()
    decoders = [IncrementalDecoder(hf_model.tok) for _ in rows]
    stops = [StopMatcher(p.stop) for p in params]
    counts, reasons = [0] * n, [None] * n
    t_first: float | None = None
    t_last = [0.0] * n

    def finish(r: int, reason: str) -> Iterator[tuple[int, Chunk]]:
        reasons[r] = reason
        ended[r] = True
        tail = stops[r].feed(decoders[r].flush()) + stops[r].flush()
        if tail:
            yield r, Chunk(tail)
        decode_tps = None
        if counts[r] > 1 and t_first is not None and t_last[r] > t_first:
            decode_tps = (counts[r] - 1) / (t_last[r] - t_first)
        yield r, Chunk("", ReplyStats(
            prompt_tokens=len(rows[r]), completion_tokens=counts[r],
            ttft_s=(t_first - t0) if t_first is not None and counts[r] else None,
            decode_tokens_per_s=decode_tps, total_s=time.perf_counter() - t0, finish_reason=reason, seed=seed,
            gpu_mem_in_use_gib=runtime.gpu_allocated_gib() if cuda else None,
            gpu_mem_peak_gib=runtime.gpu_peak_gib() if cuda else None))

    finished = False
    try:
        for step_ids, when in streamer:
            t_first = t_first or when
            for r, token in enumerate(step_ids):
                if reasons[r] is not None:
                    continue  # padding after the row ended
                counts[r] += 1
                t_last[r] = when
                text = stops[r].feed(decoders[r].push(token))
                if text:
                    yield r, Chunk(text)
                if stops[r].hit or token in hf_model.eos_ids:
                    yield from finish(r, "stop")
                elif counts[r] >= params[r].max_new_tokens:
                    yield from finish(r, "length")
            if all(reasons):
                halt.set()
        worker.join()
        if failure:
            raise _user_error(failure[0], hf_model.info.name) from failure[0]
        for r in range(n):  # rows still open when generation ended were cut off by cancel
            if reasons[r] is None:
                yield from finish(r, "cancelled" if cancel.is_set() else "length")
        finished = True
    finally:
        if not finished:  # the consumer went away (page closed, Stop) or something failed
            halt.set()
        worker.join(timeout=5)


def _user_error(e: BaseException, name: str) -> BaseException:
    if isinstance(e, torch.OutOfMemoryError):
        runtime.release_gpu_memory()
        return LabError(f"{name} ran out of GPU memory on this request; lower max new tokens or use fewer panes.")
    return e
