"""A scorer that never falls over: one bad sample (a check that raises, a malformed result, a completion with lone
surrogates, NUL or megabytes) ends as that sample's "error" or verdict, and the run still finishes."""

import json
import sqlite3
import threading

import pytest

from lab.eval import checks, sandbox
from lab.eval.runner import EvalRequest, Runner
from lab.eval.store import RunStore
from tests.conftest import run_cli

OK = sandbox.ExecResult("passed", "passed", 0, "", "", 0.01)


def fake_checks(monkeypatch, behave):
    """sandbox.run_checks (what the scorer calls) replaced by one with its contract and its old failing: each
    job's result is `behave(prompt, completion, entry_point)`, and when that raises, the whole call raises (as
    run_checks did when one job's check raised), whatever the sandbox itself now does about it."""
    calls = []

    def run_checks(jobs, limits=sandbox.Limits(), workers=None, on_result=None, cancel=None):
        results = [None] * len(jobs)
        for i, (prompt, completion, test, entry_point) in enumerate(jobs):
            if cancel is not None and cancel.is_set():
                break
            calls.append(completion)
            results[i] = behave(prompt, completion, entry_point)
            if on_result is not None:
                on_result(i, results[i])
        return results

    monkeypatch.setattr(sandbox, "run_checks", run_checks)
    return calls


def boom(prompt, completion, entry_point):
    if "BOOM" in completion:
        raise RecursionError("maximum recursion depth exceeded while calling a Python object")
    return OK


def jobs(*completions):
    return [("def f():\n", c, "def check(f):\n    pass\n", "f") for c in completions]


def test_a_check_that_raises_is_that_jobs_error_and_every_other_job_still_gets_its_result(monkeypatch):
    fake_checks(monkeypatch, boom)
    seen = []
    results = checks.check_all(jobs("a", "b", "BOOM", "c", "d"), sandbox.Limits(), workers=2,
                               on_result=lambda i, r: seen.append(i))
    assert [r.status for r in results] == ["passed", "passed", "error", "passed", "passed"]
    assert results[2].detail == ("the check raised RecursionError: maximum recursion depth exceeded while calling a "
                                 "Python object")
    assert sorted(seen) == [0, 1, 2, 3, 4]  # on_result once per job, the failed one included


@pytest.mark.parametrize("bad, why", [
    (None, "returned NoneType, not a result"),
    ({"status": "passed"}, "returned dict, not a result"),
    (sandbox.ExecResult("ok", "fine", 0, "", "", 0.1), "unknown status 'ok'"),
    (sandbox.ExecResult("passed", None, 0, "", "", 0.1), "detail or output is not text"),
    (sandbox.ExecResult("failed", "x", "1", "", "", 0.1), "exit code '1'"),
    (sandbox.ExecResult("failed", "x", 1, "", "", None), "duration None"),
])
def test_a_malformed_result_is_an_error_with_a_reason_never_a_pass(monkeypatch, bad, why):
    fake_checks(monkeypatch, lambda p, c, e: bad if c == "bad" else OK)
    results = checks.check_all(jobs("ok", "bad", "ok"), sandbox.Limits(), workers=1)
    assert [r.status for r in results] == ["passed", "error", "passed"]
    assert why in results[1].detail and not results[1].passed


def test_a_reason_over_several_lines_is_shown_on_one(monkeypatch):
    fake_checks(monkeypatch, lambda p, c, e: sandbox.ExecResult("failed", "Traceback:\n  line 1\nValueError", 1, "",
                                                              "", 0))
    assert checks.check_all(jobs("x"), sandbox.Limits())[0].detail == "Traceback: line 1 ValueError"


def test_what_the_caller_raises_is_not_taken_for_a_jobs_failure(monkeypatch):
    calls = fake_checks(monkeypatch, lambda p, c, e: OK)

    def on_result(i, r):
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        checks.check_all(jobs("a", "b"), sandbox.Limits(), workers=1, on_result=on_result)
    assert len(calls) <= 2  # not checked over again as if a job had raised


def test_jobs_cancel_kept_from_starting_stay_none(monkeypatch):
    cancel = threading.Event()

    def behave(prompt, completion, entry_point):
        cancel.set()
        return OK

    fake_checks(monkeypatch, behave)
    results = checks.check_all(jobs("a", "b", "c"), sandbox.Limits(), workers=1, cancel=cancel)
    assert results[0] is OK and results[1:] == [None, None]


