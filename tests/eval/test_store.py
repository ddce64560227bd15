"""The run store: a real SQLite file, batch transactions, readers while a writer works."""

import sqlite3

import pytest

from lab.errors import LabError
from lab.eval.store import RunStore, Sample


def sample(i: int, correct: bool = True) -> Sample:
    return Sample(f"anatomy/{i}", i, "anatomy", f"prompt {i}", "A:-1.0", "A", "A" if correct else "B", correct,
                  {"logprobs": {"A": -1.0}}, 0.01)


def test_a_run_and_its_samples_round_trip(tmp_path):
    store = RunStore.open(tmp_path)
    run_id = store.create_run(benchmark="mmlu", mode="logprob", model="tiny-random", quant="fp32",
                              params={"request": {"limit": 3}}, n_total=3, shots=5, seed=7, data_source="local:x",
                              versions={"torch": "2"})
    store.add_samples(run_id, [sample(0), sample(1, correct=False)])
    assert store.done_keys(run_id) == {"anatomy/0", "anatomy/1"}
    got = store.samples(run_id)
    assert [s.key for s in got] == ["anatomy/0", "anatomy/1"]
    assert got[1].correct is False and got[0].detail == {"logprobs": {"A": -1.0}}
    assert store.sample(run_id, "anatomy/1") == got[1] and store.sample(run_id, "anatomy/9") is None
    store.finish(run_id, "finished", {"overall": {"accuracy": 0.5}})
    run = store.get(run_id)
    assert (run.status, run.shots, run.seed, run.summary) == ("finished", 5, 7, {"overall": {"accuracy": 0.5}})
    assert run.ended_at >= run.started_at and run.params == {"request": {"limit": 3}}
    assert (tmp_path / "lab.db").is_file()
    # It is a plain SQLite file anyone can query.
    with sqlite3.connect(tmp_path / "lab.db") as c:
        assert c.execute("SELECT count(*) FROM samples WHERE run_id=?", (run_id,)).fetchone() == (2,)


def test_writing_a_sample_twice_does_not_duplicate_it(tmp_path):
    store = RunStore.open(tmp_path)
    run_id = store.create_run(benchmark="mmlu", mode="logprob", model="m", params={}, n_total=1)
    store.add_samples(run_id, [sample(0)])
    store.add_samples(run_id, [sample(0)])
    assert len(store.samples(run_id)) == 1


def test_a_batch_is_written_whole_or_not_at_all(tmp_path):
    store = RunStore.open(tmp_path)
    run_id = store.create_run(benchmark="mmlu", mode="logprob", model="m", params={}, n_total=3)
    bad = sample(2)
    bad.prompt = None  # violates NOT NULL inside the transaction, after two rows went in
    with pytest.raises(sqlite3.IntegrityError):
        store.add_samples(run_id, [sample(0), sample(1), bad])
    assert store.done_keys(run_id) == set()


def test_runs_list_newest_first_and_unknown_run_is_one_sentence(tmp_path):
    store = RunStore.open(tmp_path)
    a = store.create_run(benchmark="mmlu", mode="logprob", model="m", params={}, n_total=1)
    b = store.create_run(benchmark="ceval", mode="gen", model="m", params={}, n_total=1)
    assert {r.id for r in store.runs()} == {a, b}
    assert [r.id for r in store.runs("ceval")] == [b]
    with pytest.raises(LabError, match="No run 'nope'"):
        store.get("nope")


def test_an_unwritable_runs_dir_is_one_sentence(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LabError, match="cannot be opened"):
        RunStore.open(blocker / "runs")


def test_a_running_run_whose_process_is_gone_reads_as_interrupted(tmp_path):
    import subprocess
    import sys

    store = RunStore.open(tmp_path)
    run_id = store.create_run(benchmark="mmlu", mode="logprob", model="m", params={}, n_total=1)
    assert store.get(run_id).state == "running"  # this very process runs it
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with sqlite3.connect(tmp_path / "lab.db") as c:
        owner = store.get(run_id).owner.rsplit(":", 1)[0] + ":" + gone.stdout.strip()
        c.execute("UPDATE runs SET owner=? WHERE id=?", (owner, run_id))
    assert store.get(run_id).state == "interrupted" and store.get(run_id).status == "running"
    store.finish(run_id, "finished", {})
    assert store.get(run_id).state == "finished"


