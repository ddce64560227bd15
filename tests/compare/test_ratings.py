"""Ratings from blind votes (lab.compare.ratings): the Bradley–Terry fit equals scikit-learn's logistic regression
on the same votes, ties count half, multi-pane votes are pairwise games, the intervals hold the point and narrow with
more votes, and a board by model pools the variants that ran on one model."""

from __future__ import annotations

import numpy as np
import pytest

from lab.compare import ratings as R

sklearn = pytest.importorskip("sklearn.linear_model")


def random_votes(seed: int, n: int = 300, players: int = 6) -> list[dict]:
    """Votes between 2-4 panes with a true order (player k is k * 0.4 stronger), some ties and some both-bad."""
    rng = np.random.default_rng(seed)
    votes = []
    for _ in range(n):
        idx = rng.choice(players, rng.choice([2, 3, 4]), replace=False)
        r = rng.random()
        winner = None if r < 0.2 else int(np.argmax([rng.gumbel() + 0.4 * i for i in idx]))
        votes.append({"variants": [{"key": f"v{i}", "model": f"m{i % 3}", "quant": "bf16"} for i in idx],
                      "winner": winner, "verdict": "bad" if r < 0.05 else ("tie" if winner is None else "win")})
    return votes


def sklearn_ratings(votes: list[dict], by: str = "variant") -> dict[str, float]:
    """The same fit written as Arena writes it: one row per pairwise game, +1 for the first side and -1 for the
    second; a tie is two rows of weight 1/2, one won by each side."""
    names = sorted({R.entrant(v, by) for vote in votes for v in vote["variants"]})
    index = {n: i for i, n in enumerate(names)}
    X, y, w = [], [], []
    for vote in votes:
        for a, b, s in R.games(vote, by):
            x = np.zeros(len(names))
            x[index[a]], x[index[b]] = 1, -1
            for label, weight in ((1, s), (0, 1 - s)):
                if weight:
                    X.append(x)
                    y.append(label)
                    w.append(weight)
    model = sklearn.LogisticRegression(C=R.PRIOR_C, fit_intercept=False, solver="newton-cholesky", tol=1e-12,
                                       max_iter=1000).fit(np.array(X), y, sample_weight=w)
    return dict(zip(names, R.ratings(model.coef_[0])))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_fit_equals_scikit_learns_logistic_regression_within_1e_6(seed):
    votes = random_votes(seed)
    board = R.leaderboard(votes, rounds=0)
    expected = sklearn_ratings(votes)
    assert len(board.rows) == 6
    for e in board.rows:
        assert abs(e.rating - expected[e.name]) < 1e-6, (e.name, e.rating, expected[e.name])
    # the true order is recovered: v5 strongest, v0 weakest
    assert board.rows[0].name == "v5" and board.rows[-1].name == "v0"


def test_by_model_pools_variants_and_leaves_same_model_pairs_out():
    votes = random_votes(3)
    board = R.leaderboard(votes, by="model", rounds=0)
    expected = sklearn_ratings(votes, by="model")
    assert {e.name for e in board.rows} == {"m0 · bf16", "m1 · bf16", "m2 · bf16"}
    for e in board.rows:
        assert abs(e.rating - expected[e.name]) < 1e-6
    same = {"variants": [{"key": "a", "model": "m", "quant": "bf16"}, {"key": "b", "model": "m", "quant": "bf16"}],
            "winner": 0}
    assert R.games(same, "model") == [] and R.games(same, "variant") == [("a", "b", 1.0)]


def test_a_tie_is_half_a_win_each_way_and_a_third_panes_win_says_nothing_of_the_other_two():
    tie = {"variants": [{"key": "a"}, {"key": "b"}, {"key": "c"}], "winner": None}
    assert R.games(tie) == [("a", "b", 0.5), ("a", "c", 0.5), ("b", "c", 0.5)]
    third = {"variants": [{"key": "a"}, {"key": "b"}, {"key": "c"}], "winner": 2}
    assert R.games(third) == [("a", "c", 0.0), ("b", "c", 0.0)]
    # only ties: everyone equal, at the base rating
    board = R.leaderboard([tie, tie], rounds=20)
    assert all(abs(e.rating - R.BASE_RATING) < 1e-6 for e in board.rows)


def test_counts_intervals_and_a_clean_sweep_stays_finite():
    votes = [{"variants": [{"key": "a"}, {"key": "b"}], "winner": 0, "verdict": "win"}] * 5
    votes += [{"variants": [{"key": "a"}, {"key": "b"}], "winner": None, "verdict": "bad"}]
    board = R.leaderboard(votes, rounds=200)
    a, b = board.rows
    assert a.name == "a" and np.isfinite(a.rating) and a.rating > b.rating
    assert abs((a.rating - R.BASE_RATING) + (b.rating - R.BASE_RATING)) < 1e-6  # the prior centres them
    assert (a.votes, a.wins, a.ties, a.losses, a.bad) == (6, 5, 0, 0, 1)
    assert (b.wins, b.losses, b.bad) == (0, 5, 1)
    for e in board.rows:
        assert e.low <= e.rating + 1e-9 and e.rating <= e.high + 1e-9


def test_more_votes_narrow_the_interval_and_the_bootstrap_is_seeded():
    few, many = random_votes(4, n=60), random_votes(4, n=600)
    width = lambda board: np.mean([e.high - e.low for e in board.rows])  # noqa: E731
    assert width(R.leaderboard(many, rounds=200)) < width(R.leaderboard(few, rounds=200))
    one, two = R.leaderboard(few, rounds=50, seed=7), R.leaderboard(few, rounds=50, seed=7)
    assert [(e.low, e.high) for e in one.rows] == [(e.low, e.high) for e in two.rows]


def test_fewer_than_two_entrants_is_an_empty_board():
    assert R.leaderboard([]).rows == []
    same = {"variants": [{"key": "a", "model": "m"}, {"key": "b", "model": "m"}], "winner": 0}
    assert R.leaderboard([same], by="model").rows == []
