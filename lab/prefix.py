"""Next-token scoring that computes a shared prompt prefix once.

Every 5-shot MMLU question of a subject starts with the same ~500 tokens (the subject line and five
solved examples) and adds ~100 of its own. Scoring each prompt whole spends five sixths of the work
on that prefix again and again. Here prompts are sorted so that those sharing a long prefix sit
together; the prefix runs once (its keys and values kept, and kept across calls for the next batch
of the same subject), and each batch of suffixes runs against a copy of it: right-padded, with
position ids continuing after the prefix, and the model's head applied only to each row's last real
position (152K-wide logits for every position would cost more than the model itself).

The result is the same distribution a single forward pass over the whole prompt gives: attention
sees exactly the same keys. Only the order of floating-point sums differs (tests compare the two).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache

MIN_PREFIX = 32  # tokens: below this a shared start is not worth a separate pass


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def prefix_groups(rows: Sequence[Sequence[int]]) -> list[tuple[int, list[int]]]:
    """(shared prefix length, row indices) groups. In sorted order the prefix shared by a run of rows
    is the smallest prefix shared by neighbours; a run ends where that would fall below MIN_PREFIX
    or to less than half of what the run had."""
    order = sorted(range(len(rows)), key=lambda i: rows[i])
    groups: list[tuple[int, list[int]]] = []
    run: list[int] = []
    shared = 0
    for i in order:
        if run:
            both = min(shared, common_length(rows[run[-1]], rows[i]))
            if both >= MIN_PREFIX and both * 2 >= shared:
                run.append(i)
                shared = both
                continue
            groups.append((shared, run))
        run, shared = [i], len(rows[i])
    if run:
        groups.append((shared, run))
    # Each row keeps at least its last token out of the prefix: that position gives its scores.
    out = []
    for shared, idx in groups:
        shared = min(shared, min(len(rows[i]) for i in idx) - 1)
        out.append((shared if len(idx) > 1 and shared >= MIN_PREFIX else 0, idx))
    return out


class PrefixScorer:
    """Log-softmax of the next token after each row, for one model; remembers the last prefix."""

    def __init__(self, model, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self._last: tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def prefix_kv(self, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        key = tuple(prefix)
        if self._last is None or self._last[0] != key:
            self._last = None  # free the old one before computing the new
            cache = DynamicCache(config=self.model.config)
            ids = torch.tensor([prefix], device=self.device)
            self.model.model(input_ids=ids, past_key_values=cache, use_cache=True)
            self._last = (key, [(layer.keys, layer.values) for layer in cache.layers])
        return self._last[1]

    def next_logprobs(self, prefix_kv, prefix_len: int, suffixes: Sequence[Sequence[int]]) -> torch.Tensor:
        """[rows, vocab] float32 log-probabilities after prefix + each suffix."""
        b, width = len(suffixes), max(map(len, suffixes))
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, prefix_len + width), dtype=torch.long)
        mask[:, :prefix_len] = 1
        for i, s in enumerate(suffixes):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, prefix_len:prefix_len + len(s)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (prefix_len + torch.arange(width, device=self.device)).expand(b, width)
        cache = DynamicCache(config=self.model.config)
        for layer, (k, v) in enumerate(prefix_kv):
            cache.update(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1), layer)
        hidden = self.model.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                                  use_cache=True).last_hidden_state
        last = torch.tensor([len(s) - 1 for s in suffixes], device=self.device)
        logits = self.model.lm_head(hidden[torch.arange(b, device=self.device), last])
        return torch.log_softmax(logits.float(), dim=-1)

    def forget(self) -> None:
        self._last = None