# Strings a model or a samples file can hold, each of which the store once refused or cut short.
HOSTILE = {
    "lone high surrogate": "x = '\ud800'",
    "lone low surrogate": "\udcff tail",
    "two lone surrogates side by side": "\ud83d\ude00",  # two code points, not the emoji JSON would make of them
    "NUL": "a\x00b\x00",
    "only NUL": "\x00",
    "megabytes": "# " + "x" * (2 << 20) + "\ud800\x00",
    "plain": "def f():\n    return '中文'\n",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_any_str_in_any_text_field_reads_back_equal(tmp_path, name):
    text = HOSTILE[name]
    store = RunStore.open(tmp_path)
    params = {"file": text, "request": {"system": text}, text: [text, 1]}
    run_id = store.create_run(benchmark="humaneval", mode="score", model=f"file:{text}", params=params, n_total=1,
                              subset=text, quant=text, data_source=text, versions={"v": text})
    s = Sample(f"HumanEval/0#{text}", 0, text, text, text, text, text, False,
               {"status": "error", "stdout": text, "nested": {"list": [text, text]}, text: text}, 0.5)
    store.add_samples(run_id, [s])
    store.finish(run_id, "finished", {"statuses": {text: 1}})
    assert store.samples(run_id) == [s]
    assert store.sample(run_id, s.key) == s  # the key finds its row, in whatever form it was stored
    assert store.done_keys(run_id) == {s.key}
    run = store.get(run_id)
    assert (run.model, run.subset, run.quant, run.data_source) == (f"file:{text}", text, text, text)
    assert run.params == params and run.versions == {"v": text} and run.summary == {"statuses": {text: 1}}
    store.add_samples(run_id, [s])  # written again (a resumed batch): replaced, not doubled
    assert len(store.samples(run_id)) == 1


def test_text_sqlite_can_hold_stays_readable_text_in_the_file(tmp_path):
    store = RunStore.open(tmp_path)
    run_id = store.create_run(benchmark="mmlu", mode="logprob", model="m", params={}, n_total=2)
    store.add_samples(run_id, [sample(0), Sample("anatomy/1", 1, "anatomy", "p\x00", "\ud800", "A", "A", True)])
    with sqlite3.connect(tmp_path / "lab.db") as c:
        kinds = c.execute("SELECT typeof(prompt), typeof(output) FROM samples ORDER BY position").fetchall()
        assert kinds == [("text", "text"), ("blob", "blob")]
        assert c.execute("SELECT prompt FROM samples WHERE key='anatomy/0'").fetchone() == ("prompt 0",)


def test_save_keeps_the_batch_when_one_sample_cannot_be_written(tmp_path):
    store = RunStore.open(tmp_path)
    run_id = store.create_run(benchmark="mmlu", mode="logprob", model="m", params={}, n_total=3)
    bad = sample(1)
    bad.detail = {"logprobs": {1j}}  # a set of complex numbers: no JSON for it
    saved = store.save(run_id, [sample(0), bad, sample(2)])
    assert store.samples(run_id) == saved and [s.key for s in saved] == ["anatomy/0", "anatomy/1", "anatomy/2"]
    assert saved[0] == sample(0) and saved[2] == sample(2)
    assert saved[1].correct is False and saved[1].detail["status"] == "error"
    assert saved[1].detail["result"] == "could not be saved (TypeError: Object of type set is not JSON serializable)"


def test_save_still_raises_when_the_store_cannot_write_at_all(tmp_path):
    store = RunStore.open(tmp_path)
    run_id = store.create_run(benchmark="mmlu", mode="logprob", model="m", params={}, n_total=1)
    other = sqlite3.connect(tmp_path / "lab.db", timeout=0)
    other.execute("BEGIN EXCLUSIVE")  # another writer holds the file
    store.db.conn().execute("PRAGMA busy_timeout=0")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.save(run_id, [sample(0)])
    finally:
        other.rollback()
        other.close()
    assert store.save(run_id, [sample(0)]) == [sample(0)]
