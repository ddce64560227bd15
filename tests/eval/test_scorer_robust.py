"""A scorer that never falls over: one bad sample (a check that raises, a malformed result, a completion with lone
surrogates, NUL or megabytes) ends as that sample's "error" or verdict, and the run still finishes."""

import json
import sqlite3

import pytest

from lab.eval import sandbox
from lab.eval.runner import EvalRequest, Runner
from lab.eval.store import RunStore
from tests.conftest import run_cli

REAL_CHECK = sandbox.check_completion


def raising_check(monkeypatch, raise_for):
    """The real sandbox, except that checking a job `raise_for(completion, entry_point)` picks raises (as a
    check that cannot start a process, or any bug, would); returns the completions checked."""
    calls = []

    def check(prompt, completion, test, entry_point, limits=sandbox.Limits()):
        calls.append(completion)
        error = raise_for(completion, entry_point)
        if error is not None:
            raise error
        return REAL_CHECK(prompt, completion, test, entry_point, limits)

    monkeypatch.setattr(sandbox, "check_completion", check)
    return calls


def boom(completion, entry_point):
    return RecursionError("maximum recursion depth exceeded\nwhile calling a Python object") \
        if "BOOM" in completion else None


def jobs(*completions):
    return [("def f():\n", c, "def check(f):\n    assert f() == 1\n", "f") for c in completions]


def test_a_check_that_raises_is_that_jobs_error_and_every_other_job_still_gets_its_verdict(monkeypatch):
    raising_check(monkeypatch, boom)
    seen = []
    results = sandbox.run_checks(jobs("    return 1\n", "    return 2\n", "BOOM", "    return 1\n"),
                                 sandbox.Limits(timeout_s=5), workers=2, on_result=lambda i, r: seen.append(i))
    assert [r.status for r in results] == ["passed", "failed", "error", "passed"]
    assert results[2].detail == ("the check raised RecursionError: maximum recursion depth exceeded while calling "
                                 "a Python object")  # one line, whatever the exception held
    assert sorted(seen) == [0, 1, 2, 3]  # on_result once per job, the failed one included


def test_a_reason_over_several_lines_is_shown_on_one():
    r = sandbox.run_checks([("def f():\n", "    raise ValueError('first\\nsecond')\n",
                             "def check(f):\n    assert f() == 1, 'one\\ntwo'\n", "f"),
                            ("def f():\n", "    return 2\n", "def check(f):\n    assert f() == 1, 'one\\ntwo'\n", "f")],
                           sandbox.Limits(timeout_s=5))
    assert [x.detail for x in r] == ["ValueError: first", "AssertionError: one"]


def test_what_the_caller_raises_is_not_taken_for_a_jobs_failure():
    def on_result(i, r):
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        sandbox.run_checks(jobs("    return 1\n", "    return 1\n"), sandbox.Limits(timeout_s=5), workers=1,
                           on_result=on_result)


def samples_file(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for tid, completion in rows:
            f.write(json.dumps({"task_id": tid, "completion": completion}) + "\n")
    return path


def test_score_file_with_a_check_that_raises_finishes_and_saves_that_sample_as_error(monkeypatch, tmp_path, data_dir):
    from lab.eval.data import read_problems

    canonical = {p.task_id: p.canonical_solution for p in read_problems(data_dir / "humaneval" / "HumanEval.jsonl.gz")}
    calls = raising_check(monkeypatch, boom)
    path = samples_file(tmp_path / "s.jsonl", [("HumanEval/0", canonical["HumanEval/0"]), ("HumanEval/1", "BOOM"),
                                               ("HumanEval/2", canonical["HumanEval/2"])])
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
    def behave(completion, entry_point):  # HumanEval/1's, whatever the random model wrote
        return OSError("status pipe: bad record") if entry_point == "separate_paren_groups" else None

    raising_check(monkeypatch, behave)
    store = RunStore.open(tmp_path)
    res = Runner(store).run(tiny, EvalRequest("humaneval", subjects=["0", "1", "2"], max_new_tokens=4, workers=1,
                                              mode="completion"))
    assert res.status == "finished" and store.get(res.run_id).status == "finished" and len(res.samples) == 3
    assert [s.detail["status"] == "error" for s in res.samples] == [False, True, False]  # the others: real verdicts
    assert res.samples[1].detail["result"] == "the check raised OSError: status pipe: bad record"
    assert not res.samples[1].correct and res.summary["statuses"]["error"] == 1


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
        assert s.detail["status"] in ("passed", "failed", "timeout", "error")  # a verdict
        assert s.detail["result"].strip()  # and a reason
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
