"""Shared-prefix scoring (`lab.engine.prefix`): grouping rows by a shared start, the cheapest batches, the
split attention's exact merge, and the suffix forward against Transformers' forward over a copied prefix."""

from __future__ import annotations

import pytest
import torch

from lab.engine.prefix import MIN_PREFIX, plan_batches, prefix_groups


def test_prefix_groups_join_rows_sharing_a_long_start():
    shot = list(range(100, 100 + 2 * MIN_PREFIX))
    other = list(range(500, 500 + 2 * MIN_PREFIX))
    rows = [shot + [1, 2], other + [3], shot + [4, 5, 6], [7, 8], other + [9, 9]]
    groups = {tuple(sorted(idx)): n for n, idx in prefix_groups(rows)}
    assert groups == {(0, 2): len(shot), (1, 4): len(other), (3,): 0}
    # a whole prompt that is another's start keeps one token of its own
    assert prefix_groups([shot, shot + [1]]) == [(len(shot) - 1, [0, 1])]


def _plan_cost(widths, batches, overhead, floor):
    return sum(overhead + max((b - a) * widths[b - 1], floor) for a, b in batches)


def _best_cost(widths, max_rows, overhead, floor):
    """Every way of cutting, by brute force."""
    import itertools

    n, best = len(widths), float("inf")
    for cuts in itertools.product([0, 1], repeat=n - 1):
        edges = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        batches = list(zip(edges, edges[1:]))
        if all(b - a <= max_rows(widths[b - 1]) for a, b in batches):
            best = min(best, _plan_cost(widths, batches, overhead, floor))
    return best


def test_scoring_batches_are_the_cheapest_cut_that_fits():
    import random

    rnd = random.Random(0)
    for trial in range(30):
        widths = sorted(rnd.choice([rnd.randint(5, 40), rnd.randint(40, 400)]) for _ in range(rnd.randint(1, 11)))
        cap = rnd.randint(1, 6)

        def max_rows(w):
            return max(1, cap * 100 // w)

        overhead, floor = rnd.choice([(0, 0), (16, 64), (256, 2048)])
        batches = plan_batches(widths, max_rows, overhead, floor)
        assert [a for a, _ in batches] == [0] + [b for _, b in batches[:-1]] and batches[-1][1] == len(widths)
        assert all(b - a <= max_rows(widths[b - 1]) for a, b in batches)
        assert _plan_cost(widths, batches, overhead, floor) == _best_cost(widths, max_rows, overhead, floor)
    # skewed lengths: the long tail gets batches of its own instead of padding the short rows
    widths = [60] * 90 + [900] * 10
    batches = plan_batches(widths, lambda w: 256)
    assert batches == [(0, 90), (90, 100)]
    with pytest.raises(AssertionError):
        plan_batches([3, 1], lambda w: 8)


def test_split_attention_merges_to_whole_attention():
    """Prefix part + causal own part, merged through their log-sum-exps, is attention over both at once."""
    from lab.engine.prefix import attention_by_definition, attention_with_lse

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for n in (5, 12, 12))
    for causal in (False, True):
        kq, kv_ = (k, v) if not causal else (k[:, :, :5], v[:, :, :5])
        o, lse = attention_with_lse(q, kq, kv_, 0.25, causal)
        o_ref, lse_ref = attention_by_definition(q, kq, kv_, 0.25, causal)
        assert torch.allclose(o, o_ref, atol=1e-5) and torch.allclose(lse, lse_ref, atol=1e-5)
    # 12 prefix keys seen by all, then 5 own tokens causally: the merge equals one masked attention
    own_k, own_v = torch.randn(2, 3, 5, 16, generator=g), torch.randn(2, 3, 5, 16, generator=g)
    o1, l1 = attention_with_lse(q, k, v, 0.25, False)
    o2, l2 = attention_with_lse(q, own_k, own_v, 0.25, True)
    top = torch.maximum(l1, l2)
    w1, w2 = (l1 - top).exp()[..., None], (l2 - top).exp()[..., None]
    merged = (o1 * w1 + o2 * w2) / (w1 + w2)
    mask = torch.ones(5, 17, dtype=torch.bool)
    mask[:, 12:] = torch.ones(5, 5, dtype=torch.bool).tril()
    whole = torch.nn.functional.scaled_dot_product_attention(q, torch.cat([k, own_k], 2), torch.cat([v, own_v], 2),
                                                             attn_mask=mask, scale=0.25)
    assert torch.allclose(merged, whole, atol=1e-5)


def test_suffix_forward_equals_transformers_forward_over_copied_prefix(tiny):
    from lab.engine.prefix import PrefixScorer

    scorer = PrefixScorer(tiny.model, tiny.pad_id)
    assert scorer.own
    prefix = tiny.encode("Answer with one letter. Question: which is a river? A. Nile B. Alps\nAnswer: A\n\n" * 3)
    suffixes = [tiny.encode(t) for t in ("Question: 2+2? A. 4 B. 5\nAnswer:", "Q: sky? A. blue\nAnswer:",
                                         "Question: the longest of these rows, with a few more words?\nAnswer:")]
    with torch.inference_mode():
        kv = scorer.prefix_kv(prefix)
        ours = scorer.next_logprobs(kv, len(prefix), suffixes)
        scorer.own = False
        theirs = scorer.next_logprobs(kv, len(prefix), suffixes)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


