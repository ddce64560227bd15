"""Ratings from blind votes, the way Chatbot Arena computes its leaderboard: a Bradley–Terry fit over every vote,
ties counted half, with bootstrap 95% intervals.

    board = leaderboard(VoteStore.open().votes(), by="variant")   # or by="model": model and quantization
    for r in board.rows: print(r.name, r.rating, r.low, r.high)

The model: each entrant i has a strength w_i and P(i beats j) = 1 / (1 + exp(w_j - w_i)), a logistic regression
whose features are +1 for one side and -1 for the other. A tie (and "both are bad") counts as half a win each way,
as Arena doubles its ties. A weak Gaussian prior (L2, PRIOR_C) keeps an entrant that won every vote it was in at a
finite rating instead of infinity; it centres the strengths at 0, so the mean rating is 1000. Strengths are shown on
Elo's scale, 400 / ln 10 points per unit, so 100 points is a 64% chance of winning. scipy.optimize fits it (trust-region
Newton steps with the exact gradient and Hessian, then the gradient's root polished); tests/compare/test_ratings.py checks it equals scikit-learn's
LogisticRegression on the same votes.

Intervals: the votes are resampled with replacement (ROUNDS times, seeded) and refitted; the 2.5th and 97.5th
percentiles of each rating are its 95% interval. A vote between three or four panes is one unit of resampling
(a win over each of the others, or a tie between every pair), so its pairs stay together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.optimize import minimize, root

SCALE = 400 / math.log(10)  # Elo points per unit of strength
BASE_RATING = 1000.0
PRIOR_C = 10.0  # inverse strength of the prior, as scikit-learn's C: about a tenth of a vote's pull towards 0
ROUNDS = 300  # bootstrap resamples: ~0.5 s a board on a busy 2-core CPU; percentiles steady to a few points
SEED = 42
BOARD_HEADERS = ["rank", "entrant", "rating", "95% interval", "votes", "wins", "ties", "losses", "both bad"]


@dataclass
class Entry:
    rank: int
    name: str
    rating: float
    low: float
    high: float
    votes: int  # votes it took part in
    wins: int  # pairwise: one vote of four panes won is three wins
    ties: int
    losses: int
    bad: int  # "both are bad" verdicts it was part of (counted as ties in the fit)

    def row(self) -> list:
        return [self.rank, self.name, round(self.rating), f"{self.low:.0f} – {self.high:.0f}", self.votes,
                self.wins, self.ties, self.losses, self.bad]


@dataclass
class Board:
    rows: list[Entry]
    votes: int  # votes that said something about two different entrants
    rounds: int

    def frame_rows(self) -> list[list]:
        return [e.row() for e in self.rows]


def entrant(variant: dict, by: str) -> str:
    """Whom a pane stands for: the variant (its name and fingerprint), or the model and quantization it ran on."""
    if by == "variant":
        return variant["key"]
    model = variant.get("model") or "unknown model"
    return f"{model} · {variant['quant']}" if variant.get("quant") else model


def games(vote: dict, by: str = "variant") -> list[tuple[str, str, float]]:
    """One vote as pairwise games (first, second, the first's score: 1, 0 or 0.5 for a tie or both bad);
    pairs of panes standing for the same entrant say nothing and are left out."""
    names = [entrant(v, by) for v in vote["variants"]]
    winner = vote.get("winner")
    out = []
    for i, j in combinations(range(len(names)), 2):
        if names[i] == names[j] or (winner is not None and winner not in (i, j)):
            continue  # a third pane won: this vote says nothing about these two
        out.append((names[i], names[j], 0.5 if winner is None else float(winner == i)))
    return out


def fit(wins: np.ndarray, c: float = PRIOR_C, polish: bool = True) -> np.ndarray:
    """Strengths from `wins[i, j]`, how many times i beat j (ties already split in halves): the minimum of
    sum_ij wins[i, j] * log(1 + exp(w_j - w_i)) + |w|^2 / (2c)."""
    n = wins.shape[0]
    pairs = np.argwhere(np.triu(wins + wins.T, 1) > 0)
    i, j = pairs[:, 0], pairs[:, 1]
    a, b = wins[i, j], wins[j, i]  # i over j, j over i

    def f(w):
        d = w[i] - w[j]
        return float(np.sum(a * np.logaddexp(0, -d) + b * np.logaddexp(0, d)) + w @ w / (2 * c))

    def grad(w):
        p = 1 / (1 + np.exp(-(w[i] - w[j])))  # P(i beats j)
        g_pair = (a + b) * p - a  # d/d(w_i) of the pair's loss
        g = np.zeros(n)
        np.add.at(g, i, g_pair)
        np.add.at(g, j, -g_pair)
        return g + w / c

    def hess(w):
        p = 1 / (1 + np.exp(-(w[i] - w[j])))
        h_pair = (a + b) * p * (1 - p)
        h = np.eye(n) / c
        np.add.at(h, (i, i), h_pair)
        np.add.at(h, (j, j), h_pair)
        np.add.at(h, (i, j), -h_pair)
        np.add.at(h, (j, i), -h_pair)
        return h

    # Trust-region Newton to the minimum, then the gradient's root polished with the Hessian as its Jacobian: the
    # objective's value runs out of float precision (a sum of hundreds) before its gradient does.
    start = minimize(f, np.zeros(n), jac=grad, hess=hess, method="trust-exact").x
    if not polish:  # a bootstrap round: 1e-5 of a unit (a thousandth of a point) is more than enough
        return start
    res = root(grad, start, jac=hess, method="hybr", options={"xtol": 1e-14})
    # hybr reports failure when xtol is finer than it can resolve, though its gradient is then ~1e-15: judge by that
    return res.x if np.abs(res.fun).max() <= np.abs(grad(start)).max() else start


def ratings(w: np.ndarray) -> np.ndarray:
    return BASE_RATING + SCALE * w


def leaderboard(votes: list[dict], by: str = "variant", rounds: int = ROUNDS, seed: int = SEED) -> Board:
    """Every entrant's rating and bootstrap interval from `votes` (VoteStore.votes() records), best first."""
    per_vote = [games(v, by) for v in votes]
    kept = [(v, g) for v, g in zip(votes, per_vote) if g]
    names = sorted({n for _, g in kept for a, b, _ in g for n in (a, b)})
    if len(names) < 2:
        return Board([], 0, 0)
    index = {n: k for k, n in enumerate(names)}
    n = len(names)
    stack = np.zeros((len(kept), n, n))  # one vote's wins matrix per vote: the bootstrap reweights them
    counts = {name: [0, 0, 0, 0, 0] for name in names}  # votes, wins, ties, losses, bad
    for k, (vote, g) in enumerate(kept):
        bad = vote.get("verdict") == "bad"
        for a, b, s in g:
            ia, ib = index[a], index[b]
            stack[k, ia, ib] += s
            stack[k, ib, ia] += 1 - s
            for name, score in ((a, s), (b, 1 - s)):
                slot = 4 if bad else (2 if score == 0.5 else (1 if score == 1 else 3))
                counts[name][slot] += 1
        for name in {x for a, b, _ in g for x in (a, b)}:
            counts[name][0] += 1
    point = ratings(fit(stack.sum(axis=0)))
    rng = np.random.default_rng(seed)
    boot = np.empty((rounds, n))
    for r in range(rounds):
        weights = rng.multinomial(len(kept), np.full(len(kept), 1 / len(kept)))
        boot[r] = ratings(fit(np.tensordot(weights, stack, axes=1), polish=False))
    low, high = np.percentile(boot, [2.5, 97.5], axis=0) if rounds else (point, point)
    order = sorted(range(n), key=lambda k: -point[k])
    rows = [Entry(rank, names[k], float(point[k]), float(low[k]), float(high[k]), *counts[names[k]])
            for rank, k in enumerate(order, 1)]
    return Board(rows, len(kept), rounds)
