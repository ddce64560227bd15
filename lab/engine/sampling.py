"""Every way the lab picks the next token, in one module: the same rule in each place, in Transformers' order
— repetition penalty over the tokens a row has seen, end-of-turn blocked while a row must go on, the JSON
grammar's mask, temperature, top-k, top-p among the top-k survivors — then a draw (the argmax when greedy).

- `RowsProcessor`: a Transformers logits processor for `generate()` (the CPU paths and the plain batch
  path), each row with its own settings; the rows' own tokens only are penalised, never their left padding.
- `HostSampler`: the engine's eager loop (JSON mode, top-k off or large), between graph replays.
- `sample_in_graph`: the engine's captured sampler over the decoder's buffers (no host round trip: the draw
  is an exponential race, argmax of p / Exp(1), which picks i with probability p_i; the Exp(1) noise is a hash
  of each row's seed and length, so a row's draws do not depend on the rows beside it).
- `generate_kwargs`: what `generate()` is called with for a set of rows.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from lab.interface import SamplingParams

TOP_K_MAX = 64  # top-k up to this samples inside the captured graph; larger (or off) samples on the host
NEG = float("-inf")


def graphable(params: SamplingParams) -> bool:
    """Whether the in-graph sampler can do what `params` ask (no grammar, top-k on and small)."""
    return not params.response_format and (params.greedy or 1 <= params.top_k <= TOP_K_MAX)


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty) -> torch.Tensor:
    """Transformers' repetition penalty on the tokens marked in `seen` (bool [rows, vocab]): a logit below 0
    is multiplied by the penalty, one above divided. `penalty`: a number or [rows, 1]."""
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def penalize_seen(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """`penalize` (penalty [rows]) touching only the seen tokens, on a copy or (`inplace`) on `logits` itself:
    what an eager step on a CPU does, where each full-vocabulary pass over the rows costs as much as the tiny
    model's forward."""
    out = logits if inplace else logits.clone()
    rows, cols = seen.nonzero(as_tuple=True)
    vals, pen = out[rows, cols], penalty[rows]
    out[rows, cols] = torch.where(vals < 0, vals * pen, vals / pen)
    return out


