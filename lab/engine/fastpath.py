"""The decoders of one model, one per (batch, length) shape, kept while they fit; what a backend holds to
decode through the engine.

    path = FastPath(model, eos_ids, pad_id)
    out = path.decode(rows, sampler, max_new, cancel=..., on_tokens=...)   # lab.engine.loop.decode on a decoder
    dec = path.acquire(batch, length); ...; path.release(dec)               # the scheduler's: kept while held
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import torch

from lab.engine import loop
from lab.engine.decoder import LIVE, StaticDecoder
from lab.engine.kernels import int8

MIN_SLOTS = 1024  # cache lengths are powers of two from here, so requests share captured graphs
# The scheduler's decoders compile their step up to this many rows (an evaluation's up to 8): a server's batch keeps
# one width for hours, so the compile (once, ~20 s) pays off; on the H200 it took 32 streams from 10x to 15x one.
SCHEDULER_COMPILE_ROWS = int(os.environ.get("LAB_COMPILE_ROWS", "32"))


class FastPath:
    def __init__(self, model, eos_ids: Sequence[int], pad_id: int, keep: int = 2) -> None:
        self.model = model
        self.eos_ids, self.pad_id = list(eos_ids), pad_id
        self.keep = keep
        # (batch, length, the scheduler's): the scheduler's decoders are its own, since its rows stay in them
        # while an evaluation takes the model between two of its steps
        self._decoders: dict[tuple[int, int, bool], StaticDecoder] = {}
        self._held: set[tuple[int, int, bool]] = set()  # the scheduler's in use now: never dropped for another
        self.clipped = False  # a decode had LLM.int8 outliers past its slots; the next `decoder()` widens

    def decoder(self, batch: int, length: int, scheduler: bool = False) -> StaticDecoder:
        length = max(MIN_SLOTS, 1 << (length - 1).bit_length())  # few shapes: few captures (and compiles)
        if self.clipped and not self._held:  # LLM.int8: a reply needed more outlier slots; every graph anew
            self.clipped = False
            self.clear()
            wider = int8.widen(self.model)
            warnings.warn(f"a reply had more LLM.int8 outlier columns than the decoder's slots; now {wider}")
        key = (batch, length, scheduler)
        if key not in self._decoders:
            while len(self._decoders) >= self.keep + len(self._held):  # drop the oldest shape's buffers and graph
                oldest = next(k for k in self._decoders if k not in self._held)
                self._decoders.pop(oldest).release()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._decoders[key] = StaticDecoder(self.model, batch, length, self.eos_ids, self.pad_id,
                                                compile_rows=SCHEDULER_COMPILE_ROWS if scheduler else 8)
        else:
            self._decoders[key] = self._decoders.pop(key)  # most recently used last
        return self._decoders[key]

    def acquire(self, batch: int, length: int) -> StaticDecoder:
        """The decoder for `batch` rows of `length` slots, kept (not dropped for another shape) until `release`."""
        dec = self.decoder(batch, length, scheduler=True)
        self._held.add((dec.batch, dec.max_len, True))
        return dec

    def release(self, dec: StaticDecoder) -> None:
        self._held.discard((dec.batch, dec.max_len, True))

    def decode(self, rows: Sequence[Sequence[int]], sampler, max_new: int, batch: int | None = None,
               cancel=None, on_tokens=None) -> loop.Decoded:
        """Decode `rows` on the decoder for `batch` rows (default: as many as given) of their length."""
        dec = self.decoder(max(batch or 0, len(rows)), max(map(len, rows)) + max_new)
        out = loop.decode(dec, rows, sampler, max_new, self.eos_ids, self.pad_id, cancel, on_tokens)
        self.clipped |= out.clipped
        return out

    def clear(self) -> None:
        """Drop every decoder: its buffers, graphs and compiled step (switching models must free them)."""
        compiled = any(d.compiled for d in self._decoders.values())
        for d in self._decoders.values():
            d.release()
        self._decoders.clear()
        if compiled:  # compiled code is cached globally and keeps references to what it was compiled with
            torch._dynamo.reset()
        # cuBLAS keeps a 32 MiB workspace per (handle, stream) in PyTorch's allocator, and captured graphs
        # use the ones that existed when they were captured: free them only once no graph is left.
        if torch.cuda.is_available() and not any(d.graph is not None for d in list(LIVE)):
            clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
            if clear is not None:
                clear()
