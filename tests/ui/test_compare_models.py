"""Compare across models on tiny-random fp32 (the page's model) and bf16: the plan says what fits, each model's
variants run as one batch, the panes say which model each ran on, and the memory plan decides what stays loaded."""

from __future__ import annotations

import pytest

from lab.compare import parse_variants
from lab.errors import LabError
from lab.models.manager import LoadRequest, ModelManager
from lab.ui.compare_models import plan_for, run_planned, spans_models

VARIANTS = [{"name": "A", "max_new_tokens": 8, "temperature": 0},
            {"name": "B", "model": "tiny-random", "quant": "bf16", "max_new_tokens": 8, "temperature": 0}]


@pytest.fixture
def manager():
    m = ModelManager()
    m.load(LoadRequest("tiny-random"))
    yield m
    m.unload()


def run(manager, variants):
    plan = plan_for(manager, variants)
    steps = list(run_planned(manager, "Hello", variants, plan))
    panes, _, infos = steps[-1]
    return plan, steps, panes, infos


def test_two_models_that_fit_stay_loaded_together(manager):
    variants = parse_variants(VARIANTS)
    assert spans_models(variants) and not spans_models(parse_variants([VARIANTS[0], {"name": "C"}]))
    plan, steps, panes, infos = run(manager, variants)
    assert plan.placement.together and "fit together" in plan.placement.note
    assert [(i.name, i.quant) for i in infos] == [("tiny-random", "fp32"), ("tiny-random", "bf16")]
    assert all(p.text and p.stats for p in panes)
    said = [what for _, what, _ in steps if what]
    assert any(w.startswith("Loading model 2/2, tiny-random · bf16") for w in said)
    assert set(manager.held()) == {"tiny-random · fp32", "tiny-random · bf16"}  # kept for the next run
    again, *_ = run(manager, variants)
    assert again.placement.note.startswith("Every model is loaded already")


def test_models_that_do_not_fit_run_one_after_another_and_are_freed(manager, monkeypatch):
    monkeypatch.setattr(manager, "free_bytes", lambda: 1000)  # a machine with almost nothing free
    plan, _, panes, infos = run(manager, parse_variants(VARIANTS))
    assert not plan.placement.together and "one after another" in plan.placement.note
    assert infos[1].quant == "bf16" and all(p.text for p in panes)
    assert list(manager.held()) == ["tiny-random · fp32"]  # bf16 freed after its turn; the page's model stays


def test_a_model_that_cannot_be_named_is_one_sentence_naming_the_variant(manager):
    bad = parse_variants([VARIANTS[0], {"name": "B", "model": "no/such/model/here"}])
    with pytest.raises(LabError, match="^Variant 'B': there is no checkpoint directory"):
        plan_for(manager, bad)
    with pytest.raises(LabError, match="No model is loaded for the variants that name none"):
        plan_for(ModelManager(), parse_variants(VARIANTS))