def blocked_topk(logits: torch.Tensor, k: int, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """`logits.topk(k)` over rows [rows, vocab], exactly, in two small passes instead of one wide one (on a CPU
    a 64-of-151,665 selection for 8 rows cost more than the tiny model's layers): the vocabulary in blocks of
    `block`, each block's maximum, the k blocks with the largest maxima, then the top k among their tokens (and
    the tail past the last whole block). Exact: a token of the top k lies in one of those k blocks, or k blocks
    would each hold a larger token. Ties between equal logits may be ordered differently than `topk` orders
    them."""
    rows, vocab = logits.shape
    n = vocab // block
    if n <= k or logits.stride(1) != 1:
        return logits.topk(k, dim=-1)
    blocks = logits.as_strided((rows, n, block), (logits.stride(0), block, 1))
    best = blocks.amax(-1).topk(k, dim=-1).indices  # [rows, k] blocks
    cand = blocks.gather(1, best[:, :, None].expand(rows, k, block)).reshape(rows, k * block)
    ids = (best[:, :, None] * block + torch.arange(block, device=logits.device)).reshape(rows, k * block)
    if n * block < vocab:
        cand = torch.cat([cand, logits[:, n * block:]], 1)
        ids = torch.cat([ids, torch.arange(n * block, vocab, device=logits.device).expand(rows, -1)], 1)
    values, pos = cand.topk(k, dim=-1)
    return values, ids.gather(1, pos)


def top_k_top_p(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                k: int, select=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` likeliest tokens of each row [rows, vocab] — their tempered logits, -inf where a row's own top-k
    or top-p drops them — and their ids. Settings are per row ([rows] tensors). Token i of the survivors (by
    falling logit) stays while the probability mass before it is below top_p: Transformers' rule ("drop
    while the ascending cumulative mass is <= 1 - top_p") read from the top, so the first always stays.
    `select(logits, k)`: how the k are found (`torch.topk` unless given)."""
    values, index = (select or torch.topk)(logits, k)  # sorted, largest first
    values = values / temperature[:, None]
    ranks = torch.arange(k, device=logits.device)
    values = values.masked_fill(ranks >= top_k[:, None], NEG)
    probs = values.softmax(dim=-1)
    return values.masked_fill(probs.cumsum(dim=-1) - probs >= top_p[:, None], NEG), index


def warp(scores: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, top-k and top-p of one setting applied to rows of full-vocabulary scores (dropped: -inf).
    Top-k off sorts the whole vocabulary only when top-p needs it (151,665 logits for Qwen2.5)."""
    rows, vocab = scores.shape
    if not params.top_k and params.top_p >= 1.0:
        return scores / params.temperature
    k = min(params.top_k or vocab, vocab)
    full = lambda x: torch.full((rows,), x, device=scores.device)  # noqa: E731
    mass = params.top_p if params.top_p < 1.0 else float("inf")  # top-p 1 keeps every survivor, however rounded
    values, index = top_k_top_p(scores, full(params.temperature), full(k), full(mass), k)
    return torch.full_like(scores, NEG).scatter_(-1, index, values)


class RowsProcessor(LogitsProcessor):
    """For `generate()`: per row, the repetition penalty over the row's own tokens (past its left padding),
    end-of-turn blocked while `ignore_eos` holds, then temperature/top-k/top-p; a greedy row keeps only its
    argmax. A row whose `ended[r]` is set (a stop string, seen by the consumer) or that has its own max new
    tokens is made to emit end-of-turn, which Transformers counts as that row finished. Give the JSON
    grammar's processor before this one: the penalty leaves its -inf masks as they are."""

    def __init__(self, params: Sequence[SamplingParams], pads: Sequence[int], width: int, eos_ids: Sequence[int],
                 ended: list[bool] | None = None) -> None:
        self.params, self.pads, self.width = list(params), list(pads), width
        self.eos = list(eos_ids)
        self.ended = ended if ended is not None else [False] * len(self.params)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.width  # tokens produced so far by every row
        out = torch.full_like(scores, NEG)
        for r, p in enumerate(self.params):
            if self.ended[r] or step >= p.max_new_tokens:
                out[r, self.eos[0]] = 0.0
                continue
            row = scores[r:r + 1]
            if p.repetition_penalty != 1.0:
                seen = torch.zeros_like(row, dtype=torch.bool).scatter_(1, input_ids[r:r + 1, self.pads[r]:], True)
                row = penalize(row, seen, p.repetition_penalty)
            if p.ignore_eos and self.eos:
                row = row.index_fill(1, torch.tensor(self.eos, device=row.device), NEG)
            if p.greedy:
                out[r, row[0].argmax()] = 0.0
            else:
                out[r:r + 1] = warp(row, p)
        return out


def generate_kwargs(params: Sequence[SamplingParams], pads: Sequence[int], width: int, eos_ids: Sequence[int],
                    pad_id: int, constraint=None, ended: list[bool] | None = None) -> dict:
    """What `generate()` is called with for these rows: `RowsProcessor` does every row's sampling (after the
    grammar, if any), so Transformers' own penalty and warpers stay off."""
    processors = ([constraint] if constraint is not None else []) + [RowsProcessor(params, pads, width, eos_ids,
                                                                                   ended)]
    choose = (dict(do_sample=False, temperature=None, top_k=None, top_p=None) if all(p.greedy for p in params)
              else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0))
    return dict(max_new_tokens=max(p.max_new_tokens for p in params), repetition_penalty=1.0,
                eos_token_id=list(eos_ids), pad_token_id=pad_id, logits_processor=LogitsProcessorList(processors),
                **choose)


def seen_mask(rows: Sequence[Sequence[int]], params: Sequence[SamplingParams], vocab: int, batch: int,
              device) -> torch.Tensor:
    """bool [batch, vocab]: the prompt tokens of each row whose repetition penalty is on."""
    seen = torch.zeros((batch, vocab), dtype=torch.bool, device=device)
    for i, (r, p) in enumerate(zip(rows, params)):
        if p.repetition_penalty != 1.0 and len(r):
            seen[i, torch.tensor(list(r), device=device)] = True
    return seen


class HostSampler:
    """The engine's sampler between graph replays, for what the graph cannot do (a grammar, top-k off or
    larger than TOP_K_MAX): one setting for every row, `constraint` (the JSON grammar) called like a
    Transformers processor on the rows' token history."""

    in_graph = False

    def __init__(self, params: SamplingParams, eos_ids: Sequence[int], constraint: Callable | None = None) -> None:
        self.params, self.constraint = params, constraint
        self.eos = torch.tensor(list(eos_ids), dtype=torch.long)
        self.seen: torch.Tensor | None = None

    def start(self, rows: Sequence[Sequence[int]], vocab: int, device) -> None:
        self.seen = seen_mask(rows, [self.params] * len(rows), vocab, len(rows), device)

    def __call__(self, history: torch.Tensor, logits: torch.Tensor, step: int) -> torch.Tensor:
        p = self.params
        if p.repetition_penalty != 1.0:
            logits = penalize(logits, self.seen, p.repetition_penalty)
        if p.ignore_eos and len(self.eos):
            logits = logits.index_fill(1, self.eos.to(logits.device), NEG)
        if self.constraint is not None:
            logits = self.constraint(history, logits)
        if p.greedy:
            nxt = logits.argmax(dim=-1)
        else:
            nxt = torch.multinomial(warp(logits, p).softmax(dim=-1), 1).squeeze(1)
        if p.repetition_penalty != 1.0:
            self.seen.scatter_(1, nxt[:, None], True)
        return nxt


class GraphSampler:
    """Rows sampled inside the decoder's captured graph, each with its own settings (Compare's panes)."""

    in_graph = True

    def __init__(self, params: SamplingParams | Sequence[SamplingParams]) -> None:
        rows = [params] if isinstance(params, SamplingParams) else list(params)
        assert all(graphable(p) for p in rows), "rows with grammars or top-k off sample on the host"
        self.params = params


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (multiplications wrap; shifts made logical with a mask)."""
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * -4658895280553007687  # 0xBF58476D1CE4E5B9
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * -7723592293110705685  # 0x94D049BB133111EB
    return z ^ ((z >> 31) & ((1 << 33) - 1))


def seeded_exponential(seeds: torch.Tensor, at: torch.Tensor, k: int) -> torch.Tensor:
    """Exp(1) noise [rows, k] that depends only on each row's seed and its length `at` (tokens before the one
    drawn), not on the batch around it or the generator's state: a seeded row draws the same numbers alone or
    beside others, whatever step it joined at. Counter-based (a hash of seed, length and candidate), so it is
    pure tensor arithmetic inside the captured graph."""
    z = _mix(seeds.long() - 7046029254386353131)[:, None]  # + 0x9E3779B97F4A7C15
    z = _mix(z + at.long()[:, None] * k + torch.arange(k, device=seeds.device))
    u = (((z >> 40) & ((1 << 24) - 1)).float() + 0.5) * (1.0 / (1 << 24))  # 24 bits: uniform in (0, 1)
    return -u.log()


def sample_in_graph(d) -> None:
    """The next token of every row of decoder `d` from its `logits_buf`, into `next` and `ids` (the buffers
    and per-row settings `StaticDecoder.set_sampling` fills)."""
    if d.logits_buf.is_cuda:  # inside a captured graph: fixed shapes (the compiler fuses these passes)
        logits = penalize(d.logits_buf, d.seen, d.penalty[:, None])
        eos_cols = logits.index_select(1, d.eos)
        logits = logits.index_copy(1, d.eos, torch.where(d.block_eos[:, None], NEG, eos_cols))
    else:  # eager on a CPU: the same numbers with no pass over the whole vocabulary but the selection's
        # (the step writes `logits_buf` anew before the next draw, so it is penalised in place)
        logits = penalize_seen(d.logits_buf, d.seen, d.penalty, inplace=True)
        logits[:, d.eos] = torch.where(d.block_eos[:, None], NEG, logits[:, d.eos])
    values, index = top_k_top_p(logits, d.temperature.clamp(min=1e-6), d.top_k, d.top_p, TOP_K_MAX,
                                None if logits.is_cuda else blocked_topk)
    probs = values.softmax(dim=-1)
    pick = (probs / seeded_exponential(d.seeds, d.cur - d.pad, TOP_K_MAX)).argmax(dim=-1, keepdim=True)
    nxt = torch.where(d.greedy, index[:, 0], index.gather(1, pick).squeeze(1))
    nxt = torch.where(d.done, d.pad_token, nxt)  # finished rows only pad
    d.done.logical_or_(torch.isin(nxt, d.eos))
    d.seen.scatter_(1, nxt[:, None], True)
    d.next.copy_(nxt)
    d.ids.copy_(nxt[:, None])


def sampler_for(params: SamplingParams | Sequence[SamplingParams], eos_ids: Sequence[int], constraint=None):
    """The sampler the engine's loop uses for these settings: in the graph where it can, else on the host."""
    rows = [params] if isinstance(params, SamplingParams) else list(params)
    if constraint is None and all(graphable(p) for p in rows):
        return GraphSampler(params)
    assert isinstance(params, SamplingParams), "several rows' settings sample in the graph only"
    return HostSampler(params, eos_ids, constraint)
