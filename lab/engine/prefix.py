"""Next-token scoring that computes a shared prompt prefix once.

Every 5-shot MMLU question of a subject starts with the same ~500 tokens (the subject line and five
solved examples) and adds ~100 of its own. Scoring each prompt whole spends five sixths of the work
on that prefix again and again. Here prompts are sorted so that those sharing a long prefix sit
together; the prefix runs once (its keys and values kept, and kept across calls for the next batch
of the same subject), and each batch of suffixes runs against it (`suffix_forward`, which reads the
prefix's one copy for the whole batch): right-padded, with position ids continuing after the prefix,
batches cut where the lengths jump (`plan_batches`), and the model's head applied only to each row's
last real position (152K-wide logits for every position would cost more than the model itself).

The result is the same distribution a single forward pass over the whole prompt gives: attention
sees exactly the same keys. Only the order of floating-point sums differs (tests compare the two).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from lab.engine.layers import Heads, fuse_projections, is_int8, layers_forward, rms_norm, rope, supported

MIN_PREFIX = 32  # tokens: below this a shared start is not worth a separate pass


def common_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common start of two token lists or strings (binary search over slice
    compares, which run at C speed: a 5-shot MMLU prompt is ~2,700 characters)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


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


def plan_batches(widths: Sequence[int], max_rows: Callable[[int], int], overhead: int = 256,
                 floor: int = 2048) -> list[tuple[int, int]]:
    """Cut rows, sorted by width (their own tokens past the shared prefix), into batches [start, end)
    that cost the least: a batch costs its padded tokens (rows x its widest row), at least `floor` (a
    smaller matmul does not run faster), plus `overhead` tokens' worth of fixed work; a batch of width
    w holds at most max_rows(w) rows (memory). Exact, by dynamic programming over the cut points; on
    MMLU's skewed lengths it pads a few percent of the tokens where fixed batches padded most
    (lab/bench/results/fast-7b-h100.md)."""
    w = np.asarray(widths, dtype=np.int64)
    assert (np.diff(w) >= 0).all(), "rows must be sorted by width"
    n = len(w)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        width = int(w[end - 1])
        rows = np.arange(end, 0, -1)  # batch [start, end) for start = 0 .. end-1
        cost = best[:end] + overhead + np.maximum(rows * width, floor)
        cost[rows > max(1, max_rows(width))] = np.inf
        start = int(np.argmin(cost))
        best[end], cut[end] = cost[start], start
    batches, end = [], n
    while end > 0:
        batches.append((int(cut[end]), end))
        end = int(cut[end])
    return batches[::-1]


def reads_one_copy(model) -> bool:
    """Whether `suffix_forward` knows this model, so the prefix's cache is read once per batch rather
    than copied per row by Transformers' forward."""
    return supported(model) is None


class PrefixScorer:
    """Log-softmax of the next token after each row, for one model; remembers the last prefix."""

    def __init__(self, model, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.own = reads_one_copy(model)
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

    def next_logprobs(self, prefix_kv, prefix_len: int, suffixes: Sequence[Sequence[int]],
                      between: Callable[[], object] | None = None) -> torch.Tensor:
        """[rows, vocab] float32 log-probabilities after prefix + each suffix (`between()` after each layer but
        the last, on the path `suffix_forward` takes)."""
        b, width = len(suffixes), max(map(len, suffixes))
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        for i, s in enumerate(suffixes):
            ids[i, :len(s)] = torch.tensor(s)
        ids = ids.to(self.device)
        last = torch.tensor([len(s) - 1 for s in suffixes], device=self.device)
        if self.own:
            hidden = suffix_forward(self.model, prefix_kv, prefix_len, ids, last, between)
        else:
            hidden = self._hf_forward(prefix_kv, prefix_len, suffixes, ids)[torch.arange(b, device=self.device), last]
        return torch.log_softmax(self.model.lm_head(hidden).float(), dim=-1)

    def _hf_forward(self, prefix_kv, prefix_len: int, suffixes, ids: torch.Tensor) -> torch.Tensor:
        """Transformers' forward over a per-row copy of the prefix's cache (models `suffix_forward` does not know)."""
        b, width = ids.shape
        mask = torch.zeros((b, prefix_len + width), dtype=torch.long)
        mask[:, :prefix_len] = 1
        for i, s in enumerate(suffixes):
            mask[i, prefix_len:prefix_len + len(s)] = 1
        mask = mask.to(self.device)
        positions = (prefix_len + torch.arange(width, device=self.device)).expand(b, width)
        cache = DynamicCache(config=self.model.config)
        for layer, (k, v) in enumerate(prefix_kv):
            cache.update(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1), layer)
        return self.model.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                                use_cache=True).last_hidden_state

    def forget(self) -> None:
        self._last = None


