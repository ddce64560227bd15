"""Variants on a benchmark: each variant's system prompt and template over the same seeded slice of a
benchmark (in its kind's chat mode, greedy), one saved evaluation run each, accuracy side by side."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from lab.compare.variants import SLOT, Variant, parse_variants
from lab.errors import LabError
from lab.eval.kinds import kind_of
from lab.eval.plan import DEFAULT_SEED, EvalRequest
from lab.eval.runner import Runner
from lab.eval.spec import load_spec
from lab.eval.store import RunStore


@dataclass
class BenchRow:
    variant: Variant
    run_id: str
    status: str
    summary: dict

    @property
    def score(self) -> float | None:
        overall = self.summary.get("overall", {})
        return overall.get("accuracy", overall.get("pass@1"))


BENCH_HEADERS = ["variant", "accuracy %", "correct", "items", "unparseable", "status", "run id"]


def bench_requests(variants: Sequence[Variant], benchmark: str, limit: int = 20, seed: int | None = None,
                   max_new_tokens: int | None = None, data_dir: str | None = None) -> list:
    """One evaluation request per variant: its system prompt and template on the same seeded items, greedy."""
    spec = load_spec(benchmark)
    kind = kind_of(spec)
    if limit is None or limit < 1:
        raise LabError(f"Give a limit of at least 1 item, got {limit}; variants on a whole benchmark take hours.")
    return [EvalRequest(benchmark=spec.name, mode=kind.CHAT_MODE, shots=0 if kind.TAKES_SHOTS else None,
                        limit=int(limit), seed=DEFAULT_SEED if seed is None else int(seed),
                        max_new_tokens=max_new_tokens, data_dir=data_dir,
                        system=v.system or None, template=None if v.template == SLOT else v.template)
            for v in variants]


def bench_variants(model, variants: Sequence[Variant], benchmark: str, limit: int = 20, seed: int | None = None,
                   max_new_tokens: int | None = None, store=None, data_dir: str | None = None,
                   on_progress: Callable[[int, object], None] | None = None,
                   cancel: threading.Event | None = None) -> list[BenchRow]:
    """Run every variant over the same seeded slice of a benchmark (in its kind's chat mode: gen for multiple
    choice, instruct for code), one saved run each, in the run history the Evaluate tab shows."""
    variants = parse_variants(list(variants))
    runner = Runner(store or RunStore.open())
    requests = bench_requests(variants, benchmark, limit, seed, max_new_tokens, data_dir)
    for req in requests:
        runner.plan(req)  # every request is checked before the first run starts
    cancel = cancel or threading.Event()
    rows = []
    for i, (v, req) in enumerate(zip(variants, requests)):
        if cancel.is_set():
            break
        named: set[str] = set()

        def progress(p, i=i, v=v):
            if p.run_id not in named:  # the history shows the variant while the run goes, not a bare "gen 0"
                named.add(p.run_id)
                runner.store.rename(p.run_id, run_name(v))
            if on_progress:
                on_progress(i, p)

        result = runner.run(model, req, progress, cancel)
        if result.run_id not in named:
            runner.store.rename(result.run_id, run_name(v))
        rows.append(BenchRow(v, result.run_id, result.status, result.summary))
    return rows


def run_name(v: Variant) -> str:
    """How a run of Compare's "Variants on a benchmark" is named in the history: by its variant."""
    return f"Compare variant “{v.name}” #{v.fingerprint}"


def bench_table(rows: Sequence[BenchRow]) -> list[list]:
    """The variants side by side: accuracy (a code benchmark: pass@1), counts, status and run id."""
    out = []
    for r in rows:
        o = r.summary.get("overall", {})
        n = o.get("n", o.get("samples"))
        correct = o.get("correct", o.get("passed"))
        out.append([r.variant.name, None if r.score is None else round(100 * r.score, 1), correct, n,
                    o.get("unparseable"), r.status, r.run_id])
    return out
