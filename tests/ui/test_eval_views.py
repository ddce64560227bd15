"""The Evaluate tab's views of hostile sample text: lone surrogates and NUL shown escaped, megabytes cut with a note,
and nothing the page's UTF-8 JSON cannot carry (a raw lone surrogate makes its encoder raise)."""

import json

from lab.eval import report
from lab.eval.store import RunStore, Sample
from lab.ui import eval_views as views

BIG = "# " + "z" * (2 << 20) + "\n    return 0\n"


def hostile_run(tmp_path):
    store = RunStore.open(tmp_path)
    run_id = store.create_run(benchmark="humaneval", mode="score", model="file:/tmp/s-\udcff.jsonl", params={},
                              n_total=3)
    samples = [
        Sample("HumanEval/0#0", 0, "HumanEval/0", "def f():\n", "    return '\ud800'\n", "    return '\ud800'\n", None,
               False, {"status": "failed", "result": "UnicodeEncodeError", "stdout": "\ud800\x00"}, 0.1),
        Sample("HumanEval/1#0", 1, "HumanEval/1", "def g():\n", "a\x00b", "a\x00b", None, False,
               {"status": "error", "result": "the check raised RecursionError: too deep"}, 0.1),
        Sample("HumanEval/2#0", 2, "HumanEval/2", "def h():\n", BIG, BIG, None, True,
               {"status": "passed", "result": "passed"}, 0.1),
    ]
    store.add_samples(run_id, samples)
    return store, store.get(run_id), store.samples(run_id)


def carried(text: str) -> str:
    text.encode("utf-8")  # raises on a raw lone surrogate, as the page's JSON would
    json.dumps(text, ensure_ascii=False).encode("utf-8")
    return text


def test_one_sample_shows_surrogates_and_nul_escaped_with_its_verdict_and_reason(tmp_path):
    store, run, samples = hostile_run(tmp_path)
    first = carried(views.sample_text(samples[0]))
    assert "return '\\ud800'" in first and "\\ud800\\u0000" in first  # the detail's JSON escapes NUL itself
    assert "failed: UnicodeEncodeError" in first
    second = carried(views.sample_text(samples[1]))
    assert "a\\x00b" in second and "\x00" not in second
    assert "error: the check raised RecursionError: too deep" in second


def test_a_megabyte_field_is_cut_with_a_note_and_stays_whole_in_the_store(tmp_path):
    store, run, samples = hostile_run(tmp_path)
    text = carried(views.sample_text(samples[2]))
    assert len(text) < 4 * report.SHOWN_CHARS
    assert f"{len(BIG) - report.SHOWN_CHARS:,} more characters not shown" in text
    assert "python -m lab.eval export" in text
    assert store.sample(run.id, "HumanEval/2#0").output == BIG


def test_the_tables_and_labels_show_escapes_only(tmp_path):
    store, run, samples = hostile_run(tmp_path)
    frame = views.sample_frame(samples, wrong_only=False)
    cells = [carried(str(c)) for row in frame.values.tolist() for c in row]
    assert "return '\\ud800'" in cells and "a\\x00b" in cells
    assert max(len(c) for c in cells) <= 90  # the 2 MB completion is a short cell
    history = views.history_frame(store)
    assert carried(history.loc[0, "model"]) == "file:/tmp/s-\\udcff.jsonl"
    assert "\\udcff" in carried(views.run_choices(store)[0][0])
    assert "\\udcff" in carried(views.headline(run, 3, views.summary_of(store, run)))


def test_the_cli_text_of_a_hostile_run_prints_to_a_strict_utf8_terminal(tmp_path):
    store, run, samples = hostile_run(tmp_path)
    summary = views.summary_of(store, run)
    assert "\\udcff" in carried(report.summary_text(run, summary))
    other = store.get(store.create_run(benchmark="humaneval", mode="score", model="m\x1b[2J", params={}, n_total=3))
    flipped = [Sample(s.key, s.position, s.subject, s.prompt, s.output, "ok", None, not s.correct, s.detail)
               for s in samples]
    delta = carried(report.delta_text(report.run_delta(run, samples, other, flipped), run, other))
    assert "A=return '\\ud800'" in delta and "A=a\\x00b" in delta and "\\x1b[2J" in delta and "\x1b" not in delta
    assert carried(report.table(["model"], [[run.model]])).endswith("\\udcff.jsonl")
