"""Continuous batching: many replies decoding together on one model, each joining the running batch at a step
boundary and leaving it on end of text, its max new tokens, a stop string or Stop (its row free for the next one
within a step). Hand-written, not borrowed from vLLM or SGLang: the scheduler is the product here, and it drives
this project's own static-cache decoder (rows as slots, CUDA graphs), which no serving library knows.

    sched = Scheduler(path, lock, executor, eos_ids, max_rows=8, max_waiting=64)
    req = sched.submit(prompt_ids, params, seed, stop_all=event)  # Busy past the queue's limit
    for kind, value, at in req.events(): ...                      # ("wait", position), ("start", None),
                                                                  # ("token", id), ("end", reason)
One reply alone decodes on the batch-1 decoder, the way a reply always has (its captured prompt step and
compiled step: batch-1 speed as before); a second arrival moves it into the batched decoder's row 0 and joins
beside it (lab.engine.slots). A newcomer's prompt is computed a chunk at a time between the batch's steps, so
running streams wait one chunk, not a whole long prompt. Each row keeps its own settings, seed (the in-graph
noise is a hash of seed and length: the same draws alone or batched), stop strings (the consumer watches them and
halts the row) and repetition penalty; rows with a grammar or top-k off are sampled on the host beside the rest.
Past the rows that fit, requests wait in a FIFO queue and hear their position; past `max_waiting`, `Busy`.

Float noise: a row computes the same arithmetic alone and batched, but a product over 8 rows may take other
kernels than over 1, so 16-bit logits can differ in the last bits and a near-tie can flip; in float32 greedy
replies are equal (tests/engine/test_scheduler.py).
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from lab.engine import sampling, slots
from lab.engine.decoder import StaticDecoder
from lab.errors import LabError
from lab.interface import SamplingParams

SLACK = 2  # a host-sampled row's token history: room past its max new tokens for the step in flight
# The decode loop waits on the GPU with the GIL released and must get it back at once, while the threads that
# stream its tokens (detokenizing, one SSE event per token) hold it in turns: Python's 5 ms switch interval can
# cost a step of the batch each time. 0.5 ms took 32 streams from 10.2x to 13.5x one stream (H200, lab.serve);
# on a CPU, where the step itself runs Python, it gained nothing (tiny-random, 2 cores), so it stays at Python's.
SWITCH_INTERVAL_S = 0.0005


class Busy(LabError):
    """The queue is full: the request was not taken (lab.serve answers 429)."""


class FairLock:
    """A lock taken in the order it was asked for, so a model's evaluation and its chat batch take turns instead
    of one thread starving the other (threading.Lock lets the releasing thread take it straight back).

    A holder that asks `light=True` (the chat scheduler: its steps are short and its memory is already set
    aside) may be let in between two pieces of a long holder's work (`offer`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._line: collections.deque = collections.deque()  # (token, light) in the order asked
        self._held = False

    def acquire(self, blocking: bool = True, timeout: float = -1, light: bool = False) -> bool:
        me = (object(), light)
        with self._cond:
            self._line.append(me)
            ready = lambda: self._line[0] is me and not self._held  # noqa: E731
            ok = self._cond.wait_for(ready, None if timeout < 0 else timeout) if blocking else ready()
            self._line.remove(me)
            if ok:
                self._held = True
            self._cond.notify_all()
            return ok

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        return len(self._line)

    @contextlib.contextmanager
    def light(self):
        """Held as a light holder (see the class)."""
        self.acquire(light=True)
        try:
            yield self
        finally:
            self.release()

    def offer(self, settle=None) -> bool:
        """Between two pieces of a long holder's work (a scoring batch, a layer at a time): when a light holder
        is first in line, `settle()` (the GPU finishes what was queued, so its step is not queued behind that),
        let it have its turn, and come back at the end of the line. True if it gave way. Only light holders are
        let in: a second evaluation's batch beside this one's half-done batch could run out of memory."""
        line = self._line
        if not line or not line[0][1]:
            return False
        if settle is not None:
            settle()
        self.release()
        self.acquire()
        return True

    def __enter__(self) -> "FairLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass
