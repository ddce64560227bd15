"""Blind votes between Compare variants, kept in the run history's SQLite file (`runs/lab.db`, table `votes`).

    store = VoteStore.open()                     # the same file as the evaluation runs (lab/db.py)
    store.record(comparison)                     # a lab.compare.Comparison with .voted set
    store.tally()                                # wins, losses and ties per pair of variants

A variant is counted under its key, its name and a fingerprint of its prompt and sampling settings
(`Variant.key`), so editing a variant starts a fresh tally instead of mixing two prompts. A vote for
one pane of three or four is a win over each of the others; a tie is a tie between every pair.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from itertools import combinations

from lab.db import Store
from lab.errors import LabError


@dataclass
class Tally:
    """How two variants fared against each other."""

    a: str
    b: str
    a_wins: int = 0
    b_wins: int = 0
    ties: int = 0

    @property
    def votes(self) -> int:
        return self.a_wins + self.b_wins + self.ties

    def row(self) -> list:
        return [self.a, self.b, self.a_wins, self.b_wins, self.ties, self.votes]


TALLY_HEADERS = ["variant A", "variant B", "A wins", "B wins", "ties", "votes"]


class VoteStore(Store):
    def record(self, comparison) -> int:
        """Store a voted comparison (variants, input, outputs, the blind order, the vote, the time); its id."""
        if not comparison.voted:
            raise LabError("Vote for a pane or a tie first.")
        variants = [{**v.to_dict(), "key": v.key} for v in comparison.variants]
        winner = comparison.vote
        with self.conn() as c:
            cur = c.execute(
                "INSERT INTO votes (created_at, model, input, variants, outputs, shown, winner, winner_key)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (time.time(), (comparison.model or {}).get("name"), comparison.input,
                 json.dumps(variants, ensure_ascii=False), json.dumps(comparison.outputs, ensure_ascii=False),
                 json.dumps(comparison.order), winner, None if winner is None else variants[winner]["key"]))
        return int(cur.lastrowid)

    def votes(self, limit: int = 1000) -> list[dict]:
        rows = self.conn().execute("SELECT * FROM votes ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [{**dict(r), "variants": json.loads(r["variants"]), "outputs": json.loads(r["outputs"]),
                 "shown": json.loads(r["shown"]) if r["shown"] else None} for r in rows]

    def tally(self) -> list[Tally]:
        """Wins, losses and ties for every pair of variants that met, most votes first."""
        pairs: dict[tuple[str, str], Tally] = {}
        for r in self.conn().execute("SELECT variants, winner FROM votes ORDER BY id"):
            keys = [v["key"] for v in json.loads(r["variants"])]
            winner = r["winner"]
            for i, j in combinations(range(len(keys)), 2):
                if winner is not None and winner not in (i, j):
                    continue  # a third pane won: this vote says nothing about these two
                (a, ia), (b, _) = sorted([(keys[i], i), (keys[j], j)])
                t = pairs.setdefault((a, b), Tally(a, b))
                if winner is None:
                    t.ties += 1
                elif winner == ia:
                    t.a_wins += 1
                else:
                    t.b_wins += 1
        return sorted(pairs.values(), key=lambda t: (-t.votes, t.a, t.b))
