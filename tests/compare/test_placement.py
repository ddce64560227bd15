"""Which models a Compare across models keeps loaded together and the order it loads them in
(lab.compare.placement), from sizes, what is in memory and what is free."""

from __future__ import annotations

from lab.compare.placement import HEADROOM, Need, place

MIB = 2**20
MAIN = "Qwen2.5-7B-Instruct · 4bit"


def plan_of(p):
    return [(s.key, s.load, s.free_after) for s in p.steps]


def test_models_that_fit_stay_loaded_together_those_in_memory_first():
    needs = [Need("b · bf16", 100 * MIB), Need(MAIN, 500 * MIB), Need("c · fp32", 200 * MIB)]
    p = place(needs, held={MAIN: 500 * MIB}, free=1000 * MIB, keep=MAIN)
    assert p.together and not p.reload_keep and p.free_first == []
    assert plan_of(p) == [(MAIN, False, False), ("b · bf16", True, False), ("c · fp32", True, False)]
    assert "fit together" in p.note and "stay loaded" in p.note and "b · bf16 (100.0 MiB)" in p.note


def test_the_headroom_is_kept_for_replies():
    needs = [Need(MAIN, 1), Need("big · bf16", int(HEADROOM * 1000 * MIB) + 1)]
    assert not place(needs, {MAIN: 1}, free=1000 * MIB, keep=MAIN).together
    needs = [Need(MAIN, 1), Need("big · bf16", int(HEADROOM * 1000 * MIB) - 1)]
    assert place(needs, {MAIN: 1}, free=1000 * MIB, keep=MAIN).together


def test_models_that_do_not_fit_run_one_after_another_each_freed_before_the_next():
    needs = [Need("a · bf16", 600 * MIB), Need(MAIN, 300 * MIB), Need("b · bf16", 600 * MIB)]
    p = place(needs, held={MAIN: 300 * MIB}, free=800 * MIB, keep=MAIN)
    assert not p.together and not p.reload_keep
    # the page's model first (no load) and kept; then each other loaded, run and freed, in the variants' order
    assert plan_of(p) == [(MAIN, False, False), ("a · bf16", True, True), ("b · bf16", True, True)]
    assert "do not fit together (800.0 MiB is free)" in p.note and "one after another" in p.note


def test_a_model_no_variant_asks_for_is_freed_first_and_its_memory_counts():
    held = {MAIN: 300 * MIB, "old · bf16": 500 * MIB}
    p = place([Need(MAIN, 300 * MIB), Need("new · bf16", 550 * MIB)], held, free=200 * MIB, keep=MAIN)
    assert p.free_first == ["old · bf16"] and p.together  # 0.9 * (200 + 500) MiB = 630 MiB >= 550 MiB
    assert plan_of(p) == [(MAIN, False, False), ("new · bf16", True, False)]


def test_the_pages_model_is_freed_and_reloaded_only_when_the_largest_would_not_fit_beside_it():
    needs = [Need("a · bf16", 900 * MIB), Need("b · bf16", 900 * MIB)]
    p = place(needs, held={MAIN: 500 * MIB}, free=600 * MIB, keep=MAIN)
    assert p.reload_keep and not p.together and "loaded again after" in p.note
    assert plan_of(p) == [("a · bf16", True, True), ("b · bf16", True, True)]
    # asked for by a variant: it runs first, then is freed for the others, and comes back after
    p = place([Need(MAIN, 500 * MIB), *needs], held={MAIN: 500 * MIB}, free=600 * MIB, keep=MAIN)
    assert p.reload_keep and plan_of(p)[0] == (MAIN, False, True)
    # room beside it: it stays
    p = place(needs, held={MAIN: 500 * MIB}, free=1100 * MIB, keep=MAIN)
    assert not p.reload_keep and not p.together


def test_a_size_that_cannot_be_told_never_counts_as_fitting():
    p = place([Need(MAIN, 1), Need("x.gguf · bf16", None)], {MAIN: 1}, free=10**12, keep=MAIN)
    assert not p.together and "cannot be told before loading" in p.note and "size unknown" in p.note
    p = place([Need(MAIN, 1), Need("b · bf16", 1)], {MAIN: 1}, free=None, keep=MAIN)
    assert not p.together and "free memory cannot be read here" in p.note


def test_everything_in_memory_already_loads_nothing():
    held = {MAIN: 5, "b · bf16": 5}
    p = place([Need("b · bf16", 5), Need(MAIN, 5), Need("b · bf16", 5)], held, free=0, keep=MAIN)
    assert p.together and plan_of(p) == [("b · bf16", False, False), (MAIN, False, False)]
    assert p.note.startswith("Every model is loaded already")
