"""The sandboxed_code_eval metric: code_eval's contract through `evaluate.load`, judged in lab.eval.sandbox, and
equal to `python -m lab.eval humaneval --score` on the same programs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.eval.code_eval import compute, job, split_reference
from lab.eval.data import read_problems
from lab.eval.metrics import SANDBOXED_CODE_EVAL
from lab.eval.store import RunStore
from tests.conftest import ROOT, run_cli

OFFLINE = {"HF_EVALUATE_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def problems(data_dir):
    return {p.task_id: p for p in read_problems(data_dir / "humaneval" / "HumanEval.jsonl.gz")}


def test_a_reference_splits_at_its_final_check_call():
    ref = "def check(candidate):\r\n    assert candidate('é') == 1\r\n\r\nx = 1; check(count)\r\n"
    test, entry = split_reference(ref)
    assert entry == "count" and test == "def check(candidate):\n    assert candidate('é') == 1\n\nx = 1; "


def test_a_reference_without_check_names_its_one_function():
    test, entry = split_reference('assert add(2, 3) == 5\nassert """a\n b""" == "a\\n b"')
    assert entry == "add" and test.startswith("def check(candidate):\n")
    with pytest.raises(ValueError, match="uses add, sub"):
        split_reference("assert add(1, 1) == 2 and sub(1, 1) == 0")
    with pytest.raises(ValueError, match="calls no function"):
        split_reference("assert True")
    with pytest.raises(ValueError, match="Reference 3 is not valid Python"):
        split_reference("check(", 3)


def test_a_test_that_needs_a_prompt_helper_says_so(problems):
    p = problems["HumanEval/38"]
    reference = p.test + f"\ncheck({p.entry_point})\n"
    with pytest.raises(ValueError, match="uses encode_cyclic, which it does not define.*prompts="):
        split_reference(reference, 0)
    assert split_reference(reference, 0, helpers_from_prompt=True)[1] == "decode_cyclic"
    for q in problems.values():  # every other task's test stands alone
        if q.task_id not in ("HumanEval/32", "HumanEval/38", "HumanEval/50"):
            assert split_reference(q.test + f"\ncheck({q.entry_point})")[1] == q.entry_point


def test_a_program_with_its_prompt_runs_as_prompt_and_completion():
    assert job("P\nbody", "T", "f", "P\n") == ("P\n", "body", "T", "f")
    assert job("other", "T", "f", "P\n") == ("P\n", "\nother", "T", "f")  # after the prompt, replacing it
    assert job("other", "T", "f", None) == ("", "other", "T", "f")


def test_code_evals_own_example_and_its_shapes():
    pass_at_k, results = compute(references=["assert add(2,3)==5"], k=[1, 2],
                                 predictions=[["def add(a,b): return a*b", "def add(a, b): return a+b"]])
    assert pass_at_k == {"pass@1": 0.5, "pass@2": 1.0}
    assert [cid for cid, _ in results[0]] == [0, 1]
    assert results[0][1][1] == {"task_id": 0, "completion_id": 1, "passed": True, "result": "passed",
                                "status": "passed"}
    assert results[0][0][1]["result"] == "failed: AssertionError"


def test_the_candidate_never_runs_in_this_process():
    import builtins

    program = "import builtins\nbuiltins.QWEN_LAB_RAN_HERE = True\ndef f():\n    return 1\n"
    _, results = compute([[program]], ["def check(c):\n    assert c() == 1\ncheck(f)"], k=[1])
    assert results[0][0][1]["passed"] and not hasattr(builtins, "QWEN_LAB_RAN_HERE")  # code_eval's exec would set it


def test_evaluate_loads_it_offline_from_its_folder(tmp_path):
    code = ("import json, sys, evaluate; from lab.eval.metrics import SANDBOXED_CODE_EVAL as P; "
            "m = evaluate.load(P); mod = sys.modules[type(m).__module__]; import lab.eval.code_eval as c; "
            "print(json.dumps([mod.__file__, mod.compute is c.compute, m.compute(references=['assert add(2,3)==5'], "
            "predictions=[['def add(a,b): return a+b', 'def add(a,b): return a']], k=[1])]))")
    env = {**os.environ, **OFFLINE, "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    where, same, (pass_at_k, _) = json.loads(r.stdout.splitlines()[-1])
    assert where.startswith(str(tmp_path / "hf")) and same  # evaluate's copy, importing the lab package
    assert pass_at_k == {"pass@1": 0.5}


# What each of a task's ten programs is (a task's row is rotated, so tasks pass different numbers).
KINDS = {
    "canonical": lambda p: p.canonical_solution,
    "returns None": lambda p: "    return None\n",
    "raises": lambda p: "    raise ValueError('no idea')\n",
    "infinite loop": lambda p: "    while True:\n        pass\n",
    "syntax error": lambda p: "    return (\n",
    "whole function": lambda p: "\n" + p.prompt[p.prompt.index(f"def {p.entry_point}("):] + p.canonical_solution,
    "sys.exit(0)": lambda p: "    import sys\n    sys.exit(0)\n",
    "prints passed": lambda p: "    print('passed')\n    return None\n",
}
ROW = ["canonical", "returns None", "raises", "infinite loop", "syntax error", "whole function", "sys.exit(0)",
       "canonical", "prints passed", "canonical"]
TASKS = ["HumanEval/0", "HumanEval/2", "HumanEval/12", "HumanEval/38", "HumanEval/53", "HumanEval/101"]


def metric_in_a_subprocess(tmp_path: Path, **kwargs) -> tuple[dict, dict]:
    """evaluate.load(<the installed folder>).compute(**kwargs), offline, in a fresh interpreter."""
    (tmp_path / "args.json").write_text(json.dumps(kwargs))
    code = ("import json, evaluate; from lab.eval.metrics import SANDBOXED_CODE_EVAL; "
            "kw = json.load(open('args.json')); print(json.dumps(evaluate.load(SANDBOXED_CODE_EVAL).compute(**kw)))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, **OFFLINE, "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 0, r.stderr
    pass_at_k, results = json.loads(r.stdout.splitlines()[-1])
    return pass_at_k, {int(t): rows for t, rows in results.items()}


@pytest.mark.slow
def test_the_metric_equals_score_on_a_mixed_file(problems, data_dir, tmp_path):
    chosen = [problems[t] for t in TASKS]
    programs = {p.task_id: [KINDS[ROW[(j + i) % len(ROW)]](p) for j in range(len(ROW))]
                for i, p in enumerate(chosen)}
    samples = tmp_path / "mixed.jsonl"
    samples.write_text("".join(json.dumps({"task_id": p.task_id, "completion": c}) + "\n"
                               for p in chosen for c in programs[p.task_id]))
    runs = {"LAB_RUNS_DIR": str(tmp_path / "runs"), "LAB_DATA_DIR": str(data_dir)}
    r = run_cli("-m", "lab.eval", "humaneval", "--score", str(samples), "--timeout", "2", "--workers", "8",
                env=runs, timeout=600)
    assert r.returncode == 0, r.stderr
    run_id = next(x for x in r.stdout.splitlines() if x.startswith("run ")).split()[1]
    store = RunStore.open(runs["LAB_RUNS_DIR"])
    cli = {s.key: s for s in store.samples(run_id)}
    overall = store.get(run_id).summary["overall"]

    pass_at_k, results = metric_in_a_subprocess(
        tmp_path, predictions=[[p.prompt + c for c in programs[p.task_id]] for p in chosen],
        references=[p.test + f"\ncheck({p.entry_point})\n" for p in chosen], prompts=[p.prompt for p in chosen],
        k=[1, 10, 100], timeout=2.0, num_workers=8)

    assert set(pass_at_k) == {"pass@1", "pass@10"}  # ten programs a task: no pass@100, as code_eval
    assert pass_at_k == pytest.approx({k: overall[k] for k in pass_at_k}, rel=1e-12)
    assert 0 < pass_at_k["pass@1"] < 1
    statuses = set()
    for i, p in enumerate(chosen):
        assert [cid for cid, _ in results[i]] == list(range(len(ROW)))
        for cid, row in results[i]:
            s = cli[f"{p.task_id}#{cid}"]
            assert (row["passed"], row["status"]) == (s.correct, s.detail["status"]), (p.task_id, cid)
            word = {"passed": "passed", "timeout": "timed out"}.get(s.detail["status"], f"failed: {s.detail['result']}")
            assert row["result"] == word
            statuses.add(row["status"])
    assert statuses == {"passed", "failed", "timeout"}

    # Without prompts, the tasks whose tests need no prompt helper get the very same verdicts.
    alone = [i for i, p in enumerate(chosen) if p.task_id != "HumanEval/38"]
    _, bare = metric_in_a_subprocess(
        tmp_path, predictions=[[chosen[i].prompt + c for c in programs[chosen[i].task_id]] for i in alone],
        references=[chosen[i].test + f"\ncheck({chosen[i].entry_point})" for i in alone], k=[1], timeout=2.0,
        num_workers=8)
    assert {j: [row["passed"] for _, row in rows] for j, rows in bare.items()} == \
        {j: [row["passed"] for _, row in results[i]] for j, i in enumerate(alone)}


def test_the_metric_ships_beside_its_package():
    folder = Path(SANDBOXED_CODE_EVAL)
    assert folder.parent == ROOT / "lab" / "eval" / "metrics" and (folder / f"{folder.name}.py").is_file()