class Request:
    """One reply's place in line and in the batch; its events go to the consumer through `out`."""

    prompt: list[int]
    params: SamplingParams
    seed: int
    constraint: object = None  # JSON mode's grammar (one row), sampled on the host
    cancel: threading.Event = field(default_factory=threading.Event)  # this row: a stop string, a consumer gone
    stop_all: threading.Event = field(default_factory=threading.Event)  # the caller's Stop (all its rows)
    out: queue.Queue = field(default_factory=queue.Queue)  # (tag, kind, value, time)
    tag: int = 0  # which of the caller's rows (several may share `out`)
    t_submit: float = field(default_factory=time.perf_counter)
    position: int = 0  # in line (1 = next); 0 once it has a row

    def put(self, item: tuple) -> None:
        self.out.put((self.tag, *item))

    @property
    def halted(self) -> bool:
        return self.cancel.is_set() or self.stop_all.is_set()

    @property
    def need(self) -> int:
        return len(self.prompt) + self.params.max_new_tokens  # slots: no step runs for a token past the last

    @property
    def on_host(self) -> bool:
        return self.constraint is not None or not sampling.graphable(self.params)

    def events(self, timeout: float | None = None) -> Iterator[tuple[str, object, float]]:
        """(kind, value, time) until the reply ends; a failure of the batch is raised here."""
        while True:
            _, kind, value, at = self.out.get(timeout=timeout)
            if kind == "error":
                raise value
            yield kind, value, at
            if kind == "end":
                return


class _Row:
    def __init__(self, req: Request, start: int | None, eos_ids) -> None:
        self.req, self.start, self.count, self.ended, self.fresh = req, start, 0, False, True
        self.sampler = None  # start None: its prompt pass is still running
        if req.on_host:  # its own sampler and token history (the grammar reads the last token)
            self.sampler = sampling.HostSampler(req.params, sorted(eos_ids), req.constraint)
            self.history = torch.zeros((1, len(req.prompt) + req.params.max_new_tokens + SLACK), dtype=torch.long)
            self.history[0, :len(req.prompt)] = torch.tensor(req.prompt)


@dataclass
class _Step:
    rows: list[tuple[int, _Row]]
    host: torch.Tensor
    event: object = None