def suffix_forward(model, prefix_kv, prefix_len: int, ids: torch.Tensor, last: torch.Tensor,
                   between: Callable[[], object] | None = None) -> torch.Tensor:
    """Final hidden states at position `last[r]` of each right-padded row of `ids` [rows, width], every
    row continuing the same cached prefix. The same modules and arithmetic as the model's forward, but
    attention to the prefix is computed once for all rows against its single copy of keys and values
    (Transformers' forward copies the prefix's cache per row, then per query head). Attention is split
    in two and merged exactly through the log-sum-exp of each part: every suffix token against the
    prefix (no mask: all of it is visible), and each row against its own tokens (causal; the right
    padding comes after every real token, so no real token sees it). The work between the matmuls stays
    eager, in Transformers' order: compiled, it moved bf16 letters past the agreement bound with
    lm-evaluation-harness (lab/bench/results/fast-7b-h100.md, notes)."""
    inner = model.model
    b, w = ids.shape
    heads = Heads.of(model.config)
    eight = is_int8(model)  # LLM.int8: bitsandbytes' own products (the decoder's are sized for few rows)
    if not eight:
        fuse_projections(model)
    h = inner.embed_tokens(ids)
    cos, sin = rope((prefix_len + torch.arange(w, device=ids.device))[:, None], inner.rotary_emb, h.dtype)

    def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        qp, qs, ks, vs = _attention_inputs(q, k, v, heads.group)
        pk, pv = prefix_kv[i]  # [1, n_kv, prefix_len, d]
        scale = inner.layers[i].self_attn.scaling
        o1, lse1 = attention_with_lse(qp, pk, pv, scale, causal=False)
        o2, lse2 = attention_with_lse(qs, ks, vs, scale, causal=True)
        return _merge(o1, lse1, o2, lse2, heads.group)

    h = layers_forward(model, h, cos, sin, attend, heads, rms_norm, own_products=not eight, between=between)
    return rms_norm(inner.norm, h[torch.arange(b, device=ids.device), last])


def _attention_inputs(q, k, v, g: int):
    """q [b, w, H, d] and k, v [b, w, KV, d] (rotary applied): q laid out for the prefix part (the g query heads
    of key head j, every row and position, as rows of one query [1, KV, b*w*g, d]) and q, k, v for the own
    part [b, H, w, d] (head h uses key head h // g, as Transformers' repeat_kv)."""
    b, w, n_heads, d = q.shape
    n_kv = k.shape[2]
    qp = q.view(b, w, n_kv, g, d).permute(2, 0, 1, 3, 4).reshape(1, n_kv, b * w * g, d)
    qs = q.transpose(1, 2)  # a view: the attention kernel reads [b, w, H, d] as it is
    ks = k.transpose(1, 2).repeat_interleave(g, dim=1)
    vs = v.transpose(1, 2).repeat_interleave(g, dim=1)
    return qp, qs, ks, vs


def _merge(o1, lse1, o2, lse2, g: int) -> torch.Tensor:
    """Attention over prefix and own tokens from its two parts, weighted by their shares of the softmax
    (float32), as [b, w, H*d] for the output projection."""
    b, n_heads, w, d = o2.shape
    n_kv = n_heads // g
    o1 = o1.view(n_kv, b, w, g, d).permute(1, 2, 0, 3, 4).reshape(b, w, n_heads, d)
    lse1 = lse1.view(n_kv, b, w, g).permute(1, 2, 0, 3).reshape(b, w, n_heads)
    o2, lse2 = o2.transpose(1, 2), lse2.transpose(1, 2)
    top = torch.maximum(lse1, lse2)
    w1, w2 = (lse1 - top).exp()[..., None], (lse2 - top).exp()[..., None]
    return ((o1.float() * w1 + o2.float() * w2) / (w1 + w2)).to(o2.dtype).reshape(b, w, n_heads * d)


def attention_with_lse(q, k, v, scale: float, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention [B, H, Lq, d] and its float32 log-sum-exp [B, H, Lq], from PyTorch's fused kernels:
    flash attention for 16-bit on CUDA, memory-efficient attention for float32 there, the CPU's own."""
    aten = torch.ops.aten
    if q.device.type == "cuda":
        if q.dtype in (torch.float16, torch.bfloat16):
            out = aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
        else:
            out = aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, causal, scale=scale)
        return out[0], out[1][..., :q.shape[2]].float()
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out, lse.float()
    return attention_by_definition(q, k, v, scale, causal)


def attention_by_definition(q, k, v, scale: float, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """What `attention_with_lse` computes, written out (where no fused kernel is at hand)."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if causal:
        n_q, n_k = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).triu(1 + n_k - n_q),
                                    float("-inf"))
    lse = scores.logsumexp(-1)
    return (F.softmax(scores, -1) @ v.float()).to(q.dtype), lse
