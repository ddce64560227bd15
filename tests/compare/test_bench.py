"""Variants on a benchmark through the evaluation runner: a system prompt and template in the request, one
saved run per variant on the same seeded items, side by side, and a cut-off run that resumes."""

from __future__ import annotations

import threading

import pytest

from lab.compare import parse_variants
from lab.compare.bench import bench_table, bench_variants
from lab.errors import LabError
from lab.eval.runner import EvalRequest, Runner
from lab.eval.store import RunStore


def test_runner_takes_a_system_prompt_and_template(tmp_path, data_dir):
    runner = Runner(RunStore.open(tmp_path))
    req = EvalRequest("mmlu", mode="gen", limit=3, shots=1, system="You are a careful student.",
                      template="Question follows.\n{input}\nBe careful.")
    items = runner.plan(req).items
    prompt = items[0].prompt
    assert prompt[0] == {"role": "system", "content": "You are a careful student."}
    users = [m["content"] for m in prompt if m["role"] == "user"]
    assert len(users) == 2 and all(u.startswith("Question follows.\n") and u.endswith("\nBe careful.") for u in users)
    assert EvalRequest.from_dict(req.to_dict()) == req
    code = runner.plan(EvalRequest("humaneval", limit=2, system="", template="{input}\nNo prose.")).items[0].prompt
    assert code[0]["role"] == "user" and code[0]["content"].endswith("No prose.")
    with pytest.raises(LabError, match="applies to chat prompts only"):
        runner.plan(EvalRequest("mmlu", limit=3, system="x"))
    with pytest.raises(LabError, match=r"needs an \{input\} slot"):
        runner.plan(EvalRequest("mmlu", mode="gen", limit=3, template="no slot"))


def test_two_variants_on_20_mmlu_questions_make_two_runs_side_by_side(tiny, tmp_path, data_dir):
    store = RunStore.open(tmp_path)
    variants = parse_variants([{"name": "plain"},
                               {"name": "letter-only", "system": "Answer with one letter.",
                                "template": "{input}\nReply with the letter only."}])
    seen = []
    rows = bench_variants(tiny, variants, "mmlu", limit=20, seed=5, max_new_tokens=8, store=store,
                                  on_progress=lambda i, p: seen.append(i))
    assert [r.variant.name for r in rows] == ["plain", "letter-only"] and set(seen) == {0, 1}
    runs = [store.get(r.run_id) for r in rows]
    assert all(run.status == "finished" and run.mode == "gen" and run.n_total == 20 for run in runs)
    reqs = [EvalRequest.from_dict(run.params["request"]) for run in runs]
    assert reqs[0].system is None and reqs[1].system == "Answer with one letter."
    assert reqs[1].template == "{input}\nReply with the letter only."
    a, b = (store.samples(r.run_id) for r in rows)
    assert [s.key for s in a] == [s.key for s in b], "the same seeded questions for every variant"
    assert "Reply with the letter only." in b[0].prompt and "Reply with the letter only." not in a[0].prompt
    table = bench_table(rows)
    assert [t[0] for t in table] == ["plain", "letter-only"] and all(t[3] == 20 and t[6] for t in table)
    assert all(t[1] == round(100 * r.summary["overall"]["accuracy"], 1) for t, r in zip(table, rows))
    # A cut-off run resumes with the variant's prompts: its request, system and template included, is stored.
    first = []
    cancel = threading.Event()
    req = EvalRequest(**{**reqs[1].to_dict(), "limit": 10, "batch_size": 8})
    cut = Runner(store).run(tiny, req, lambda p: (first.append(p), p.done and cancel.set()), cancel)
    assert cut.status == "cancelled" and len(cut.samples) == 8
    done = Runner(store).resume(tiny, cut.run_id)
    assert done.status == "finished" and len(done.samples) == 10
    assert all("Reply with the letter only." in s.prompt for s in done.samples)
    with pytest.raises(LabError, match="limit of at least 1"):
        bench_variants(tiny, variants, "mmlu", limit=0, store=store)