class Scheduler:
    def __init__(self, path, lock: FairLock, executor, eos_ids: Sequence[int], max_rows: int = 8,
                 max_waiting: int = 64, chunk: int | None = None, slice_s: float = 0.1, rows_for=None) -> None:
        """`path`: a FastPath (its decoders, kept while in use); `executor`: the model's long-lived thread;
        `rows_for(length)`: how many rows of that length fit (free GPU memory), capped by `max_rows`."""
        self.path, self.lock, self.executor = path, lock, executor
        self.eos = set(eos_ids)
        self.max_rows, self.max_waiting = max(1, max_rows), max_waiting
        self.chunk = chunk or int(os.environ.get("LAB_PREFILL_CHUNK", "512"))
        self.slice_s, self.rows_for = slice_s, rows_for
        self.mutex = threading.Lock()  # guards `waiting` and `running`
        self.waiting: collections.deque[Request] = collections.deque()
        self.running = False
        self.dec: StaticDecoder | None = None
        self.rows: list[_Row | None] = []
        self.prompt: tuple[int, slots.PromptPass] | None = None  # (row, its prompt pass in progress)
        self.pending: list[_Step] = []
        self.steps = 0  # decode steps run (tests read it)
        device = getattr(getattr(path, "model", None), "device", None)
        if getattr(device, "type", None) == "cuda" and sys.getswitchinterval() > SWITCH_INTERVAL_S:  # process-wide
            sys.setswitchinterval(SWITCH_INTERVAL_S)

    # ---- the consumer's side --------------------------------------------------------------------------
    def submit(self, prompt: Sequence[int], params: SamplingParams, seed: int, constraint=None,
               stop_all: threading.Event | None = None, out: queue.Queue | None = None, tag: int = 0) -> Request:
        return self.submit_all([(prompt, params, seed, constraint)], stop_all, out, tags=[tag])[0]

    def submit_all(self, rows: Sequence[tuple], stop_all: threading.Event | None = None,
                   out: queue.Queue | None = None, tags: Sequence[int] | None = None) -> list[Request]:
        """Several rows of one caller, each (prompt, params, seed, constraint), into the line together: an idle
        model starts them in one prefill, and they are refused whole (Busy) when the queue has no room for all."""
        stop_all = stop_all or threading.Event()
        out = out if out is not None else queue.Queue()
        reqs = [Request(list(prompt), params, seed, constraint, stop_all=stop_all, out=out, tag=tag)
                for (prompt, params, seed, constraint), tag in zip(rows, tags or range(len(rows)))]
        with self.mutex:
            if len(self.waiting) + len(reqs) > self.max_waiting:
                raise Busy(f"The model is busy: its queue is full ({len(self.waiting)} waiting for a row); "
                           "try again in a moment.")
            self.waiting.extend(reqs)
            if not self.running:
                self.running = True
                self.executor.submit(self._run)
        return reqs

    @property
    def active(self) -> int:
        """Rows decoding now."""
        return sum(r is not None for r in self.rows)

    # ---- the loop ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self.mutex:
                    if not self.waiting and not self._busy():
                        self.running = False
                        self._idle()
                        return
                with self.lock.light(), torch.inference_mode():
                    until = time.perf_counter() + self.slice_s
                    while True:
                        self._iterate()
                        if not self._busy() or (self.lock.waiting and time.perf_counter() > until):
                            break
                    self._flush()  # nothing in flight while another thread has the model
        except BaseException as e:  # every reply in the batch hears it; the model stays usable
            with self.mutex:
                reqs = [r.req for r in self.rows if r is not None] + list(self.waiting)
                self.waiting.clear()
                self.rows, self.prompt, self.pending = [], None, []
                self._idle()
                self.running = False
            for req in reqs:
                req.put(("error", e, time.perf_counter()))

    def _busy(self) -> bool:
        return any(r is not None for r in self.rows) or bool(self.pending)

    def _idle(self) -> None:
        if self.dec is not None:
            self.path.release(self.dec)
        self.dec, self.rows = None, []

    def _iterate(self) -> None:
        self._reap()
        self._admit()
        live = [(b, r) for b, r in enumerate(self.rows) if r is not None and r.start is not None]
        if not live:  # the step shipped after the last row's end is padding: take it, so the loop can go idle
            self._flush()
            return
        d = self.dec
        if d.at >= d.max_len:  # out of slots: every row moves back by the oldest one's start
            self._flush()  # rows whose last token is in flight end first
            live = [(b, r) for b, r in live if self.rows[b] is r]
            if not live:
                return
            by = min(r.start for _, r in live)
            if by == 0:
                raise LabError("A reply outgrew the decoder's slots; this is a bug in the scheduler.")
            self._shift(-by)
        if all(r.count + self._in_flight(r) >= r.req.params.max_new_tokens for _, r in live):
            self._flush()  # every row's last token is in flight: a further step would only overrun the slots
            return
        early = any(r.fresh or r.sampler is not None for _, r in live)
        if early:  # a first token, or a row sampled on the host: sample, then the forward pass
            d.sample()
            for b, r in live:
                if r.sampler is not None:
                    self._host_sample(d, b, r)
            self._ship(live)
            d.logits_buf.copy_(d.step())
        else:
            d.sample_step()
            self._ship(live)
        self.steps += 1
        for _, r in live:
            r.fresh = False
        while len(self.pending) > 1:
            self._deliver(self.pending.pop(0))
        if early:
            self._deliver(self.pending.pop(0))

    def _flush(self) -> None:
        while self.pending:
            self._deliver(self.pending.pop(0))

    def _in_flight(self, r: _Row) -> int:
        """Steps queued but not yet delivered that hold a token of row r."""
        return sum(any(x is r for _, x in step.rows) for step in self.pending)

    def _host_sample(self, d: StaticDecoder, b: int, r: _Row) -> None:
        n = len(r.req.prompt) + r.count
        torch.manual_seed((r.req.seed * 1_000_003 + n) % 2**63)  # this row's own draw at this length
        if r.sampler.seen is None:
            r.sampler.start([r.req.prompt], d.logits_buf.shape[1], d.device)
        nxt = r.sampler(r.history[:, :n], d.logits_buf[b:b + 1], r.count)
        d.next[b:b + 1].copy_(nxt)
        d.ids[b:b + 1, 0].copy_(nxt)

    def _ship(self, live) -> _Step:
        d = self.dec
        cuda = d.device.type == "cuda"
        host = torch.empty(d.batch, dtype=torch.long, pin_memory=cuda)
        host.copy_(d.next, non_blocking=cuda)
        step = _Step(list(live), host)
        if cuda:
            step.event = torch.cuda.Event()
            step.event.record()
        self.pending.append(step)
        return step

    def _deliver(self, step: _Step) -> None:
        if step.event is not None:
            step.event.synchronize()
        got, now = step.host.tolist(), time.perf_counter()
        for b, r in step.rows:
            if r.ended:
                continue  # the row ended after this step was queued: its token is padding
            tok = got[b]
            if r.sampler is not None:
                r.history[0, len(r.req.prompt) + r.count] = tok
            r.count += 1
            r.req.put(("token", tok, now))
            if tok in self.eos and not r.req.params.ignore_eos:
                self._end(b, r, "stop")
            elif r.count >= r.req.params.max_new_tokens:
                self._end(b, r, "length")

    def _end(self, b: int, r: _Row, reason: str) -> None:
        r.ended = True
        if self.prompt is not None and self.prompt[0] == b:
            self.prompt = None
        slots.free_row(self.dec, b)
        self.rows[b] = None
        r.req.put(("end", reason, time.perf_counter()))

    def _reap(self) -> None:
        """Rows and waiting requests whose consumer halted them (Stop, a stop string, gone)."""
        for b, r in enumerate(self.rows):
            if r is not None and r.req.halted:
                self._end(b, r, "cancelled")
        with self.mutex:
            gone = [q for q in self.waiting if q.halted]
            for q in gone:
                self.waiting.remove(q)
        for q in gone:
            q.put(("end", "cancelled", time.perf_counter()))

    def _shift(self, by: int) -> None:
        slots.shift(self.dec, by)
        for r in self.rows:
            if r is not None and r.start is not None:
                r.start += by

    # ---- joining ------------------------------------------------------------------------------------------
    def _admit(self) -> None:
        if self.prompt is not None:
            self._advance()
        else:
            self._join()
        self._tell_positions()

    def _join(self) -> None:
        with self.mutex:
            if not self.waiting:
                return
            idle = not any(r is not None for r in self.rows)
            if idle:
                take = [self.waiting.popleft()]
                while self.waiting and len(take) < self.max_rows:
                    take.append(self.waiting.popleft())
            else:
                take = []
        if idle:
            self._start(take)
        elif self.waiting and self._make_room(self.waiting[0]):
            with self.mutex:
                req = self.waiting.popleft()
            b = self.rows.index(None)
            self.rows[b] = _Row(req, None, self.eos)
            self._started(req)
            self.prompt = (b, slots.PromptPass(self.dec, req.prompt))
            self._advance()

    def _start(self, reqs: list[Request]) -> None:
        """An idle model takes the first in line: one alone on the batch-1 decoder, several in one prefill."""
        need = max(r.need for r in reqs)
        if len(reqs) > 1:
            batch = self._batch_rows(need)
            with self.mutex:
                self.waiting.extendleft(reversed(reqs[batch:]))  # those past the rows that fit wait on
            reqs = reqs[:batch]
        self.dec = self.path.acquire(1 if len(reqs) == 1 else self._batch_rows(need), need)
        self.rows = [None] * self.dec.batch
        self.dec.prefill([r.prompt for r in reqs])
        self.dec.done.fill_(True)
        for b, req in enumerate(reqs):
            slots.set_row(self.dec, b, req.params, req.prompt, req.seed, req.on_host)
            self.rows[b] = _Row(req, self.dec.at - len(req.prompt), self.eos)
            self._started(req)

    def _batch_rows(self, need: int) -> int:
        fit = self.rows_for(need) if self.rows_for is not None else self.max_rows
        return max(2, min(self.max_rows, fit))

    def _make_room(self, req: Request) -> bool:
        """Whether `req` can take a row now; a lone reply moves into the batched decoder first."""
        d = self.dec
        if d.batch == 1:
            solo = self.rows[0]
            need = max(req.need, solo.req.need)
            big = self.path.acquire(self._batch_rows(need), need)
            span = d.at - solo.start
            big.cur.fill_(span)
            big.at = span
            big.done.fill_(True)
            solo.start = slots.move_row(d, 0, solo.start, big, 0)
            self.path.release(d)
            self.dec, self.rows = big, [solo] + [None] * (big.batch - 1)
            return True
        # a longer one waits for the batch to drain; a batch built before max_rows was lowered fills only to it
        return None in self.rows and self.active < self.max_rows and req.need <= d.max_len

    def _advance(self) -> None:
        b, prompt = self.prompt
        prompt.advance(self.chunk)
        if not prompt.finished:
            return
        self.prompt = None
        r, d = self.rows[b], self.dec
        if d.at < prompt.length:
            self._shift(prompt.length - d.at)
        slots.set_row(d, b, r.req.params, r.req.prompt, r.req.seed, r.req.on_host)
        r.start = slots.place(d, b, prompt)

    def _started(self, req: Request) -> None:
        req.position = 0
        req.put(("start", None, time.perf_counter()))

    def _tell_positions(self) -> None:
        with self.mutex:
            for i, q in enumerate(self.waiting, start=1):
                if q.position != i:
                    q.position = i
                    q.put(("wait", i, time.perf_counter()))

    def close(self) -> None:
        """Refuse new requests and end the ones waiting (the model is going away)."""
        with self.mutex:
            self.max_waiting = 0
            for q in self.waiting:
                q.cancel.set()