def samples_file(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for tid, completion in rows:
            f.write(json.dumps({"task_id": tid, "completion": completion}) + "\n")
    return path


def test_score_file_with_a_check_that_raises_finishes_and_saves_that_sample_as_error(monkeypatch, tmp_path, data_dir):
    calls = fake_checks(monkeypatch, boom)
    path = samples_file(tmp_path / "s.jsonl", [("HumanEval/0", "    return 0\n"), ("HumanEval/1", "BOOM"),
                                               ("HumanEval/2", "    return 2\n")])
    store = RunStore.open(tmp_path / "runs")
    result = Runner(store).score_file(str(path), EvalRequest("humaneval", workers=2))
    assert result.status == "finished" and store.get(result.run_id).status == "finished"
    by_key = {s.key: s for s in store.samples(result.run_id)}
    assert set(by_key) == {"HumanEval/0#0", "HumanEval/1#0", "HumanEval/2#0"}
    bad = by_key["HumanEval/1#0"]
    assert (bad.correct, bad.detail["status"], bad.extracted) == (False, "error", "BOOM")
    assert bad.detail["result"].startswith("the check raised RecursionError")
    assert by_key["HumanEval/0#0"].correct and by_key["HumanEval/2#0"].correct
    assert result.summary["statuses"] == {"passed": 2, "error": 1}
    assert calls.count("BOOM") >= 1


def test_a_model_run_with_a_check_that_raises_finishes_with_that_sample_as_error(monkeypatch, tmp_path, tiny):
    def behave(prompt, completion, entry_point):
        if entry_point == "separate_paren_groups":  # HumanEval/1's, whatever the random model wrote
            raise OSError("status pipe: bad record")
        return OK

    fake_checks(monkeypatch, behave)
    store = RunStore.open(tmp_path)
    res = Runner(store).run(tiny, EvalRequest("humaneval", subjects=["0", "1", "2"], max_new_tokens=4, workers=1,
                                              mode="completion"))
    assert res.status == "finished" and store.get(res.run_id).status == "finished" and len(res.samples) == 3
    assert [s.detail["status"] for s in res.samples] == ["passed", "error", "passed"]
    assert res.samples[1].detail["result"] == "the check raised OSError: status pipe: bad record"
    assert not res.samples[1].correct and res.summary["statuses"] == {"passed": 2, "error": 1}


# ---- end to end: the CLI on a hostile samples file, in the real sandbox ---------------------------------------------
NESTED = ("    import os\n    for _ in range(3000):\n        os.mkdir('d')\n        os.chdir('d')\n    return None\n")
HOSTILE = [
    ("HumanEval/0", "    return '\ud800'\n"),  # a lone surrogate, as json writes it: "\ud800"
    ("HumanEval/1", "    return 'a\x00b'\n"),  # NUL
    ("HumanEval/2", "    # " + "x" * (2 << 20) + "\n    return 0\n"),  # two megabytes
    ("HumanEval/3", "\udcff"),  # a completion that is only a lone surrogate
    ("HumanEval/4", NESTED),  # 3,000 nested folders left for the clean-up
    ("HumanEval/5", "\u2028    return 1\n"),  # a line separator str.splitlines() would cut the JSON line at
]


@pytest.mark.slow
def test_cli_scores_a_hostile_samples_file_to_the_end_and_stores_every_string_exactly(tmp_path, data_dir):
    from lab.eval.data import read_problems

    canonical = {p.task_id: p.canonical_solution for p in read_problems(data_dir / "humaneval" / "HumanEval.jsonl.gz")}
    rows = HOSTILE + [("HumanEval/6", canonical["HumanEval/6"]), ("HumanEval/7", canonical["HumanEval/7"])]
    # A file name that is not UTF-8 comes into argv as a lone surrogate (surrogateescape), and into the run's model.
    path = samples_file(tmp_path / "samples-\udcff.jsonl", rows)
    runs = tmp_path / "runs"
    r = run_cli("-m", "lab.eval", "humaneval", "--score", str(path), "--runs-dir", str(runs), "--timeout", "10",
                env={"LAB_DATA_DIR": str(data_dir)}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "8 tasks" in r.stdout
    assert "file:" in r.stdout and "\\udcff" in r.stdout  # the file name, shown escaped
    store = RunStore.open(runs)
    run = store.runs()[0]
    assert run.status == "finished" and run.model == f"file:{path}" and run.params["file"] == str(path)
    samples = {s.key: s for s in store.samples(run.id)}
    assert set(samples) == {f"{tid}#0" for tid, _ in rows}
    for tid, completion in rows:
        s = samples[f"{tid}#0"]
        assert s.extracted == completion and s.output == completion  # stored whole and exact
        assert s.detail["status"] in checks.STATUSES and s.detail["result"].strip()  # a verdict and a reason
        assert "\n" not in s.detail["result"]
    assert samples["HumanEval/6#0"].correct and samples["HumanEval/7#0"].correct  # the normal ones still pass
    assert run.summary["overall"]["samples"] == len(rows)

    # The export writes every one of those strings, and reads back equal.
    out = run_cli("-m", "lab.eval", "export", run.id, "--out", str(tmp_path), "--runs-dir", str(runs))
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / f"{run.id}.samples.jsonl", encoding="utf-8") as f:
        exported = {row["task_id"]: row["completion"] for row in map(json.loads, f)}
    assert exported == dict(rows)
    listed = run_cli("-m", "lab.eval", "list", "--runs-dir", str(runs))
    assert listed.returncode == 0 and "\\udcff" in listed.stdout, listed.stderr[-3000:]
