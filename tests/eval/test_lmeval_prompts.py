"""Our default logprob prompts are lm-evaluation-harness's, byte for byte, for every question.

lm-eval renders its own `mmlu`, `ceval-valid` and `cmmlu` tasks (5 shots, as `--num_fewshot 5` gives) over
the local CSVs (tests/eval/lmeval_tasks.py says how, and what is replaced to run offline); each request's
context, from the description through the shots to the question's cue, must equal our prompt, and its
continuations our scored letters (" A" ... " D"). 14,042 + 1,346 + 11,582 questions.
"""

from __future__ import annotations

import pytest

from lab.eval.kinds.choice import continuations, logprob_prompt
from lab.eval.runner import EvalRequest, Runner
from lab.eval.store import RunStore
from tests.eval.lmeval_tasks import harness_requests, harness_tasks

pytestmark = pytest.mark.slow

COUNTS = {"mmlu": 14042, "ceval": 1346, "cmmlu": 11582}


def _first_difference(a: str, b: str) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"at character {i}: ours {a[max(0, i - 40):i + 40]!r}, lm-eval's {b[max(0, i - 40):i + 40]!r}"


def _plan(benchmark, data_dir, tmp_path, **kw):
    return Runner(RunStore.open(tmp_path)).plan(EvalRequest(benchmark, data_dir=str(data_dir), **kw))


@pytest.mark.parametrize("benchmark", list(COUNTS))
def test_every_default_prompt_is_lm_evals_byte_for_byte(benchmark, data_dir, tmp_path):
    theirs = harness_requests(benchmark, data_dir)
    plan = _plan(benchmark, data_dir, tmp_path)  # the spec's default: 5 shots from dev
    assert plan.shots == 5 and len(plan.items) == len(theirs) == COUNTS[benchmark]
    letters = continuations(plan.spec.choices, plan.spec.prompts)
    wrong = []
    for it in plan.items:
        requests = theirs[it.key]
        assert [cont for _, cont in requests] == letters, f"{it.key}: lm-eval scores {[c for _, c in requests]}"
        assert len({ctx for ctx, _ in requests}) == 1
        if it.prompt != requests[0][0]:
            wrong.append(f"{it.key} {_first_difference(it.prompt, requests[0][0])}")
    assert not wrong, f"{len(wrong)} of {len(plan.items)} prompts differ from lm-eval's; first: {wrong[0]}"


def test_stripping_the_options_would_break_2187_mmlu_prompts(data_dir, tmp_path):
    """The comparison sees one character: lm-eval keeps an option's trailing space, and 2,187 five-shot
    prompts (all of professional_law and professional_psychology, through their examples) hold one."""
    theirs = harness_requests("mmlu", data_dir)
    plan = _plan("mmlu", data_dir, tmp_path)
    stripped = {**plan.spec.prompts, "strip": ["question", "options"]}
    ds_questions = {it.key: it.payload for it in plan.items}
    from lab.eval.data import Dataset

    ds = Dataset(plan.spec, data_dir)
    differ = {key for key, q in ds_questions.items()
              if logprob_prompt(q, ds.questions(q.subject, "dev")[:5], ds.subject_name(q.subject), stripped,
                                plan.spec.choices) != theirs[key][0][0]}
    assert len(differ) == 2187
    for subject in ("professional_law", "professional_psychology"):
        assert {k for k in ds_questions if k.startswith(subject + "/")} <= differ


def test_lm_eval_tasks_use_first_n_shots_from_dev_and_the_space_delimiters(data_dir):
    """What the byte test relies on, stated: lm-eval takes the first k dev rows in order (no seeded draw),
    separates shots by a blank line and the letter by one space; only the benchmark's description varies."""
    for benchmark in COUNTS:
        tasks = harness_tasks(benchmark, data_dir, num_fewshot=0)
        assert len(tasks) == {"mmlu": 57, "ceval": 52, "cmmlu": 67}[benchmark]
        for task in tasks:
            cfg = task.config
            assert task.sampler.__class__.__name__ == "FirstNSampler" and cfg.fewshot_split == "dev"
            assert (cfg.target_delimiter, cfg.fewshot_delimiter) == (" ", "\n\n")


def test_the_official_templates_differ_from_lm_evals_where_the_official_code_does(data_dir, tmp_path):
    """`--template official` is each benchmark's own repository's prompt, not lm-eval's: checked on 200 real
    questions a benchmark against lm-eval's context with the documented differences put in. Questions whose
    text (or whose shots' text) has surrounding whitespace or a blank line are left out: there the official
    prompt also differs by not stripping, which a string replacement cannot mirror."""
    from lab.eval.data import Dataset

    for benchmark in COUNTS:
        theirs = harness_requests(benchmark, data_dir)
        plan = _plan(benchmark, data_dir, tmp_path, prompt_template="official", limit=200)
        assert plan.request.prompt_template == "official"
        ds = Dataset(plan.spec, data_dir)
        checked = 0
        for it in plan.items:
            texts = [q.question for q in [it.payload, *ds.questions(it.subject, "dev")[:5]]]
            if any(t != t.strip() or "\n\n" in t for t in texts):
                continue
            ctx = theirs[it.key][0][0]
            if benchmark == "mmlu":  # "about  {subject}" (format_subject's leading space)
                expect = ctx.replace("with answers) about ", "with answers) about  ", 1)
            elif benchmark == "ceval":  # "考试" in the header, the letter right after "答案："
                expect = ctx.replace("的单项选择题", "考试的单项选择题", 1).replace("答案： ", "答案：")
            else:  # "题目：" before each question, "答案是：" with the letter right after it
                expect = ctx.replace("\n\n", "\n\n题目：").replace("答案： ", "答案是：")[:-len("答案：")] + "答案是："
            assert it.prompt == expect, f"{it.key} {_first_difference(it.prompt, expect)}"
            checked += 1
        assert checked >= 150, f"only {checked} {benchmark} questions checked"
        assert continuations(plan.spec.choices, plan.spec.prompts_for("official")) == (
            [" A", " B", " C", " D"] if benchmark == "mmlu" else ["A", "B", "C", "D"])
