"""Blind votes record which model and quantization each side ran on and a "both are bad" verdict; a file from
before lab.db v7 keeps its votes, read as wins and ties on the vote's one model."""

from __future__ import annotations

import json
import sqlite3

import pytest

from lab.compare import Comparison, Pane, parse_variants
from lab.compare.ratings import leaderboard
from lab.compare.votes import TALLY_HEADERS, VoteStore
from lab.errors import LabError

FP32 = {"name": "tiny-random", "quant": "fp32"}
BF16 = {"name": "tiny-random", "quant": "bf16"}


def across(winner, bad=False) -> Comparison:
    variants = parse_variants([{"name": "A", "model": "tiny-random", "quant": "fp32"},
                               {"name": "B", "model": "tiny-random", "quant": "bf16"}])
    c = Comparison.from_panes("hi", variants, [Pane("a"), Pane("b")], order=[1, 0], models=[FP32, BF16])
    c.vote, c.voted, c.bad = winner, True, bad
    return c


def test_each_side_names_its_model_and_both_bad_is_recorded_as_said(tmp_path):
    store = VoteStore.open(tmp_path)
    store.record(across(0))
    store.record(across(None, bad=True))
    store.record(across(None))
    with pytest.raises(LabError, match="either for one pane or 'both are bad'"):
        store.record(across(1, bad=True))
    newest = store.votes()
    assert [v["verdict"] for v in newest] == ["tie", "bad", "win"]
    assert [(v["model"], v["quant"]) for v in newest[0]["variants"]] == [("tiny-random", "fp32"),
                                                                        ("tiny-random", "bf16")]
    assert newest[0]["variants"][0]["model"] == "tiny-random" and across(0).to_dict()["variants"][1]["ran_on"] == BF16
    assert across(None, bad=True).to_dict()["vote"] == "both bad" and across(None, bad=True).verdict == "both are bad"
    (t,) = store.tally()
    assert dict(zip(TALLY_HEADERS, t.row()))["both bad"] == 1 and (t.a_wins, t.b_wins, t.ties, t.votes) == (1, 0, 1, 3)
    board = leaderboard(store.votes(), by="model", rounds=10)
    assert [e.name for e in board.rows] == ["tiny-random · fp32", "tiny-random · bf16"]
    assert board.rows[0].bad == 1 and board.rows[0].wins == 1


def test_a_version_6_file_keeps_its_votes(tmp_path):
    store = VoteStore.open(tmp_path)
    variants = [{"name": "A", "key": "A #1"}, {"name": "B", "key": "B #2"}]
    with sqlite3.connect(tmp_path / "lab.db") as c:  # as v6 wrote them: no verdict, variants without models
        for winner in (0, None):
            c.execute("INSERT INTO votes (created_at, model, input, variants, outputs, winner) VALUES (1, 'm', 'x', ?,"
                      " '[]', ?)", (json.dumps(variants), winner))
        c.execute("UPDATE votes SET verdict=NULL")
    votes = store.votes()
    assert [v["verdict"] for v in votes] == ["tie", "win"]
    assert all(v["model"] == "m" for vote in votes for v in vote["variants"])
    assert [e.name for e in leaderboard(votes, rounds=5).rows] == ["A #1", "B #2"]
