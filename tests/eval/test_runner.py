"""The runner on tiny-random with the real data: subsets, batching, cancel and resume."""

import threading
from collections import Counter

import pytest

from lab.errors import LabError
from lab.eval.runner import EvalRequest, Runner
from lab.eval.store import RunStore


@pytest.fixture
def runner(tmp_path, data_dir):
    return Runner(RunStore.open(tmp_path))


def keys(runner, **kw):
    return [it.key for it in runner.plan(EvalRequest(**kw)).items]


def test_limit_is_a_seeded_sample_spread_over_subjects(runner):
    a = keys(runner, benchmark="mmlu", limit=40, seed=1)
    assert a == keys(runner, benchmark="mmlu", limit=40, seed=1)
    assert a != keys(runner, benchmark="mmlu", limit=40, seed=2)
    assert len(set(k.split("/")[0] for k in a)) == 40  # 40 questions from 40 different subjects
    spread = Counter(k.split("/")[0] for k in keys(runner, benchmark="mmlu", limit=200, seed=1))
    assert len(spread) == 57 and max(spread.values()) - min(spread.values()) <= 1


def test_named_subsets(runner):
    mini = Counter(k.split("/")[0] for k in keys(runner, benchmark="mmlu", subset="mini"))
    assert len(mini) == 57 and set(mini.values()) == {10}
    assert keys(runner, benchmark="mmlu", subset="mini", seed=3) != keys(runner, benchmark="mmlu", subset="mini")
    hard = {k.split("/")[0] for k in keys(runner, benchmark="ceval", subset="hard")}
    assert hard == {"advanced_mathematics", "discrete_mathematics", "probability_and_statistics", "college_chemistry",
                    "college_physics", "high_school_mathematics", "high_school_chemistry", "high_school_physics"}
    assert keys(runner, benchmark="humaneval", subset="first20") == [f"HumanEval/{i}#0" for i in range(20)]
    mini_he = keys(runner, benchmark="humaneval", subset="mini")
    assert len(mini_he) == 20 and mini_he == keys(runner, benchmark="humaneval", subset="mini")


def test_subjects_and_bad_requests(runner):
    assert {k.split("/")[0] for k in keys(runner, benchmark="mmlu", subjects=["anatomy", "virology"])} == {
        "anatomy", "virology"}
    assert keys(runner, benchmark="humaneval", subjects=["3", "HumanEval/5"]) == ["HumanEval/3#0", "HumanEval/5#0"]
    for kw, msg in [({"subjects": ["astrology"]}, "no subject astrology"), ({"shots": 6}, "between 0 and 5"),
                    ({"mode": "vibes"}, "no mode 'vibes'"), ({"subset": "huge"}, "no subset 'huge'"),
                    ({"limit": 0}, "at least 1")]:
        with pytest.raises(LabError, match=msg):
            runner.plan(EvalRequest("mmlu", **kw))
    with pytest.raises(LabError, match="--temperature"):
        runner.plan(EvalRequest("humaneval", samples_per_task=5))


def test_logprob_prompts_share_the_subject_prefix(runner):
    items = runner.plan(EvalRequest("mmlu", subjects=["anatomy"], limit=3, shots=5)).items
    header = "The following are multiple choice questions (with answers) about anatomy.\n\n"
    assert all(it.prompt.startswith(header) and it.prompt.count("Answer:") == 6 for it in items)
    prefix = items[0].prompt[: items[0].prompt.rindex("Answer:") - 200]
    assert all(it.prompt.startswith(prefix) for it in items)


def test_a_cancelled_run_resumes_to_the_uninterrupted_result(runner, tiny):
    req = EvalRequest("mmlu", limit=24, shots=2, batch_size=4)
    full = runner.run(tiny, req)
    assert full.status == "finished" and full.summary["overall"]["n"] == 24

    cancel = threading.Event()
    seen = []

    def stop_after_two_batches(p):
        seen.append(p.done)
        if p.done >= 8:
            cancel.set()

    part = runner.run(tiny, req, on_progress=stop_after_two_batches, cancel=cancel)
    assert part.status == "cancelled" and len(part.samples) == 8 and seen == [0, 4, 8]
    assert runner.store.get(part.run_id).status == "cancelled"

    resumed = runner.resume(tiny, part.run_id, on_progress=lambda p: seen.append(p.done))
    assert resumed.status == "finished" and seen[3:] == [8, 12, 16, 20, 24]
    assert resumed.summary == full.summary
    strip = [(s.key, s.extracted, s.correct, s.output) for s in resumed.samples]
    assert strip == [(s.key, s.extracted, s.correct, s.output) for s in full.samples]
    # A finished run resumed again does nothing more.
    assert runner.resume(tiny, part.run_id).summary == full.summary
    assert len(runner.store.samples(part.run_id)) == 24


def test_resume_needs_the_same_model(runner, tiny):
    run = runner.run(tiny, EvalRequest("mmlu", limit=2, shots=0), cancel=_set())
    tiny.info.quant, saved = "bf16", tiny.info.quant
    try:
        with pytest.raises(LabError, match="resume it with the same model"):
            runner.resume(tiny, run.run_id)
    finally:
        tiny.info.quant = saved


def test_gen_mode_records_the_rendered_prompt_and_unparseable_answers(runner, tiny):
    res = runner.run(tiny, EvalRequest("ceval", mode="gen", limit=3, max_new_tokens=6))
    assert res.status == "finished" and len(res.samples) == 3
    for s in res.samples:
        assert s.prompt.startswith("<|im_start|>") and s.prompt.endswith("<|im_start|>assistant\n")
        assert "以下是中国关于" in s.prompt
        assert s.correct == (s.extracted == s.gold)
        assert s.detail["unparseable"] == (s.extracted is None)
    assert res.summary["overall"]["unparseable"] == sum(s.extracted is None for s in res.samples)


def _set() -> threading.Event:
    e = threading.Event()
    e.set()
    return e


def test_several_samples_per_task_give_pass_at_k_for_each_k_up_to_n(runner, tiny):
    res = runner.run(tiny, EvalRequest("humaneval", subjects=["0", "1"], samples_per_task=2, temperature=0.8,
                                       max_new_tokens=8, workers=2))
    assert [s.key for s in res.samples] == ["HumanEval/0#0", "HumanEval/0#1", "HumanEval/1#0", "HumanEval/1#1"]
    overall = res.summary["overall"]
    assert (overall["tasks"], overall["samples"]) == (2, 4)
    assert "pass@1" in overall and "pass@10" not in overall  # k <= n only
    assert all(s.detail["status"] in ("passed", "failed", "timeout") for s in res.samples)
