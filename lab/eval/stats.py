"""Statistics for comparing two models on the same items: what the quantization report (lab/eval/quant.py) shows.

    wilson(correct, n)                       95% Wilson score interval of an accuracy
    mcnemar_exact(b, c)                      exact McNemar p-value from the discordant pairs
    paired_bootstrap(ref, other, seed)       accuracy difference (other - ref) with a 95% paired bootstrap interval
    paired(ref, other, seed)                 all of the above for two score lists over the same items

Items are paired: both models answered the same questions with the same prompts, so the question is whether
they differ on *these* items, not whether two independent samples differ. Only the discordant pairs carry
that information: b = items the reference got right and the other wrong, c = the reverse.

- Accuracy interval: Wilson's score interval (scipy's `proportion_ci(method="wilson")`). Unlike the normal
  approximation it stays inside [0, 1] and is sensible at 0 or n correct and for small n.
- McNemar's exact test: under "no difference" each discordant pair is equally likely to go either way, so b is
  Binomial(b + c, 1/2); the p-value is scipy's two-sided `binomtest`. No discordant pairs: p = 1.
- Paired bootstrap: resample the items with replacement and recompute the difference, 10,000 times, with a
  seeded numpy Generator; the interval is the 2.5th and 97.5th percentiles. An item contributes -1, 0 or +1
  to the difference, so resampling n items is a multinomial draw over those three kinds: the same
  distribution as resampling item indices, in O(resamples) instead of O(resamples x items).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import binomtest

CONFIDENCE = 0.95
RESAMPLES = 10_000

INTERVAL_NOTE = (
    "Intervals are 95%. An accuracy's interval (Wilson score) is the range of true accuracies on the benchmark's "
    "full item pool that fit the items run: run more items and it narrows. A difference's interval (paired "
    "bootstrap over the same items, 10,000 seeded resamples) is where the true difference between this variant "
    "and the reference plausibly lies; when it contains 0 the difference is within noise: these items cannot "
    "tell the two apart. McNemar's exact p is the chance of at least this lopsided a split of the items only one "
    "of the two got right, if both were equally good; p >= 0.05 reads the same way.")


def wilson(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Wilson score interval of correct / n; None for no items."""
    if n == 0:
        return None
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: b and c are the two kinds of discordant pairs."""
    if b + c == 0:
        return 1.0
    return float(binomtest(int(b), int(b + c), 0.5).pvalue)


def discordant(ref: Sequence[bool], other: Sequence[bool]) -> tuple[int, int]:
    """(b, c): items only the reference got right, items only the other got right."""
    assert len(ref) == len(other), f"paired scores need the same items, got {len(ref)} and {len(other)}"
    r, o = np.asarray(ref, dtype=bool), np.asarray(other, dtype=bool)
    return int(np.sum(r & ~o)), int(np.sum(~r & o))


def paired_bootstrap(ref: Sequence[bool], other: Sequence[bool], seed: int | Sequence[int],
                     resamples: int = RESAMPLES,
                     confidence: float = CONFIDENCE) -> tuple[float, tuple[float, float]] | None:
    """other - ref accuracy on the same items, and its paired bootstrap interval; None for no items."""
    n = len(ref)
    if n == 0:
        return None
    b, c = discordant(ref, other)
    delta = (c - b) / n
    if b + c == 0:  # every resample has the same difference
        return delta, (delta, delta)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [b / n, c / n, (n - b - c) / n], size=resamples)
    deltas = (draws[:, 1] - draws[:, 0]) / n
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(deltas, [tail, 100 - tail])
    return delta, (float(lo), float(hi))


def paired(ref: Sequence[bool], other: Sequence[bool], seed: int | Sequence[int],
           resamples: int = RESAMPLES) -> dict:
    """Everything the report shows for one variant against the reference on one set of items."""
    n = len(ref)
    b, c = discordant(ref, other)
    boot = paired_bootstrap(ref, other, seed, resamples)
    delta, ci = boot if boot else (None, None)
    return {
        "n": n, "ref_correct": int(sum(map(bool, ref))), "correct": int(sum(map(bool, other))),
        "delta": delta, "delta_ci": list(ci) if ci else None,
        "lost": b, "gained": c, "p_mcnemar": mcnemar_exact(b, c),
        "within_noise": None if ci is None else bool(ci[0] <= 0 <= ci[1]),
    }
