"""How a benchmark is planned, run and scored, by its spec's `kind`. Each kind is a module with:

    MODES, CHAT_MODE, TAKES_SHOTS, UNIT, RATE, SPACE_CAP, MODE_HELP    what it offers, for the runner, CLI and page
    check(spec)                          the spec has what this kind needs (one sentence if not)
    plan(spec, dataset, request, mode)   -> Plan: the items and their prompts (no model)
    batch_size(plan, cuda)               items per saved batch
    run_batch(model, plan, items, seed, cancel) -> samples (None: cancelled half-way)
    summarize(samples, groups)           -> the run's summary
    export_row(sample)                   a sample as `python -m lab.eval export` writes it
    SCORE_MODE, score_file(...)          (code) scoring a samples file made elsewhere, no model

The runner (lab/eval/runner.py) knows nothing else of a kind.
"""

from __future__ import annotations

from types import ModuleType

from lab.eval.kinds import choice, code

KINDS: dict[str, ModuleType] = {"choice": choice, "code": code}


def kind_of(spec) -> ModuleType:
    """The spec's kind, once it has checked that the spec holds what the kind needs (one sentence if not)."""
    kind = KINDS[spec.kind]
    kind.check(spec)  # a few dictionary lookups: cheaper than remembering
    return kind
