"""The one sampling module: the in-graph sampler draws from the top-k/top-p distribution, penalises seen tokens
and blocks end-of-turn; the host sampler never ends early; top-k/top-p keeps exactly what Transformers' warpers
keep; `RowsProcessor` gives every row its own settings inside one `generate()`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lab.engine import sampling
from lab.engine.decoder import StaticDecoder
from lab.interface import SamplingParams


def state(rows: int, vocab: int, eos: list[int]) -> SimpleNamespace:
    """The buffers the in-graph sampler reads and writes, for a small vocabulary (what `StaticDecoder` holds)."""
    z = lambda dtype=torch.float32: torch.zeros(rows, dtype=dtype)  # noqa: E731
    return SimpleNamespace(logits_buf=torch.zeros(rows, vocab), seen=torch.zeros(rows, vocab, dtype=torch.bool),
                           penalty=z() + 1, eos=torch.tensor(eos), block_eos=z(torch.bool), temperature=z() + 1,
                           top_k=torch.full((rows,), sampling.TOP_K_MAX), top_p=z() + 1, greedy=z(torch.bool),
                           done=z(torch.bool), pad_token=torch.tensor(0), next=z(torch.long),
                           ids=torch.zeros(rows, 1, dtype=torch.long), seeds=torch.arange(rows),
                           cur=torch.zeros(1, dtype=torch.long), pad=z(torch.long))


def set_rows(s: SimpleNamespace, p: SamplingParams) -> None:
    s.temperature.fill_(p.temperature or 1.0)
    s.top_k.fill_(p.top_k or sampling.TOP_K_MAX)
    s.top_p.fill_(p.top_p)
    s.penalty.fill_(p.repetition_penalty)
    s.greedy.fill_(p.greedy)
    s.block_eos.fill_(p.ignore_eos)


def test_graph_sampler_draws_from_the_top_k_top_p_distribution():
    s = state(64, 128, eos=[7])
    logits = torch.full((64, 128), -30.0)
    logits[:, [3, 4, 5]] = torch.tensor([0.5, 0.3, 0.2]).log()
    torch.manual_seed(0)
    for params, want in ((SamplingParams(temperature=1.0, top_k=20, top_p=1.0, repetition_penalty=1.0),
                          {3: 0.5, 4: 0.3, 5: 0.2}),
                         (SamplingParams(temperature=1.0, top_k=2, top_p=1.0, repetition_penalty=1.0),
                          {3: 0.625, 4: 0.375}),
                         (SamplingParams(temperature=1.0, top_k=20, top_p=0.6, repetition_penalty=1.0),
                          {3: 0.625, 4: 0.375})):
        counts: dict[int, int] = {}
        set_rows(s, params)
        for _ in range(40):
            s.logits_buf.copy_(logits)
            s.done.zero_()
            s.cur.add_(1)  # the noise is drawn from each row's seed and length
            sampling.sample_in_graph(s)
            for t in s.next.tolist():
                counts[t] = counts.get(t, 0) + 1
        assert set(counts) == set(want), counts
        for t, p in want.items():
            assert abs(counts[t] / 2560 - p) < 0.04, (params, counts)


@torch.inference_mode()
def test_graph_sampler_penalises_seen_tokens_and_blocks_end_of_turn(tiny):
    dec = StaticDecoder(tiny.model, batch=1, max_len=16, eos_ids=[3], pad_id=0, graphs=False)
    logits = torch.full((1, dec.logits_buf.shape[1]), -30.0)
    logits[0, [3, 4, 5]] = torch.tensor([5.0, 2.0, 1.9])
    dec.set_sampling(SamplingParams(temperature=0, repetition_penalty=1.2, ignore_eos=True, max_new_tokens=4), [[4]])
    dec.logits_buf.copy_(logits)
    dec.sample()
    assert dec.next.item() == 5  # 3 is blocked, 4 was seen: 2.0 / 1.2 < 1.9
    dec.set_sampling(SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=4), [[4]])
    dec.logits_buf.copy_(logits)
    dec.sample()
    assert dec.next.item() == 3 and dec.done.item()  # end of turn: the row is finished and pads from now on
    dec.logits_buf.copy_(logits)
    dec.sample()
    assert dec.next.item() == 0


def test_host_sampler_never_ends_while_ignore_eos_holds(tiny):
    params = SamplingParams(temperature=0, max_new_tokens=5, ignore_eos=True)
    logits = torch.zeros(1, 50)
    logits[0, tiny.eos_ids[0] % 50] = 10.0
    s = sampling.HostSampler(params, [tiny.eos_ids[0] % 50])
    s.start([[1]], 50, "cpu")
    assert s(torch.zeros(1, 1, dtype=torch.long), logits, 0).item() != tiny.eos_ids[0] % 50
    free = sampling.HostSampler(SamplingParams(temperature=0, max_new_tokens=5), [tiny.eos_ids[0] % 50])
    free.start([[1]], 50, "cpu")
    assert free(torch.zeros(1, 1, dtype=torch.long), logits, 0).item() == tiny.eos_ids[0] % 50


@pytest.mark.parametrize("top_k, top_p, temperature", [(20, 0.8, 0.7), (1, 0.5, 1.0), (50, 1.0, 1.3), (5, 0.999, 0.2),
                                                       (200, 0.3, 1.0), (20, 0.8, 1.0)])
def test_top_k_top_p_keeps_exactly_what_transformers_warpers_keep(top_k, top_p, temperature):
    import torch
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(top_k)
    scores = torch.randn(64, 151_665) * torch.rand(64, 1) * 8  # flat to peaked distributions
    ours = sampling.warp(scores.clone(), SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p))
    theirs = TemperatureLogitsWarper(temperature)(None, scores.clone())  # Transformers' order: T, top-k, top-p
    theirs = TopPLogitsWarper(top_p)(None, TopKLogitsWarper(top_k)(None, theirs))
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    assert torch.allclose(ours.softmax(-1), theirs.softmax(-1), atol=1e-6)


def test_graph_sampler_draws_depend_on_a_rows_seed_and_length_only():
    """The same seed at the same length draws the same token whichever row, batch or step it is in."""
    vocab = 128
    logits = torch.randn(vocab)
    a, b = state(1, vocab, eos=[7]), state(6, vocab, eos=[7])
    for s in (a, b):
        set_rows(s, SamplingParams(temperature=1.0, top_k=40, top_p=1.0, repetition_penalty=1.0))
        s.logits_buf.copy_(logits.expand(len(s.seeds), vocab))
    a.seeds.fill_(99)
    a.cur.fill_(30)
    b.seeds.copy_(torch.tensor([1, 2, 99, 3, 99, 4]))
    b.cur.fill_(50)
    b.pad.copy_(torch.tensor([0, 0, 20, 0, 20, 9]))  # rows 2 and 4: length 30, as row 0 of `a`
    picks = []
    for s in (a, b):
        sampling.sample_in_graph(s)
        picks.append(s.next.tolist())
    assert picks[1][2] == picks[1][4] == picks[0][0]
    draws = set()
    for n in range(40):  # and they move with the length
        a.cur.fill_(n)
        a.done.zero_()
        sampling.sample_in_graph(a)
        draws.add(a.next.item())
    assert len(draws) > 5


@pytest.mark.parametrize("penalty", [1.0, 1.05, 1.3, 0.8])
def test_the_cpu_penalty_touching_seen_tokens_only_equals_the_graphs_full_pass(penalty):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 1000, generator=g) * 4
    seen = torch.rand(5, 1000, generator=g) < 0.05
    seen[2] = False  # a row that has seen nothing
    pen = torch.tensor([penalty, 1.0, penalty, 2.0, penalty])
    assert torch.equal(sampling.penalize_seen(logits, seen, pen), sampling.penalize(logits, seen, pen[:, None]))
    before = logits.clone()
    sampling.penalize_seen(logits, seen, pen)
    assert torch.equal(logits, before)  # the logits buffer is left as it was


def test_blocked_topk_is_topk():
    from lab.engine.sampling import blocked_topk

    torch.manual_seed(0)
    for rows, vocab, k in ((8, 151665, 64), (3, 128 * 70, 64), (2, 1000, 64), (1, 151665, 1)):
        x = torch.randn(rows, vocab)
        x[0, -3:] = 50.0 + torch.arange(3.0)  # the largest in the tail past the last whole block
        got, want = blocked_topk(x, k), x.topk(k, dim=-1)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (rows, vocab, k)
    x = torch.randint(0, 4, (4, 151665)).float()  # ties everywhere: the same values, ids of those values
    vals, ids = blocked_topk(x, 64)
    assert torch.equal(vals, x.topk(64, dim=-1).values) and torch.equal(x.gather(1, ids), vals)
