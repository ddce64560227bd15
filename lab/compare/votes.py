"""Blind votes between Compare variants, kept in the run history's SQLite file (`runs/lab.db`, table `votes`).

    store = VoteStore.open()                     # the same file as the evaluation runs (lab/db.py)
    store.record(comparison)                     # a lab.compare.Comparison with .voted set
    store.tally()                                # wins, losses, ties and "both bad" per pair of variants

A variant is counted under its key, its name and a fingerprint of its prompt and sampling settings
(`Variant.key`), so editing a variant starts a fresh tally instead of mixing two prompts. Each variant's record
also names the model and quantization it ran on (Compare may span models), so the ratings (`lab.compare.ratings`)
rank models too. A vote for one pane of three or four is a win over each of the others; a tie, and "both are bad",
is a tie between every pair (the verdict column tells the two apart).
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
    bad: int = 0  # "both are bad"

    @property
    def votes(self) -> int:
        return self.a_wins + self.b_wins + self.ties + self.bad

    def row(self) -> list:
        return [self.a, self.b, self.a_wins, self.b_wins, self.ties, self.bad, self.votes]


# Not "variant A"/"A wins": variants are often named A, B, C, and "A wins" in the row of B against C misleads.
TALLY_HEADERS = ["first variant", "second variant", "first won", "second won", "ties", "both bad", "votes"]
VERDICTS = ("win", "tie", "bad")


class VoteStore(Store):
    def record(self, comparison) -> int:
        """Store a voted comparison (variants, input, outputs, the blind order, the vote, the time); its id."""
        if not comparison.voted:
            raise LabError("Vote for a pane or a tie first.")
        winner = comparison.vote
        verdict = "bad" if comparison.bad else ("tie" if winner is None else "win")
        if comparison.bad and winner is not None:
            raise LabError("A vote is either for one pane or 'both are bad', not both.")
        variants = []
        for v, info in zip(comparison.variants, comparison.models_of()):
            ran_on = {"model": info.get("name"), "quant": info.get("quant")} if info else {}
            variants.append({**v.to_dict(), "key": v.key, **ran_on})  # which model/quant each side was
        with self.conn() as c:
            cur = c.execute(
                "INSERT INTO votes (created_at, model, input, variants, outputs, shown, winner, winner_key, verdict)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (time.time(), (comparison.model or {}).get("name"), comparison.input,
                 json.dumps(variants, ensure_ascii=False), json.dumps(comparison.outputs, ensure_ascii=False),
                 json.dumps(comparison.order), winner, None if winner is None else variants[winner]["key"],
                 verdict))
        return int(cur.lastrowid)

    def votes(self, limit: int | None = None) -> list[dict]:
        """Every vote (or the newest `limit`), newest first; a vote from before per-variant models names the
        vote's one model on each variant, and one from before verdicts reads its verdict from the winner."""
        rows = self.conn().execute("SELECT * FROM votes ORDER BY id DESC LIMIT ?", (limit or -1,)).fetchall()
        out = []
        for r in rows:
            variants = [{"model": r["model"], **v} for v in json.loads(r["variants"])]
            verdict = r["verdict"] or ("tie" if r["winner"] is None else "win")
            out.append({**dict(r), "variants": variants, "outputs": json.loads(r["outputs"]), "verdict": verdict,
                        "shown": json.loads(r["shown"]) if r["shown"] else None})
        return out

    def tally(self) -> list[Tally]:
        """Wins, losses, ties and "both bad" for every pair of variants that met, most votes first."""
        pairs: dict[tuple[str, str], Tally] = {}
        for r in self.conn().execute("SELECT variants, winner, verdict FROM votes ORDER BY id"):
            keys = [v["key"] for v in json.loads(r["variants"])]
            winner = r["winner"]
            for i, j in combinations(range(len(keys)), 2):
                if winner is not None and winner not in (i, j):
                    continue  # a third pane won: this vote says nothing about these two
                (a, ia), (b, _) = sorted([(keys[i], i), (keys[j], j)])
                t = pairs.setdefault((a, b), Tally(a, b))
                if r["verdict"] == "bad":
                    t.bad += 1
                elif winner is None:
                    t.ties += 1
                elif winner == ia:
                    t.a_wins += 1
                else:
                    t.b_wins += 1
        return sorted(pairs.values(), key=lambda t: (-t.votes, t.a, t.b))
