"""lab.compare and lab.votes: checking variants, running them in one batch, the word diff, variant sets in
YAML, exports, the vote store and its tally, and variants on a benchmark through the evaluation runner."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from lab import compare
from lab.backend import SamplingParams
from lab.compare import Comparison, Pane, Variant, parse_variants, word_diff, word_diff_html
from lab.errors import LabError
from lab.eval.runner import EvalRequest, Runner
from lab.eval.store import RunStore
from lab.prompts import prompts_dir, system_presets
from lab.votes import VoteStore

TWO = [{"name": "plain"}, {"name": "story", "system": "Concise", "template": "Answer as a story: {input}",
                           "temperature": 0, "max_new_tokens": 16}]


# ---- variants -----------------------------------------------------------------------------------
def test_variants_take_presets_templates_and_defaults():
    a, b = parse_variants(TWO)
    assert a.system == "" and a.template == "{input}" and a.params() == SamplingParams()
    assert b.system == system_presets()["Concise"] and b.preset == "Concise"
    assert b.messages("Why {braces}?") == [{"role": "system", "content": b.system},
                                           {"role": "user", "content": "Answer as a story: Why {braces}?"}]
    assert b.params().greedy and b.params().max_new_tokens == 16
    unnamed = parse_variants(json.dumps([{}, {"seed": -1}, {"seed": 7}]))
    assert [v.name for v in unnamed] == ["A", "B", "C"] and [v.seed for v in unnamed] == [None, None, 7]
    assert a.fingerprint != b.fingerprint and a.key.startswith("plain #")
    edited = Variant(**{**b.to_dict(), "name": "renamed"})
    assert edited.fingerprint == b.fingerprint  # the name is not part of what is compared


@pytest.mark.parametrize("items, message", [
    ([{"name": "only"}], "Compare takes 2 to 4 variants, not 1"),
    ([{}] * 5, "Compare takes 2 to 4 variants, not 5"),
    ([{}, {"template": "no slot"}], r"Variant 'B' has a template without an \{input\} slot"),
    ([{}, {"temperature": -1}], "Variant 'B' has an invalid sampling setting: temperature must be >= 0"),
    ([{}, {"top_p": 0}], r"invalid sampling setting: top_p must be in \(0, 1\]"),
    ([{}, {"max_new_tokens": 0}], "max_new_tokens must be >= 1"),
    ([{}, {"top_k": 2.5}], "top_k must be a whole number"),
    ([{}, {"temperature": "hot"}], "invalid sampling setting"),
    ([{"name": "x"}, {"name": "x"}], "Two variants are named 'x'"),
    ([{}, {"colour": "red"}], "Variant 2 has unknown setting"),
    ([{}, {"preset": "Nope"}], "names the preset 'Nope'"),
    ("[{", "The variants are not valid JSON"),
    ({"name": "a"}, "The variants must be a list"),
])
def test_bad_variants_are_one_sentence(items, message):
    with pytest.raises(LabError, match=message):
        parse_variants(items)


def test_empty_input_is_refused():
    with pytest.raises(LabError, match="The input is empty"):
        compare.check_input("  \n")


# ---- diff ---------------------------------------------------------------------------------------
def test_word_diff_marks_insertions_and_deletions():
    assert word_diff("the quick brown fox", "the slow brown fox jumps") == [
        ("=", "the "), ("-", "quick"), ("+", "slow"), ("=", " brown fox"), ("+", " jumps")]
    assert ("+", "好") in word_diff("你好吗", "你好好吗")  # Chinese is compared character by character
    html = word_diff_html("a <b> c", "a <i> c d", "left", "right")
    assert "<del" in html and "<ins" in html and "&lt;" in html and "<b>" not in html and "<i>" not in html
    assert "1 word removed, 2 words added" in html


# ---- variant sets ---------------------------------------------------------------------------------
def test_shipped_sets_load():
    names = compare.list_sets()
    assert {"concise-vs-default", "step-by-step"} <= set(names)
    for name in names:
        description, variants = compare.load_set(name)
        assert description and 2 <= len(variants) <= 4


def test_save_and_load_a_set(tmp_path, monkeypatch):
    shutil.copy(prompts_dir() / "system.yaml", tmp_path / "system.yaml")
    monkeypatch.setenv("LAB_PROMPTS_DIR", str(tmp_path))
    variants = parse_variants(TWO + [{"name": "中文", "system": "Free text: {not a slot}", "seed": 3,
                                      "template": "{input}\n\n请用中文回答。"}])
    path = compare.save_set("my set", variants, "three ways")
    assert path == tmp_path / "compare" / "my set.yaml" and "Concise" in path.read_text(encoding="utf-8")
    assert compare.list_sets() == ["my set"]
    description, loaded = compare.load_set("my set")
    assert description == "three ways" and loaded == variants
    with pytest.raises(LabError, match="Name the variant set"):
        compare.save_set("../escape", variants)
    with pytest.raises(LabError, match="There is no variant set 'gone'"):
        compare.load_set("gone")
    (tmp_path / "compare" / "broken.yaml").write_text("variants: {a: 1}", encoding="utf-8")
    with pytest.raises(LabError, match="needs a list under 'variants'"):
        compare.load_set("broken")


# ---- running, exporting, voting -------------------------------------------------------------------
def test_variants_run_in_one_batched_generation(tiny, monkeypatch):
    calls = []
    real = tiny.model.generate

    def counting(*args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny.model, "generate", counting)
    variants = parse_variants([{**TWO[0], "max_new_tokens": 24}, TWO[1],
                               {"name": "hot", "temperature": 1.5, "seed": 2, "max_new_tokens": 16}])
    partial = 0  # updates where at least two panes hold text and no pane has ended yet
    for panes in compare.run_variants(tiny, "Why is the sky blue?", variants):
        partial += sum(bool(p.text) for p in panes) >= 2 and not any(p.stats for p in panes)
    assert len(calls) == 1 and calls[0][0] == 3, "the three variants are one generate() call of batch 3"
    assert partial >= 1, "the panes grow together"
    assert all(p.stats and p.text for p in panes)
    alone = tiny.generate([variants[1].messages("Why is the sky blue?")], variants[1].params())[0].text
    assert panes[1].text == alone  # the greedy variant reads as if generated by itself


def comparison(winner=None, voted=True, n=2) -> Comparison:
    variants = parse_variants([{"name": "plain"}, {"name": "story", "template": "A story: {input}"},
                               {"name": "third", "temperature": 0}][:n])
    c = Comparison.from_panes("hi", variants, [Pane(f"out {i}") for i in range(n)], order=list(range(n))[::-1])
    c.vote, c.voted = winner, voted
    return c


def test_exports_hold_variants_outputs_and_the_vote():
    c = comparison(winner=1)
    record = json.loads(c.to_json())
    assert record["format"] == "qwen-lab.compare/1" and record["vote"] == "story"
    assert [v["output"] for v in record["variants"]] == ["out 0", "out 1"] and record["blind_order"] == [1, 0]
    md = c.to_markdown()
    assert "## Input" in md and "A story: {input}" in md and "vote: story wins" in md and "out 1" in md


def test_votes_are_kept_in_lab_db_and_tallied_per_pair_across_restarts(tmp_path):
    RunStore.open(tmp_path)  # the evaluation history is already there: the votes table joins it
    store = VoteStore.open(tmp_path)
    store.record(comparison(winner=0))
    store.record(comparison(winner=1))
    store.record(comparison(winner=1))
    store.record(comparison(winner=None))
    store.record(comparison(winner=2, n=3))  # third beats both; plain vs story learns nothing
    with pytest.raises(LabError, match="Vote for a pane or a tie first"):
        store.record(comparison(voted=False))
    again = VoteStore.open(tmp_path)  # a restart
    tally = {(t.a, t.b): (t.a_wins, t.b_wins, t.ties) for t in again.tally()}
    keys = [v.key for v in comparison(n=3).variants]
    assert tally[(keys[0], keys[1])] == (1, 2, 1)
    assert tally[tuple(sorted([keys[0], keys[2]]))] in ((0, 1, 0), (1, 0, 0))
    with sqlite3.connect(tmp_path / "lab.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        row = db.execute("SELECT input, winner, winner_key, outputs, variants, created_at FROM votes "
                         "ORDER BY id LIMIT 1").fetchone()
    assert {"runs", "samples", "votes"} <= tables
    assert row[0] == "hi" and row[1] == 0 and row[2] == keys[0] and json.loads(row[3]) == ["out 0", "out 1"]
    assert json.loads(row[4])[1]["template"] == "A story: {input}" and row[5] > 0


# ---- variants on a benchmark ------------------------------------------------------------------------
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
    rows = compare.bench_variants(tiny, variants, "mmlu", limit=20, seed=5, max_new_tokens=8, store=store,
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
    table = compare.bench_table(rows)
    assert [t[0] for t in table] == ["plain", "letter-only"] and all(t[3] == 20 and t[6] for t in table)
    assert all(t[1] == round(100 * r.summary["overall"]["accuracy"], 1) for t, r in zip(table, rows))
    # A cut-off run resumes with the variant's prompts: its request, system and template included, is stored.
    first = []
    cancel = __import__("threading").Event()
    req = EvalRequest(**{**reqs[1].to_dict(), "limit": 10, "batch_size": 8})
    cut = Runner(store).run(tiny, req, lambda p: (first.append(p), p.done and cancel.set()), cancel)
    assert cut.status == "cancelled" and len(cut.samples) == 8
    done = Runner(store).resume(tiny, cut.run_id)
    assert done.status == "finished" and len(done.samples) == 10
    assert all("Reply with the letter only." in s.prompt for s in done.samples)
    with pytest.raises(LabError, match="limit of at least 1"):
        compare.bench_variants(tiny, variants, "mmlu", limit=0, store=store)
