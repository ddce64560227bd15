"""GPU memory for a Transformers model: how many rows fit, and an out-of-memory error made a sentence.

Batches are sized from free memory before they run and halved when CUDA says otherwise; the model stays
loaded and usable either way.
"""

from __future__ import annotations

import torch

from lab import runtime
from lab.engine.layers import kv_bytes_per_token
from lab.errors import LabError


class OutOfMemory(LabError):
    """A request ran out of GPU memory (the model is still loaded and usable)."""


def user_error(e: BaseException, name: str, hint: str = "lower max new tokens or shorten the conversation"
               ) -> BaseException:
    """What a failure during generation means for the user: out of memory is a sentence, the rest stays itself."""
    if isinstance(e, torch.OutOfMemoryError):
        runtime.release_gpu_memory()
        return OutOfMemory(f"{name} ran out of GPU memory on this request; {hint}.")
    return e


def rows_that_fit(config, tokens_per_row: int) -> int:
    """Rows of `tokens_per_row` whose key/value cache and activations fit in 70% of free GPU memory."""
    kv = kv_bytes_per_token(config)
    # Per row besides its cache: the prefill's activations and a float32 row of logits at each step.
    per_row = tokens_per_row * (kv + 8 * config.hidden_size + 2 * config.intermediate_size) + 8 * config.vocab_size
    free = runtime.gpu_free_bytes() or 0
    return int(max(1, min(256, 0.7 * free // per_row)))


def scoring_rows(config, width: int, shared: int, copies: int, cap: int | None) -> int:
    """Rows of `width` own tokens (after a `shared` prefix held `copies` times per row) whose activations and
    one float32 row of logits fit in 60% of free GPU memory."""
    kv = kv_bytes_per_token(config)
    free = 0.6 * (runtime.gpu_free_bytes() or 0)
    per_row = copies * (shared + width) * kv + width * (16 * config.hidden_size + 6 * config.intermediate_size) \
        + 8 * config.vocab_size
    return min(cap or 1024, int(free // per_row))


def gpu_memory(cuda: bool) -> tuple[float, float] | None:
    """(in use, peak) GiB for a reply's stats on CUDA; None elsewhere."""
    return (runtime.gpu_allocated_gib(), runtime.gpu_peak_gib()) if cuda else None
